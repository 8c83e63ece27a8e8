"""VideoGenerations in each state, with the status OUR code writes: the operator's pure status
functions (`wanops_operator.status`, the same calls a reconcile pass makes) on Job and pod states
as the API server reports them, and the runner's `StatusReporter` for progress and output.
Nothing here writes a condition by hand, so the health check and kstatus tests judge real output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from wanops_operator import reasons
from wanops_operator.render import KUEUE_QUEUE_LABEL, job_name
from wanops_operator.status import (
    after_failed_attempt,
    failed,
    observe,
    status_patch,
    timestamp,
)
from wanspec import contract
from wanspec.spec import API_VERSION, KIND

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
SPEC = {
    "task": "ti2v-5B",
    "size": "1280*704",
    "prompt": "rain on a city street",
    "checkpoint": {"claimName": "wan-models", "path": "Wan2.2-TI2V-5B"},
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies the operator's and runner's patches."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def job(name: str, *, suspend: bool = False, completions: int = 1, conditions=(), **status) -> dict:
    return {
        "metadata": {"name": name, "namespace": "video", "uid": f"job-{name}"},
        "spec": {"completions": completions, "suspend": suspend},
        "status": {"conditions": list(conditions), **status},
    }


def job_condition(kind: str, reason: str, when: datetime, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": timestamp(when)}


def pod(name: str, phase: str, *, started: datetime | None = None, runner: dict | None = None,
        conditions=()) -> dict:
    status: dict[str, Any] = {"phase": phase, "conditions": list(conditions)}
    if started:
        status["startTime"] = timestamp(started)
    if runner is not None:
        status["containerStatuses"] = [{"name": contract.RUNNER_CONTAINER, "state": runner}]
    return {"metadata": {"name": name}, "status": status}


class Life:
    """One VideoGeneration through operator passes and runner reports, in order."""

    def __init__(self, name: str = "rain", *, queue: str | None = None, retry_limit: int = 2,
                 start_timeout: int = 600) -> None:
        labels = {KUEUE_QUEUE_LABEL: queue} if queue else {}
        self.vg: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": "video", "uid": f"uid-{name}",
                         "generation": 1, "labels": labels},
            "spec": {**SPEC, "retryLimit": retry_limit, "startTimeoutSeconds": start_timeout},
        }
        self.created = copy.deepcopy(self.vg)  # as the user applied it
        self.queue, self.retry_limit, self.start_timeout = queue, retry_limit, start_timeout
        self.now = T0
        self.attempt = 0
        # ("status", merge patch) and ("spec", merge patch) in the order they happened, for the
        # cluster test to replay through the real API server.
        self.history: list[tuple[str, dict[str, Any]]] = []

    @property
    def name(self) -> str:
        return self.vg["metadata"]["name"]

    def job_name(self) -> str:
        return job_name(self.name, self.attempt)

    def tick(self, seconds: int = 10) -> None:
        self.now += timedelta(seconds=seconds)

    def write(self, patch: dict[str, Any]) -> None:
        """A status merge patch through the status subresource."""
        self.history.append(("status", copy.deepcopy(patch)))
        self.vg = merge_patch(self.vg, {"status": patch})

    def operator_pass(self, job_: dict, pods: list[dict] = ()) -> dict[str, Any]:
        """What a reconcile pass computes from the attempt's Job and pods (reconcile._pass)."""
        self.tick()
        obs = observe(job_, list(pods), queue=self.queue,
                      start_timeout_seconds=self.start_timeout, active_deadline_seconds=None,
                      now=self.now)
        obs = after_failed_attempt(obs, attempt=self.attempt, retry_limit=self.retry_limit,
                                   next_job=job_name(self.name, self.attempt + 1))
        if obs.reason == reasons.RETRYING:
            self.attempt += 1
        patch = status_patch(self.vg, obs, attempt=self.attempt, job_name=self.job_name(),
                             seed=1234, now=self.now)
        self.write(patch)
        return patch

    def preflight_refused(self, reason: str, message: str) -> dict[str, Any]:
        """Pre-flight found a missing claim, Secret… (reconcile.preflight → failed())."""
        self.tick()
        patch = status_patch(self.vg, failed(reason, message, now=self.now), attempt=0,
                             job_name=self.job_name(), seed=1234, now=self.now)
        self.write(patch)
        return patch

    def runner_reports(self, *, step: int | None = None, total: int = 50,
                       published_uri: str | None = None) -> list[dict[str, Any]]:
        """Rank 0's StatusReporter, its patches captured instead of sent."""
        from kubernetes import client

        from runner.report import StatusReporter, Throttle
        from runner.store import Published

        sent: list[dict[str, Any]] = []
        reporter = StatusReporter(
            contract.ResourceRef(namespace="video", name=self.name, uid=f"uid-{self.name}"),
            client.ApiClient(),
            throttle=Throttle(interval_s=0),  # as if a second passed between reports
        )
        reporter._patch = sent.append  # type: ignore[method-assign]  # capture, do not send
        if step is not None:
            reporter.stage("Denoising", total)
            reporter.step(step, total, None)
        if published_uri is not None:
            reporter.output(Published(uri=published_uri, sha256="0" * 64, bytes=123456), total,
                            published_uri.removesuffix(".mp4") + ".log")
        for patch in sent:
            self.write(patch)
        return sent

    def edit_spec(self, **fields: Any) -> None:
        """A spec change: the API server bumps metadata.generation; status is untouched."""
        self.history.append(("spec", dict(fields)))
        self.vg = merge_patch(self.vg, {"spec": fields})
        self.vg["metadata"]["generation"] += 1


# ------------------------------------------------------------------------ the scenarios

@dataclass(frozen=True)
class Scenario:
    vg: dict[str, Any]
    created: dict[str, Any]
    history: list[tuple[str, dict[str, Any]]]
    phase: str | None
    kstatus: str  # Current, InProgress or Failed (kstatus Compute)
    argocd: str  # the health check's hs.status
    kubectl_ready: bool  # whether `kubectl wait --for=condition=Ready` returns


def _created() -> Life:
    return Life()


def pending() -> Life:
    life = Life()
    life.operator_pass(job(life.job_name()))  # Job created, no pod yet
    return life


def queued() -> Life:
    life = Life(queue="gpu-queue")
    life.operator_pass(job(life.job_name(), suspend=True))  # Kueue holds the Job suspended
    return life


def suspended() -> Life:
    life = Life()
    life.operator_pass(job(life.job_name()))
    life.edit_spec(suspend=True)  # the user pauses it
    life.operator_pass(job(life.job_name(), suspend=True))
    return life


def running() -> Life:
    life = Life()
    life.operator_pass(job(life.job_name()))
    life.operator_pass(job(life.job_name(), startTime=timestamp(life.now), active=1),
                       [pod(f"{life.job_name()}-0-x", "Running", started=life.now)])
    life.runner_reports(step=20, total=50)
    return life


def retrying() -> Life:
    """A node was lost: the attempt failed, a fresh one is on its way (not a failure yet)."""
    life = running()
    name = life.job_name()
    lost = pod(f"{name}-0-x", "Failed", started=T0,
               runner={"terminated": {"exitCode": 137, "reason": "Error", "message": "",
                                      "finishedAt": timestamp(life.now)}})
    life.operator_pass(job(name, failed=1, conditions=[
        job_condition("Failed", "BackoffLimitExceeded", life.now)]), [lost])
    return life


def succeeded() -> Life:
    life = running()
    uri = f"s3://videos/video/{life.name}.mp4"
    life.runner_reports(published_uri=uri)  # the runner uploads, then reports, then exits 0
    name = life.job_name()
    life.operator_pass(
        job(name, succeeded=1, completionTime=timestamp(life.now), conditions=[
            job_condition("SuccessCriteriaMet", "CompletionsReached", life.now),
            job_condition("Complete", "CompletionsReached", life.now)]),
        [pod(f"{name}-0-x", "Succeeded", started=T0)])
    return life


def succeeded_then_edited() -> Life:
    """spec.suspend edited after the end: generation 2 not yet observed by the operator."""
    life = succeeded()
    life.edit_spec(suspend=True)
    return life


def failed_invalid_input() -> Life:
    life = running()
    name = life.job_name()
    message = contract.termination_message("ImageNotReadable", "s3://inputs/cat.jpg: NoSuchKey")
    bad = pod(f"{name}-0-x", "Failed", started=T0, runner={"terminated": {
        "exitCode": contract.EXIT_INVALID_INPUT, "reason": "Error", "message": message,
        "finishedAt": timestamp(life.now)}})
    life.operator_pass(job(name, failed=1, conditions=[
        job_condition("Failed", "PodFailurePolicy", life.now, "exit code 42")]), [bad])
    return life


def failed_after_retries() -> Life:
    life = Life(retry_limit=0)
    life.operator_pass(job(life.job_name()))
    name = life.job_name()
    oom = pod(f"{name}-0-x", "Failed", started=T0, runner={"terminated": {
        "exitCode": 137, "reason": "OOMKilled", "message": "",
        "finishedAt": timestamp(life.now)}})
    life.operator_pass(job(name, failed=1, conditions=[
        job_condition("Failed", "BackoffLimitExceeded", life.now)]), [oom])
    return life


def failed_preflight() -> Life:
    life = Life()
    life.preflight_refused(reasons.CHECKPOINT_NOT_FOUND,
                           "PersistentVolumeClaim 'wan-models' not found in namespace 'video'")
    return life


def failed_start_timeout() -> Life:
    life = Life(start_timeout=60)
    name = life.job_name()
    life.operator_pass(job(name, startTime=timestamp(T0)))
    unschedulable = pod(f"{name}-0-x", "Pending", started=None, conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    life.tick(120)
    life.operator_pass(job(name, startTime=timestamp(T0)), [unschedulable])
    return life


SCENARIOS: dict[str, tuple[Any, str | None, str, str, bool]] = {
    # name: (builder, phase, kstatus, Argo CD health, kubectl wait Ready returns)
    "created": (_created, None, "Current", "Progressing", False),
    "pending": (pending, "Pending", "InProgress", "Progressing", False),
    "queued": (queued, "Queued", "InProgress", "Progressing", False),
    "suspended": (suspended, "Suspended", "Current", "Suspended", False),
    "running": (running, "Running", "InProgress", "Progressing", False),
    "retrying": (retrying, "Pending", "InProgress", "Progressing", False),
    "succeeded": (succeeded, "Succeeded", "Current", "Healthy", True),
    "succeeded-then-edited": (succeeded_then_edited, "Succeeded", "InProgress", "Progressing",
                              False),
    "failed-invalid-input": (failed_invalid_input, "Failed", "Failed", "Degraded", False),
    "failed-after-retries": (failed_after_retries, "Failed", "Failed", "Degraded", False),
    "failed-preflight": (failed_preflight, "Failed", "Failed", "Degraded", False),
    "failed-start-timeout": (failed_start_timeout, "Failed", "Failed", "Degraded", False),
}


def scenario(name: str) -> Scenario:
    build, phase, kstatus, argocd, ready = SCENARIOS[name]
    life = build()
    return Scenario(life.vg, life.created, life.history, phase, kstatus, argocd, ready)

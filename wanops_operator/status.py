"""Pure status: an attempt's Job and pods → phase, reason, failure; then kstatus conditions.

`observe()` reads what Kubernetes reports; `status_patch()` turns an observation into the
resource's status fields. Neither touches `status.progress` or `status.output`: the runner owns
them (the merge patch simply leaves them out). Conditions follow kstatus (k8s-notes §1.3):
Reconciling=True while pending, queued or running; Ready=True once the video is uploaded;
Stalled=True after a permanent failure; each with the resource's observedGeneration, and a
lastTransitionTime that moves only when the condition's status does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from wanops_operator import reasons
from wanspec import contract
from wanspec.spec import READY, RECONCILING, STALLED

PENDING, QUEUED, SUSPENDED, RUNNING = "Pending", "Queued", "Suspended", "Running"
SUCCEEDED, FAILED = "Succeeded", "Failed"
TERMINAL = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Observation:
    """What one pass concluded. `retryable`: a failed attempt a fresh attempt may fix."""

    phase: str
    reason: str
    message: str
    failure: dict[str, Any] | None = None
    retryable: bool = False
    start_time: str | None = None
    completion_time: str | None = None


def timestamp(when: datetime) -> str:
    """RFC 3339 in UTC with seconds, as the API server writes times."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def failed(reason: str, message: str, *, now: datetime, **failure: Any) -> Observation:
    """A permanent failure found by the operator itself (pre-flight, timeouts)."""
    info = {"reason": reason, "message": message, "time": timestamp(now), **failure}
    return Observation(FAILED, reason, message, failure=info, completion_time=timestamp(now))


def _job_condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _runner_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == contract.RUNNER_CONTAINER:
            return status
    return {}


def _ran(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's runner has started: running, succeeded, or failed after starting."""
    phase = pod.get("status", {}).get("phase")
    if phase in (RUNNING, SUCCEEDED):
        return True
    terminated = _runner_state(pod).get("state", {}).get("terminated") or {}
    return phase == FAILED and bool(terminated.get("startedAt"))


def _disrupted(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def evicted(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """A pod being evicted while it still runs (DisruptionTarget, deletion under way): from a lost
    node (the taint-eviction controller, after the pods' node-lost tolerationSeconds), a drain or
    a preemption. On a node that is gone no kubelet ever ends it, and the Job, which replaces only
    failed pods, would wait for it forever."""
    for pod in pods:
        if (
            pod["metadata"].get("deletionTimestamp")
            and pod.get("status", {}).get("phase") not in TERMINAL
            and _disrupted(pod)
        ):
            return pod
    return None


def pod_failure(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """`status.failure` from the pod that failed the attempt: an invalid-input exit first, else
    the earliest non-zero exit; reason and message from the runner's termination message."""
    candidates = []
    for pod in pods:
        terminated = _runner_state(pod).get("state", {}).get("terminated")
        if pod.get("status", {}).get("phase") != FAILED or not terminated or _disrupted(pod):
            continue
        code = terminated.get("exitCode")
        if code:
            first = code == contract.EXIT_INVALID_INPUT
            candidates.append((not first, terminated.get("finishedAt") or "", pod, terminated))
    if not candidates:
        return None
    _, _, pod, terminated = min(candidates, key=lambda c: (c[0], c[1]))
    code = terminated["exitCode"]
    reason, message = contract.parse_termination_message(terminated.get("message") or "")
    if reason is None:
        invalid = code == contract.EXIT_INVALID_INPUT
        reason = reasons.INVALID_INPUT if invalid else terminated.get("reason") or "Error"
    info = {
        "reason": reason,
        "message": message or f"exit code {code}",
        "exitCode": code,
        "pod": pod["metadata"]["name"],
        "time": terminated.get("finishedAt"),
    }
    return {k: v for k, v in info.items() if v is not None}


def _describe(failure: Mapping[str, Any] | None) -> str:
    if failure is None:
        return "no failed pod found"
    return (
        f"pod {failure['pod']} exited {failure['exitCode']} ({failure['reason']}): "
        f"{failure['message']}"
    )


def why_not_started(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    """The most telling reason pods are not running: unschedulable, image pull, no pod at all."""
    name = job["metadata"]["name"]
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        for cond in pod.get("status", {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return (
                    f"pod {pod_name} is {cond.get('reason', 'unschedulable')}: "
                    f"{cond.get('message', '')} (GPUs, node selector, tolerations, quota)"
                )
        waiting = _runner_state(pod).get("state", {}).get("waiting")
        if waiting:
            return f"pod {pod_name} waits: {waiting.get('reason')}: {waiting.get('message', '')}"
    if not pods:
        return (
            f"Job {name} has created no pod; see `kubectl describe job {name}` "
            "(ResourceQuota, ServiceAccount, admission)"
        )
    return f"pods of Job {name} are pending without a reported cause"


def observe(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    queue: str | None,
    start_timeout_seconds: int,
    active_deadline_seconds: int | None,
    now: datetime,
) -> Observation:
    """The phase of one attempt from its Job and pods."""
    name = job["metadata"]["name"]
    job_status = job.get("status", {})
    count = job["spec"].get("completions", 1)
    if cond := _job_condition(job, "Complete"):
        done = job_status.get("completionTime") or cond.get("lastTransitionTime")
        return Observation(
            SUCCEEDED,
            reasons.SUCCEEDED,
            reasons.SUCCEEDED_MESSAGE.format(job=name),
            completion_time=done,
        )
    if cond := _job_condition(job, "Failed"):
        failure = pod_failure(pods)
        when = cond.get("lastTransitionTime") or timestamp(now)
        job_reason = cond.get("reason", "")
        if job_reason == "PodFailurePolicy":  # the runner's invalid-input exit: never retried
            failure = failure or {
                "reason": reasons.INVALID_INPUT,
                "message": cond.get("message", ""),
                "time": when,
            }
            return Observation(
                FAILED,
                failure["reason"],
                failure["message"],
                failure=failure,
                completion_time=when,
            )
        if job_reason == "DeadlineExceeded":
            message = reasons.DEADLINE_EXCEEDED_MESSAGE.format(
                job=name, seconds=active_deadline_seconds
            )
            info = {"reason": reasons.DEADLINE_EXCEEDED, "message": message, "time": when}
            return Observation(
                FAILED,
                reasons.DEADLINE_EXCEEDED,
                message,
                failure=failure or info,
                completion_time=when,
            )
        message = reasons.JOB_FAILED_MESSAGE.format(
            job=name, job_reason=job_reason or "unknown", detail=_describe(failure)
        )
        info = failure or {"reason": reasons.JOB_FAILED, "message": message, "time": when}
        return Observation(
            FAILED,
            reasons.JOB_FAILED,
            message,
            failure=info,
            retryable=True,
            completion_time=when,
        )
    if pod := evicted(pods):
        cond = next(c for c in pod["status"]["conditions"] if c.get("type") == "DisruptionTarget")
        message = reasons.POD_EVICTED_MESSAGE.format(
            pod=pod["metadata"]["name"],
            job=name,
            node=pod["spec"].get("nodeName", "?"),
            why=f"{cond.get('reason', 'Evicted')}: {cond.get('message', '')}".rstrip(": "),
        )
        info = {
            "reason": reasons.POD_EVICTED,
            "message": message,
            "pod": pod["metadata"]["name"],
            "time": cond.get("lastTransitionTime") or timestamp(now),
        }
        return Observation(
            FAILED,
            reasons.POD_EVICTED,
            message,
            failure=info,
            retryable=True,
            completion_time=timestamp(now),
        )
    if job["spec"].get("suspend"):
        if queue is not None:
            return Observation(
                QUEUED, reasons.QUEUED, reasons.QUEUED_MESSAGE.format(job=name, queue=queue)
            )
        return Observation(SUSPENDED, reasons.SUSPENDED, reasons.SUSPENDED_MESSAGE.format(job=name))

    # A pod that ran and failed counts too: between its exit and the Job controller failing the
    # Job, a pass would otherwise take the attempt back from Running to Pending.
    started = [p for p in pods if _ran(p)]
    if started:
        first = min(p["status"].get("startTime") or timestamp(now) for p in started)
        running = sum(p["status"]["phase"] == RUNNING for p in started)
        message = reasons.RUNNING_MESSAGE.format(running=running, pods=count, job=name)
        return Observation(RUNNING, reasons.RUNNING, message, start_time=first)

    # The Job's startTime restarts when it is resumed, so time spent suspended does not count.
    since = job_status.get("startTime")
    if since and (now - parse_time(since)).total_seconds() > start_timeout_seconds:
        message = reasons.START_TIMEOUT_MESSAGE.format(
            seconds=start_timeout_seconds, why=why_not_started(job, pods)
        )
        return failed(reasons.START_TIMEOUT, message, now=now)
    return Observation(
        PENDING, reasons.STARTING, reasons.STARTING_MESSAGE.format(job=name, pods=count)
    )


def after_failed_attempt(
    obs: Observation, *, attempt: int, retry_limit: int, next_job: str
) -> Observation:
    """What a failed attempt leads to: a fresh attempt while retries are left (phase Pending,
    the failure kept as the last one), else BackoffLimitExceeded; non-retryable ones stay."""
    if obs.phase != FAILED or not obs.retryable:
        return obs
    attempts = retry_limit + 1
    if attempt >= retry_limit:
        message = reasons.BACKOFF_LIMIT_EXCEEDED_MESSAGE.format(
            attempts=attempts, detail=obs.message
        )
        return replace(obs, reason=reasons.BACKOFF_LIMIT_EXCEEDED, message=message, retryable=False)
    message = reasons.RETRYING_MESSAGE.format(
        attempt=attempt + 2, attempts=attempts, job=next_job, previous=obs.message
    )
    return Observation(PENDING, reasons.RETRYING, message, failure=obs.failure)


def conditions(
    obs: Observation,
    *,
    generation: int,
    previous: Sequence[Mapping[str, Any]] | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled for an observation, transition times carried over."""
    wanted = {
        READY: obs.phase == SUCCEEDED,
        RECONCILING: obs.phase in (PENDING, QUEUED, RUNNING),
        STALLED: obs.phase == FAILED,
    }
    before = {c.get("type"): c for c in previous or []}
    out = []
    for kind, truth in wanted.items():
        status = "True" if truth else "False"
        old = before.get(kind)
        same = old is not None and old.get("status") == status
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": obs.reason,
                "message": obs.message,
                "lastTransitionTime": old["lastTransitionTime"] if same else timestamp(now),
                "observedGeneration": generation,
            }
        )
    return out


def status_patch(
    vg: Mapping[str, Any],
    obs: Observation,
    *,
    attempt: int,
    job_name: str,
    seed: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The operator's status fields for an observation; start and completion times, once set,
    are kept. progress and output are not included, so a merge patch leaves them alone."""
    current = vg.get("status") or {}
    patch: dict[str, Any] = {
        "phase": obs.phase,
        "observedGeneration": vg["metadata"].get("generation", 0),
        "conditions": conditions(
            obs,
            generation=vg["metadata"].get("generation", 0),
            previous=current.get("conditions"),
            now=now,
        ),
        "attempt": attempt,
        "jobName": job_name,
    }
    if seed is not None:
        patch["seed"] = seed
    if obs.failure is not None:
        patch["failure"] = obs.failure
    if start := current.get("startTime") or obs.start_time:
        patch["startTime"] = start
    if obs.phase in TERMINAL and (done := current.get("completionTime") or obs.completion_time):
        patch["completionTime"] = done
    return patch


def changed(vg: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether a status patch would change anything (so an idle pass writes nothing)."""
    current = vg.get("status") or {}
    return any(current.get(key) != value for key, value in patch.items())

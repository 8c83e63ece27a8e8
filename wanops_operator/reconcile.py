"""One reconcile pass of one VideoGeneration: read → pre-flight → render → apply → status.

Everything is derived from the resource, deterministic names and what the API server returns;
the process keeps no record of jobs, so a restarted operator continues where the last one was.

- Terminal phases are final (the spec is immutable except `suspend`), so a finished resource is
  never re-run, even after its Job is removed by `ttlSecondsAfterFinished`.
- Pre-flight, before each Job is created: what the API server can answer (the checkpoint claim,
  Secrets and their keys, the runner ServiceAccount, an output location). A miss ends `Failed`
  with a reason that says what to fix (`Refused`, a permanent error: no retry loop).
- ConfigMap and Service are server-side applied every pass (drift is repaired, no-ops are free).
  The Job is applied once, when missing: its template is immutable, and Kueue edits a suspended
  Job's placement, which a re-apply would fight. After that only `spec.suspend` is patched, and
  never for a Kueue-managed Job (Kueue owns it then).
- A failed attempt that may be retried gets a fresh Job `<name>-a<n+1>`, whole; a Job of an
  earlier attempt that has not finished (an evicted pod's other ranks) is deleted.
- Status: one merge patch on the status subresource per pass, and only if something changed,
  made on the resourceVersion the pass read: if anything wrote in between (the runner's
  progress, another replica during a peering hand-over) the API server refuses it and the pass
  runs again on what is there now. So a stale observation never overwrites a newer one, and the
  Event of a transition is posted only by the pass whose write made it.
- Order, so that a SIGKILL between two steps loses nothing and repeats nothing: a Job is created
  before the status that names it (a restarted pass finds the Job); the status of what comes
  next (the next attempt, a start timeout, an eviction) is written before any Job is created or
  deleted because of it (a restarted pass acts on what status says: creates the Job of the
  attempt it names, deletes a Job left over from a finished or earlier attempt), and never
  recreates a deleted Job.
- Passes for Job events (`repair=False`) skip re-applying ConfigMap and Service once the Job
  exists: resource, resume and resync passes repair drift; under load those applies were the
  most expensive calls the operator made.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from wanops_operator import metrics, reasons
from wanops_operator.config import OperatorConfig
from wanops_operator.render import (
    FIELD_MANAGER,
    LABEL_ATTEMPT,
    job_name,
    kueue_queue,
    labels,
    render,
    seed_for,
    store_secret,
)
from wanops_operator.status import (
    FAILED,
    TERMINAL,
    Observation,
    after_failed_attempt,
    changed,
    failed,
    observe,
    parse_time,
    status_patch,
    timestamp,
)
from wanspec import contract
from wanspec.memory import plan
from wanspec.spec import GROUP, PLURAL, VERSION, VideoGenerationSpec
from wanspec.validate import InvalidSpec, name_problems, parse, resolve

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
TRANSIENT = (409, 429, 500, 502, 503, 504)
RETRY_DELAY_S = 5.0
CONFLICT_RETRIES = 5  # passes in a row whose status write met a newer resourceVersion
# Failures after which the failed attempt's Job is deleted (its pods must not run on).
DELETE_AFTER = (reasons.START_TIMEOUT, reasons.POD_EVICTED)

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


class Refused(kopf.PermanentError):
    """The resource ended Failed before running (pre-flight or invalid spec); status says why."""


class StatusConflict(Exception):
    """The resource changed after the pass read it: its status write was refused (409)."""


@contextmanager
def _exclusive(namespace: str, name: str) -> Iterator[None]:
    """One pass per resource at a time: its own handlers, its Jobs' events and the resync loop
    may all ask for a pass at once; the second then sees the first one's result."""
    with _locks_guard:
        lock = _locks.setdefault((namespace, name), threading.Lock())
    with lock:
        yield


def _json(response: Any) -> dict[str, Any]:
    """The API's own JSON (exact times and field names), from a `_preload_content=False` call."""
    return json.loads(response.data)


def _missing(error: ApiException) -> bool:
    return error.status == 404


class Cluster:
    """The few API calls a pass makes, on one ApiClient."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if _missing(e):
                return None
            raise

    def exists(self, read: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return _json(read(name, namespace, _preload_content=False))
        except ApiException as e:
            if _missing(e):
                return None
            raise

    def jobs(self, vg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """This resource's Jobs by name (labels select, the owner uid confirms)."""
        selector = ",".join(f"{k}={v}" for k, v in labels(vg).items())
        items = _json(
            self.batch.list_namespaced_job(
                vg["metadata"]["namespace"], label_selector=selector, _preload_content=False
            )
        )["items"]
        uid = vg["metadata"]["uid"]
        return {
            j["metadata"]["name"]: j
            for j in items
            if any(o.get("uid") == uid for o in j["metadata"].get("ownerReferences", []))
        }

    def pods(self, job: Mapping[str, Any]) -> list[dict[str, Any]]:
        selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
        return _json(
            self.core.list_namespaced_pod(
                job["metadata"]["namespace"], label_selector=selector, _preload_content=False
            )
        )["items"]

    def job_pods_left(self, namespace: str, job: str) -> bool:
        """Whether pods of a Job of this name still exist (a deleted Job's pods go after it)."""
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job}", limit=1
        )
        return bool(pods.items)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with our field manager; creates the object if missing."""
        patch = {
            "ConfigMap": self.core.patch_namespaced_config_map,
            "Service": self.core.patch_namespaced_service,
            "Job": self.batch.patch_namespaced_job,
        }[obj["kind"]]
        meta = obj["metadata"]
        return _json(
            patch(
                meta["name"],
                meta["namespace"],
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
                _preload_content=False,
            )
        )

    def set_suspend(self, job: Mapping[str, Any], suspend: bool) -> dict[str, Any]:
        meta = job["metadata"]
        return _json(
            self.batch.patch_namespaced_job(
                meta["name"],
                meta["namespace"],
                {"spec": {"suspend": suspend}},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE,
                _preload_content=False,
            )
        )

    def delete_job(self, job: Mapping[str, Any]) -> None:
        meta = job["metadata"]
        try:
            self.batch.delete_namespaced_job(
                meta["name"], meta["namespace"], propagation_policy="Background"
            )
        except ApiException as e:
            if not _missing(e):
                raise

    def patch_status(self, vg: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch status, only onto the resourceVersion `vg` was read at."""
        meta = vg["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                body,
                _content_type=MERGE,
                _preload_content=False,
            )
        except ApiException as e:
            if e.status == 409:
                raise StatusConflict(f"{meta['namespace']}/{meta['name']}") from e
            raise

    def event(
        self, vg: Mapping[str, Any], obs: Observation, transition: str, now: datetime
    ) -> None:
        """A core/v1 Event on the resource, for `kubectl describe` and event exporters. Its name
        comes from the resource's uid and `transition`, so however often a pass that makes the
        transition runs (after a SIGKILL, or on two replicas in a hand-over) one Event is made."""
        meta = vg["metadata"]
        when = timestamp(now)
        digest = hashlib.sha256(f"{meta['uid']}/{transition}".encode()).hexdigest()[:16]
        body = {
            "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": vg["apiVersion"],
                "kind": vg["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": "Warning" if obs.phase == FAILED else "Normal",
            "reason": obs.reason,
            "message": obs.message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": when,
            "lastTimestamp": when,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as e:
            if e.status != 409:  # 409: posted already, by an earlier run of this transition
                raise


def _secret_problem(
    cluster: Cluster,
    namespace: str,
    secret: str,
    keys: tuple[str, ...],
    field: str,
    hint: str,
    now: datetime,
) -> Observation | None:
    found = cluster.exists(cluster.core.read_namespaced_secret, secret, namespace)
    if found is None:
        message = reasons.SECRET_NOT_FOUND_MESSAGE.format(
            secret=secret, field=field, namespace=namespace, hint=hint
        )
        return failed(reasons.SECRET_NOT_FOUND, message, now=now)
    absent = [k for k in keys if k not in (found.get("data") or {})]
    if absent:
        message = reasons.SECRET_KEY_NOT_FOUND_MESSAGE.format(
            secret=secret, field=field, keys=", ".join(absent)
        )
        return failed(reasons.SECRET_KEY_NOT_FOUND, message, now=now)
    return None


def memory_problem(
    spec: VideoGenerationSpec, config: OperatorConfig, now: datetime
) -> Observation | None:
    """`InsufficientGPUMemory` when the estimated peak per GPU cannot fit the target GPUs
    (spec.memory.gpuMemoryGiB, else the chart's default); the message names what would fit."""
    gib = spec.memory.gpu_memory_gi_b or config.default_gpu_memory_gib
    verdict = plan(resolve(spec), gib)
    if verdict.fits:
        return None
    message = reasons.INSUFFICIENT_GPU_MEMORY_MESSAGE.format(detail=verdict.message)
    return failed(reasons.INSUFFICIENT_GPU_MEMORY, message, now=now)


def preflight(
    cluster: Cluster,
    namespace: str,
    spec: VideoGenerationSpec,
    config: OperatorConfig,
    now: datetime,
) -> Observation | None:
    """The first problem found before a Job is made, or None: the memory planner's verdict (pure),
    then what the API server can reveal."""
    problem = memory_problem(spec, config, now)
    if problem is not None:
        return problem
    claim = spec.checkpoint.claim_name
    if (
        cluster.exists(cluster.core.read_namespaced_persistent_volume_claim, claim, namespace)
        is None
    ):
        message = reasons.CHECKPOINT_NOT_FOUND_MESSAGE.format(claim=claim, namespace=namespace)
        return failed(reasons.CHECKPOINT_NOT_FOUND, message, now=now)
    account = config.runner_service_account
    if cluster.exists(cluster.core.read_namespaced_service_account, account, namespace) is None:
        message = reasons.SERVICE_ACCOUNT_NOT_FOUND_MESSAGE.format(
            account=account, namespace=namespace
        )
        return failed(reasons.SERVICE_ACCOUNT_NOT_FOUND, message, now=now)
    out = spec.output
    for missing, value, have in (
        ("", "bucket", out.bucket if out else config.store_bucket),
        (".endpoint", "endpoint", (out.endpoint if out else None) or config.store_endpoint),
    ):
        if not have:
            message = reasons.OUTPUT_NOT_CONFIGURED_MESSAGE.format(missing=missing, value=value)
            return failed(reasons.OUTPUT_NOT_CONFIGURED, message, now=now)
    own = out is not None and out.credentials_secret_ref is not None
    problem = _secret_problem(
        cluster,
        namespace,
        store_secret(spec, config),
        contract.STORE_SECRET_KEYS,
        "spec.output.credentialsSecretRef" if own else "the chart's store.secret",
        ""
        if own
        else "; create it with the object store's keys, or set spec.output.credentialsSecretRef",
        now,
    )
    if problem is not None:
        return problem
    ext = spec.prompt_extension
    if ext is not None and ext.method == "dashscope" and ext.api_key_secret_ref is not None:
        ref = ext.api_key_secret_ref
        return _secret_problem(
            cluster,
            namespace,
            ref.name,
            (ref.key,),
            "spec.promptExtension.apiKeySecretRef",
            "",
            now,
        )
    return None


def reconcile(
    api: client.ApiClient,
    namespace: str,
    name: str,
    *,
    config: OperatorConfig,
    now: datetime | None = None,
    repair: bool = True,
) -> str | None:
    """One pass; returns the phase written (None if the resource is gone). Raises Refused once
    when pre-flight ends the resource, kopf.TemporaryError for errors worth retrying soon.
    `repair=False`: a Job event's pass, which leaves an existing attempt's ConfigMap and
    Service alone."""
    try:
        with _exclusive(namespace, name):
            cluster = Cluster(api)
            for _ in range(CONFLICT_RETRIES):
                try:
                    when = now or datetime.now(timezone.utc)
                    phase = _pass(cluster, namespace, name, config, when, repair=repair)
                    break
                except StatusConflict:
                    continue  # read again and redo the pass on what is there now
            else:
                raise kopf.TemporaryError(
                    f"status of {namespace}/{name} changed under {CONFLICT_RETRIES} passes",
                    delay=RETRY_DELAY_S,
                )
    except Refused:
        metrics.RECONCILES.labels("refused").inc()
        metrics.observe_phase(namespace, name, FAILED)
        raise
    except ApiException as e:
        metrics.RECONCILES.labels("error").inc()
        if e.status in TRANSIENT:
            raise kopf.TemporaryError(f"API {e.status}: {e.reason}", delay=RETRY_DELAY_S) from e
        raise
    except HTTPError as e:
        metrics.RECONCILES.labels("error").inc()
        raise kopf.TemporaryError(f"API server unreachable: {e}", delay=RETRY_DELAY_S) from e
    metrics.RECONCILES.labels("ok").inc()
    metrics.observe_phase(namespace, name, phase)
    return phase


def _write(
    cluster: Cluster,
    vg: dict[str, Any],
    obs: Observation,
    *,
    attempt: int,
    seed: int | None,
    now: datetime,
) -> None:
    """The pass's one status patch, plus an Event and metrics when the phase or reason moved.
    The Event goes first: it is idempotent (named by the transition), the status write is not,
    so a kill between the two neither loses nor repeats it."""
    patch = status_patch(
        vg,
        obs,
        attempt=attempt,
        job_name=job_name(vg["metadata"]["name"], attempt),
        seed=seed,
        now=now,
    )
    if not changed(vg, patch):
        return
    before = vg.get("status") or {}
    reason_before = next(iter(before.get("conditions") or []), {}).get("reason")
    if (before.get("phase"), reason_before) != (obs.phase, obs.reason):
        transition = (
            f"{vg['metadata'].get('generation', 0)}/{attempt}/"
            f"{before.get('phase')}/{reason_before}/{obs.phase}/{obs.reason}"
        )
        cluster.event(vg, obs, transition, now)
    cluster.patch_status(vg, patch)
    if obs.phase in TERMINAL and before.get("phase") not in TERMINAL:
        start, done = patch.get("startTime"), patch.get("completionTime")
        seconds = (parse_time(done) - parse_time(start)).total_seconds() if start and done else None
        metrics.finished(obs.phase, seconds)


def _pass(
    cluster: Cluster,
    namespace: str,
    name: str,
    config: OperatorConfig,
    now: datetime,
    *,
    repair: bool,
) -> str | None:
    vg = cluster.resource(namespace, name)
    if vg is None:
        return None
    status = vg.get("status") or {}
    attempt = status.get("attempt") or 0
    if status.get("phase") in TERMINAL:
        # a kill between writing the failure and deleting the Job: delete it now (only for a
        # failed resource: a succeeded one keeps the failure of an earlier attempt, not its Job)
        if (
            status["phase"] == FAILED
            and (status.get("failure") or {}).get("reason") in DELETE_AFTER
            and (job := cluster.jobs(vg).get(job_name(name, attempt)))
        ):
            cluster.delete_job(job)
        _refresh_generation(cluster, vg)
        return status["phase"]

    try:
        problems = name_problems(name)
        if problems:
            raise InvalidSpec(problems)
        spec = parse(vg["spec"])
    except InvalidSpec as e:
        message = reasons.INVALID_SPEC_MESSAGE.format(problems="; ".join(map(str, e.problems)))
        _write_invalid(cluster, vg, message, attempt=attempt, now=now)
        raise Refused(message) from e
    seed = seed_for(spec, vg["metadata"]["uid"])

    jobs = cluster.jobs(vg)
    attempt = max([attempt] + [_attempt(j) for j in jobs.values()])
    for old in jobs.values():  # an earlier attempt that is still running (its failure was
        if _attempt(old) < attempt and not _finished(old):  # written, then the operator died)
            cluster.delete_job(old)
    job = jobs.get(job_name(name, attempt))
    if job is None:
        refused = preflight(cluster, namespace, spec, config, now)
        if refused is not None:
            _write(cluster, vg, refused, attempt=attempt, seed=seed, now=now)
            raise Refused(refused.message)
    pods: list[dict[str, Any]] | None = None
    if job is None or repair:
        config_map, service, wanted = render(vg, config=config, attempt=attempt, existing_job=job)
        cluster.apply(config_map)
        cluster.apply(service)
        if job is None:
            job = _create_job(cluster, vg, wanted, now)
            if job is None:
                return FAILED
            pods = []  # just created: no pod yet
    if kueue_queue(vg) is None and bool(job["spec"].get("suspend")) != spec.suspend:
        job = cluster.set_suspend(job, spec.suspend)

    obs = observe(
        job,
        cluster.pods(job) if pods is None else pods,
        queue=kueue_queue(vg),
        start_timeout_seconds=spec.start_timeout_seconds,
        active_deadline_seconds=spec.active_deadline_seconds,
        now=now,
    )
    obs = after_failed_attempt(
        obs, attempt=attempt, retry_limit=spec.retry_limit, next_job=job_name(name, attempt + 1)
    )
    retry = obs.reason == reasons.RETRYING
    # status first, then what it leads to (see the module docstring)
    _write(cluster, vg, obs, attempt=attempt + retry, seed=seed, now=now)
    if (obs.failure or {}).get("reason") in DELETE_AFTER:
        # evicted: the other ranks wait for the lost one; timed out: pods must not start late
        cluster.delete_job(job)
    if retry:
        config_map, _, wanted = render(vg, config=config, attempt=attempt + 1)
        cluster.apply(config_map)
        _create_job(cluster, vg, wanted, now)
    return obs.phase


def _attempt(job: Mapping[str, Any]) -> int:
    return int(job["metadata"]["labels"][LABEL_ATTEMPT])


def _finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _write_invalid(
    cluster: Cluster, vg: dict[str, Any], message: str, *, attempt: int, now: datetime
) -> None:
    """End the resource Failed/InvalidSpec: ours or the API server's refusal of what we render."""
    _write(
        cluster,
        vg,
        failed(reasons.INVALID_SPEC, message, now=now),
        attempt=attempt,
        seed=None,
        now=now,
    )


def _create_job(
    cluster: Cluster, vg: dict[str, Any], job: dict[str, Any], now: datetime
) -> dict[str, Any] | None:
    """Apply a new attempt's Job; a Job the API server refuses (an affinity it rejects, say)
    ends the resource Failed with the server's message. A same-named Job of a deleted resource
    of the same name is waited out (the garbage collector removes it), never overwritten."""
    meta = job["metadata"]
    if cluster.exists(
        cluster.batch.read_namespaced_job, meta["name"], meta["namespace"]
    ) is not None or cluster.job_pods_left(meta["namespace"], meta["name"]):
        raise kopf.TemporaryError(
            f"Job {meta['name']} or its pods, of an earlier resource of this name, are still "
            "being deleted (their host names would clash)",
            delay=RETRY_DELAY_S,
        )
    try:
        created = cluster.apply(job)
    except ApiException as e:
        if e.status != 422:
            raise
        message = reasons.INVALID_SPEC_MESSAGE.format(problems=_api_message(e))
        _write_invalid(
            cluster, vg, message, attempt=int(job["metadata"]["labels"][LABEL_ATTEMPT]), now=now
        )
        return None
    created_at = vg["metadata"].get("creationTimestamp")
    if created_at and job["metadata"]["labels"][LABEL_ATTEMPT] == "0":
        metrics.job_created(parse_time(created_at), now)
    return created


def _api_message(error: ApiException) -> str:
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(error.reason)


def _refresh_generation(cluster: Cluster, vg: dict[str, Any]) -> None:
    """A finished resource whose `suspend` was edited: only observedGeneration moves."""
    generation = vg["metadata"].get("generation", 0)
    status = vg["status"]
    if status.get("observedGeneration") == generation:
        return
    conditions = [{**c, "observedGeneration": generation} for c in status.get("conditions") or []]
    cluster.patch_status(vg, {"observedGeneration": generation, "conditions": conditions})

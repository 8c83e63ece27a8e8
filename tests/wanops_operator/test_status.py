"""status.py: Job and pods (as the API server reports them) → phase, reason, failure, conditions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from vg_builder import make_vg  # tests/wanops_operator/vg_builder.py

from wanops_operator import reasons
from wanops_operator.status import (
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    Observation,
    after_failed_attempt,
    changed,
    conditions,
    observe,
    pod_failure,
    status_patch,
    timestamp,
)
from wanspec import contract

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
T0 = "2026-01-01T11:59:00Z"


def job(*, suspend: bool = False, conditions: list[dict] | None = None, **status: Any) -> dict:
    return {
        "metadata": {"name": "cats-a0", "namespace": "team", "uid": "j"},
        "spec": {"completions": 2, "suspend": suspend},
        "status": {"conditions": conditions or [], **status},
    }


def cond(kind: str, reason: str = "", when: str = T0) -> dict:
    return {"type": kind, "status": "True", "reason": reason, "lastTransitionTime": when}


def pod(
    name: str,
    phase: str,
    *,
    runner: dict | None = None,
    conds: list[dict] | None = None,
    start: str | None = T0,
) -> dict:
    status: dict[str, Any] = {"phase": phase, "conditions": conds or []}
    if start:
        status["startTime"] = start
    if runner is not None:
        status["containerStatuses"] = [{"name": "runner", "state": runner}]
    return {"metadata": {"name": name}, "status": status}


def exited(code: int, message: str = "", reason: str = "Error", at: str = T0) -> dict:
    return {
        "terminated": {"exitCode": code, "reason": reason, "message": message, "finishedAt": at}
    }


def look(
    j: dict,
    pods: list[dict] = (),
    *,
    queue: str | None = None,
    timeout: int = 600,
    now: datetime = NOW,
) -> Observation:
    return observe(
        j,
        list(pods),
        queue=queue,
        start_timeout_seconds=timeout,
        active_deadline_seconds=3600,
        now=now,
    )


def test_complete_job_is_succeeded_with_its_completion_time() -> None:
    obs = look(job(conditions=[cond("Complete")], completionTime="2026-01-01T11:59:30Z"))
    assert (obs.phase, obs.reason, obs.completion_time) == (
        SUCCEEDED,
        reasons.SUCCEEDED,
        "2026-01-01T11:59:30Z",
    )


def test_invalid_input_takes_reason_and_message_from_the_termination_message() -> None:
    message = contract.termination_message(contract.IMAGE_NOT_READABLE, "s3://a/b: 404; upload it")
    pods = [
        pod("cats-a0-0-x", FAILED, runner=exited(contract.EXIT_INVALID_INPUT, message)),
        pod("cats-a0-1-y", FAILED, runner=exited(143, reason="Error")),
    ]
    obs = look(job(conditions=[cond("Failed", "PodFailurePolicy")]), pods)
    assert (obs.phase, obs.reason, obs.retryable) == (FAILED, contract.IMAGE_NOT_READABLE, False)
    assert obs.failure == {
        "reason": "ImageNotReadable",
        "message": "s3://a/b: 404; upload it",
        "exitCode": 42,
        "pod": "cats-a0-0-x",
        "time": T0,
    }


def test_invalid_input_is_final_even_when_its_pod_is_gone() -> None:
    failed = cond("Failed", "PodFailurePolicy")
    failed["message"] = "Container runner for pod team/cats-a0-0-x failed with exit code 42"
    obs = look(job(conditions=[failed]), [])
    assert (obs.phase, obs.reason, obs.retryable) == (FAILED, reasons.INVALID_INPUT, False)
    assert "exit code 42" in obs.message


def test_invalid_input_without_a_reason_line_uses_the_log_tail() -> None:
    pods = [
        pod("p", FAILED, runner=exited(contract.EXIT_INVALID_INPUT, "Traceback ...\nValueError"))
    ]
    failure = pod_failure(pods)
    assert failure["reason"] == reasons.INVALID_INPUT
    assert failure["message"] == "Traceback ...\nValueError"


def test_pod_failure_prefers_the_invalid_input_then_the_earliest_exit() -> None:
    early, late = "2026-01-01T11:00:00Z", "2026-01-01T11:30:00Z"
    pods = [
        pod("late", FAILED, runner=exited(1, at=late)),
        pod("early", FAILED, runner=exited(137, reason="OOMKilled", at=early)),
    ]
    assert pod_failure(pods)["pod"] == "early"
    assert pod_failure(pods)["reason"] == "OOMKilled"
    pods.append(pod("bad", FAILED, runner=exited(contract.EXIT_INVALID_INPUT, at=late)))
    assert pod_failure(pods)["pod"] == "bad"


def test_disrupted_pods_are_not_blamed() -> None:
    preempted = pod(
        "p", FAILED, runner=exited(137), conds=[{"type": "DisruptionTarget", "status": "True"}]
    )
    assert pod_failure([preempted]) is None


def test_infrastructure_failure_is_retryable_and_names_the_pod() -> None:
    pods = [pod("cats-a0-1-z", FAILED, runner=exited(1, "NCCL timeout"))]
    obs = look(job(conditions=[cond("Failed", "BackoffLimitExceeded")]), pods)
    assert (obs.phase, obs.reason, obs.retryable) == (FAILED, reasons.JOB_FAILED, True)
    assert "cats-a0-1-z exited 1" in obs.message and "NCCL timeout" in obs.message
    assert obs.failure["exitCode"] == 1


def test_deadline_exceeded_is_final() -> None:
    obs = look(job(conditions=[cond("Failed", "DeadlineExceeded")]))
    assert (obs.phase, obs.reason, obs.retryable) == (FAILED, reasons.DEADLINE_EXCEEDED, False)
    assert "3600 s" in obs.message


def test_suspended_job_is_suspended_or_queued_under_kueue() -> None:
    assert look(job(suspend=True)).phase == SUSPENDED
    obs = look(job(suspend=True), queue="gpu")
    assert (obs.phase, obs.reason) == (QUEUED, reasons.QUEUED) and "gpu" in obs.message


def test_running_from_the_first_started_pod() -> None:
    pods = [
        pod("a", RUNNING, start="2026-01-01T11:59:10Z"),
        pod("b", PENDING, start=None),
        pod("c", RUNNING, start="2026-01-01T11:59:05Z"),
    ]
    obs = look(job(startTime=T0), pods)
    assert (obs.phase, obs.start_time) == (RUNNING, "2026-01-01T11:59:05Z")
    assert "2 of 2" in obs.message


def test_still_running_while_a_failed_pod_waits_for_the_job_to_fail() -> None:
    """The pod exited 42 but the Job controller has not failed the Job yet: the attempt has run,
    so it stays Running (the operator fault test saw Running -> Pending here); a pod that failed
    without ever starting does not count."""
    ran = {"terminated": {**exited(42)["terminated"], "startedAt": T0}}
    obs = look(job(startTime=T0, failed=1), [pod("a", FAILED, runner=ran)])
    assert (obs.phase, obs.start_time) == (RUNNING, T0)
    never = look(job(startTime=T0), [pod("a", FAILED, runner=exited(128), start=None)])
    assert never.phase == PENDING


def test_pending_until_the_start_timeout_then_failed_with_the_cause() -> None:
    unschedulable = pod(
        "cats-a0-0-q",
        PENDING,
        start=None,
        conds=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    started = job(startTime=T0)  # 60 s before NOW
    assert look(started, [unschedulable], timeout=120).phase == PENDING
    obs = look(started, [unschedulable], timeout=30)
    assert (obs.phase, obs.reason, obs.retryable) == (FAILED, reasons.START_TIMEOUT, False)
    assert "Insufficient nvidia.com/gpu" in obs.message and "cats-a0-0-q" in obs.message


def test_start_timeout_names_image_pull_or_missing_pods() -> None:
    pulling = pod(
        "p", PENDING, runner={"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    )
    assert "ImagePullBackOff: not found" in look(job(startTime=T0), [pulling], timeout=1).message
    assert "has created no pod" in look(job(startTime=T0), [], timeout=1).message


def test_no_start_timeout_before_the_job_started() -> None:
    assert look(job(), [], timeout=1).phase == PENDING  # suspended time does not count


def test_retries_while_the_limit_allows_then_backoff_limit_exceeded() -> None:
    failed = Observation(
        FAILED, reasons.JOB_FAILED, "pod x exited 1", failure={"exitCode": 1}, retryable=True
    )
    retry = after_failed_attempt(failed, attempt=0, retry_limit=2, next_job="cats-a1")
    assert (retry.phase, retry.reason, retry.failure) == (
        PENDING,
        reasons.RETRYING,
        {"exitCode": 1},
    )
    assert "attempt 2 of 3" in retry.message and "cats-a1" in retry.message
    final = after_failed_attempt(failed, attempt=2, retry_limit=2, next_job="cats-a3")
    assert (final.phase, final.reason) == (FAILED, reasons.BACKOFF_LIMIT_EXCEEDED)
    permanent = Observation(FAILED, "ImageNotReadable", "m")
    assert after_failed_attempt(permanent, attempt=0, retry_limit=2, next_job="x") is permanent


@pytest.mark.parametrize(
    ("phase", "ready", "reconciling", "stalled"),
    [
        (PENDING, "False", "True", "False"),
        (QUEUED, "False", "True", "False"),
        (RUNNING, "False", "True", "False"),
        (SUSPENDED, "False", "False", "False"),
        (SUCCEEDED, "True", "False", "False"),
        (FAILED, "False", "False", "True"),
    ],
)
def test_kstatus_conditions_per_phase(phase, ready, reconciling, stalled) -> None:
    out = {
        c["type"]: c
        for c in conditions(Observation(phase, "R", "m"), generation=3, previous=None, now=NOW)
    }
    assert [out[k]["status"] for k in ("Ready", "Reconciling", "Stalled")] == [
        ready,
        reconciling,
        stalled,
    ]
    assert all(c["observedGeneration"] == 3 and c["reason"] == "R" for c in out.values())


def test_transition_time_moves_only_with_the_status() -> None:
    first = conditions(Observation(PENDING, "Starting", "m"), generation=1, previous=None, now=NOW)
    later = NOW + timedelta(minutes=5)
    running = {
        c["type"]: c
        for c in conditions(
            Observation(RUNNING, "Running", "m"), generation=1, previous=first, now=later
        )
    }
    assert running["Reconciling"]["lastTransitionTime"] == timestamp(NOW)
    done = {
        c["type"]: c
        for c in conditions(
            Observation(SUCCEEDED, "Succeeded", "m"), generation=1, previous=first, now=later
        )
    }
    assert (
        done["Ready"]["lastTransitionTime"]
        == done["Reconciling"]["lastTransitionTime"]
        == timestamp(later)
    )
    assert done["Stalled"]["lastTransitionTime"] == timestamp(NOW)


def test_status_patch_leaves_runner_fields_and_is_stable() -> None:
    runner_fields = {"progress": {"step": 3}, "output": {"uri": "s3://b/k"}}
    vg = make_vg(generation=2, status=dict(runner_fields))
    obs = Observation(RUNNING, reasons.RUNNING, "1 of 1", start_time=T0)
    patch = status_patch(vg, obs, attempt=0, job_name="cats-a0", seed=9, now=NOW)
    assert not {"progress", "output"} & patch.keys()
    assert (patch["phase"], patch["observedGeneration"], patch["seed"]) == (RUNNING, 2, 9)
    assert patch["startTime"] == T0 and "completionTime" not in patch
    applied = {**vg, "status": {**runner_fields, **patch}}
    again = status_patch(
        applied, obs, attempt=0, job_name="cats-a0", seed=9, now=NOW + timedelta(seconds=30)
    )
    assert not changed(applied, again)  # an idle pass writes nothing


def test_start_and_completion_times_are_kept_once_set() -> None:
    vg = make_vg(
        status={"startTime": "2026-01-01T10:00:00Z", "completionTime": "2026-01-01T11:00:00Z"}
    )
    obs = Observation(
        SUCCEEDED, reasons.SUCCEEDED, "m", start_time=T0, completion_time="2026-01-01T11:59:59Z"
    )
    patch = status_patch(vg, obs, attempt=0, job_name="j", seed=None, now=NOW)
    assert patch["startTime"] == "2026-01-01T10:00:00Z"
    assert patch["completionTime"] == "2026-01-01T11:00:00Z"
    assert "seed" not in patch


def test_termination_message_round_trip() -> None:
    line = contract.termination_message("SecretInvalid", "store refused the key: fix it")
    assert contract.parse_termination_message(line + "\n") == (
        "SecretInvalid",
        "store refused the key: fix it",
    )
    assert contract.parse_termination_message("plain log tail") == (None, "plain log tail")


def test_a_pod_evicted_from_a_lost_node_fails_the_attempt_for_a_retry() -> None:
    """The taint-eviction controller deletes a pod of an unreachable node; no kubelet will ever end
    it, so the attempt is over (retryable) with the node and the controller's words."""
    lost = pod(
        "cats-a0-0-x",
        RUNNING,
        conds=[
            {
                **cond("DisruptionTarget", "DeletionByTaintManager"),
                "message": "Taint manager: deleting due to NoExecute taint",
            }
        ],
    )
    lost["metadata"]["deletionTimestamp"] = T0
    lost["spec"] = {"nodeName": "node-9"}
    obs = look(job(active=2), [lost, pod("cats-a0-1-y", RUNNING)])
    assert (obs.phase, obs.reason, obs.retryable) == (FAILED, reasons.POD_EVICTED, True)
    assert "node-9" in obs.message and "DeletionByTaintManager" in obs.message
    assert obs.failure["pod"] == "cats-a0-0-x"
    # a pod deleted by hand (no DisruptionTarget) is left to its kubelet and the Job
    by_hand = pod("cats-a0-0-x", RUNNING)
    by_hand["metadata"]["deletionTimestamp"] = T0
    assert look(job(active=2), [by_hand]).phase == RUNNING

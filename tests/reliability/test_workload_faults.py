"""Workload faults on the real local control plane, node agent and S3 server (issue 11): a pod that
exits non-zero (infrastructure code 75, a crash, bad input 42), a pod deleted mid-run, a node that
disappears (its node agent stopped), a rank that hangs. Each is retried by policy as a fresh
attempt or fails with a clear reason, within a bounded time, and the bucket holds the one final
object or nothing: never two, never a half-written one, no temporary upload left behind.

Pods run `fault_runner.py` (the runner contract and the runner's own store and status code, a
fault on cue) where only the pod's life matters; the hung rank runs the real runner (torchrun,
two gloo ranks, tiny checkpoint). The stand-in scenarios are created together at the start of the
module and run side by side, so the module costs about its longest scenario plus the real run."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faults import (
    REAL,
    STAND_IN,
    Space,
    objects_of,
    pod_log,
    pods_of,
    processes,
    space,
    terminal,
    wait_status,
)
from kubernetes import client

from localcluster import wait_for
from localcluster.cluster import NODE_MONITOR_GRACE_PERIOD, NODE_MONITOR_PERIOD
from localcluster.rendezvous import rendezvous_turn
from wanops_operator import reasons
from wanspec import contract

pytestmark = pytest.mark.cluster

LOST_AGENT, LOST_NODE = "nodeagent-lost", "node-lost"
# Only the lost-node scenario may land on the node that goes away.
LOST_TAINT = {"key": "wanops.io/reliability", "value": "lost", "effect": "NoSchedule"}
NODE_LOST_SECONDS = 5  # the pods' tolerationSeconds for a NotReady/unreachable node
COLLECTIVE_TIMEOUT_S = 10

# name -> spec changes; prompt words drive fault_runner.py (see its docstring)
SCENARIOS: dict[str, dict[str, Any]] = {
    "temporary": {"prompt": "exit:75:1", "retryLimit": 2},  # StoreUnavailable-like, then fine
    "crash": {"prompt": "crash:1", "retryLimit": 1},  # SIGKILLed (segfault, OOM kill)
    "bad-input": {"prompt": "exit:42:9", "retryLimit": 2},  # never retried
    "exhausted": {"prompt": "exit:75:9", "retryLimit": 1},  # every attempt fails
    "deleted": {"prompt": "sleep:600:1", "retryLimit": 1},  # its pod is deleted mid-run
    "lost": {  # its node disappears mid-run
        "prompt": "sleep:600:1",
        "retryLimit": 1,
        "placement": {
            "tolerations": [{**LOST_TAINT, "operator": "Equal"}],
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "preference": {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [LOST_NODE],
                                    }
                                ]
                            },
                        }
                    ]
                }
            },
        },
    },
}


@pytest.fixture(scope="module")
def lost_node(cluster, kube) -> Iterator[str]:
    """A node of its own agent process, tainted so only the lost-node scenario lands there;
    removed afterwards with whatever its agent left."""
    if not cluster.node_agent:
        pytest.skip("stops a node agent of the local cluster")
    core = client.CoreV1Api(kube)
    try:
        cluster.add_node_agent(LOST_AGENT, [LOST_NODE], gpus_per_node=2)
        core.patch_node(LOST_NODE, {"spec": {"taints": [LOST_TAINT]}})
        yield LOST_NODE
    finally:
        cluster.remove_node_agent(LOST_AGENT)
        on_node = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={LOST_NODE}")
        for pod in on_node.items:  # no kubelet will end them: what PodGC does for a gone node
            core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
            )
        core.delete_node(LOST_NODE)


@pytest.fixture(scope="module")
def sp(cluster, kube, crd, s3, lost_node, tmp_path_factory) -> Iterator[Space]:
    with space(
        cluster,
        kube,
        s3,
        tmp_path_factory.mktemp("workload"),
        WANOPS_NODE_LOST_SECONDS=str(NODE_LOST_SECONDS),
    ) as made:
        yield made


@pytest.fixture(scope="module")
def started(sp: Space) -> dict[str, float]:
    """Every stand-in scenario created at once; name -> monotonic creation time."""
    created = {}
    for name, changes in SCENARIOS.items():
        sp.vgs.create(name, STAND_IN, **changes)
        created[name] = time.monotonic()
    return created


def published_once(s3, sp: Space, name: str, status: dict[str, Any]) -> None:
    """The final key holds one whole object, the one status.output names; nothing else."""
    key = f"{sp.namespace}/{name}.mp4"
    assert objects_of(s3, sp.bucket, sp.namespace, name) == [key]
    data = s3.get_object(sp.bucket, key).read()
    meta = {k.lower(): v for k, v in s3.stat_object(sp.bucket, key).metadata.items()}
    sha = hashlib.sha256(data).hexdigest()
    assert status["output"]["uri"] == f"s3://{sp.bucket}/{key}"
    assert status["output"]["sha256"] == meta["x-amz-meta-sha256"] == sha
    assert status["output"]["bytes"] == len(data) > 0


def job_names(sp: Space, name: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in sp.vgs.jobs(name))


# ---- a node that disappears (first: the longest wait, the other scenarios run meanwhile) ------


def test_lost_node_evicts_its_pods_and_a_fresh_attempt_runs_elsewhere(
    cluster, kube, s3, sp: Space, started
) -> None:
    """The node agent of the pod's node stops (its pods' processes end with it, the pod objects
    stay Running): after the node-monitor grace period the node is NotReady and tainted
    unreachable; NODE_LOST_SECONDS later the pod is evicted, the operator ends the attempt
    (PodEvicted, Job deleted) and attempt 1 runs on a healthy node."""
    status = wait_status(
        sp.vgs, "lost", lambda s: s.get("phase") == "Running", sp.operator, timeout=120
    )
    (pod,) = pods_of(kube, sp.namespace, "lost-a0")
    assert pod.spec.node_name == LOST_NODE
    t0 = time.monotonic()
    cluster.stop_component(LOST_AGENT)

    def evicted(s: dict[str, Any]) -> bool:
        """the attempt ended PodEvicted"""
        return (s.get("failure") or {}).get("reason") == reasons.POD_EVICTED

    status = wait_status(sp.vgs, "lost", evicted, sp.operator, timeout=120)
    noticed = time.monotonic() - t0
    assert status["attempt"] == 1 and status["phase"] in ("Pending", "Running", "Succeeded")
    message = status["failure"]["message"]
    assert LOST_NODE in message and "DeletionByTaintManager" in message, message
    node = client.CoreV1Api(kube).read_node(LOST_NODE)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "Unknown"
    assert "node.kubernetes.io/unreachable" in {t.key for t in node.spec.taints or []}

    status = wait_status(sp.vgs, "lost", terminal, sp.operator, timeout=120)
    replaced = time.monotonic() - t0
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    (pod,) = pods_of(kube, sp.namespace, "lost-a1")
    assert pod.spec.node_name != LOST_NODE
    assert job_names(sp, "lost") == ["lost-a1"]  # the lost attempt's Job was deleted
    published_once(s3, sp, "lost", status)
    # grace period + one monitor period + tolerationSeconds + the operator's pass, with room
    # for a busy machine
    bound = int(NODE_MONITOR_GRACE_PERIOD[:-1]) + int(NODE_MONITOR_PERIOD[:-1])
    bound += NODE_LOST_SECONDS + 30
    print(f"lost node: attempt ended after {noticed:.1f} s, replaced in {replaced:.1f} s")
    assert noticed < bound, (noticed, bound)


# ---- pods that exit non-zero --------------------------------------------------------------


def test_infrastructure_exit_is_retried_as_a_fresh_attempt(s3, sp: Space, started) -> None:
    status = wait_status(sp.vgs, "temporary", terminal, sp.operator, timeout=120)
    took = time.monotonic() - started["temporary"]
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    assert status["failure"]["exitCode"] == 75  # the last failure is kept
    assert status["failure"]["reason"] == "SimulatedFault"
    assert job_names(sp, "temporary") == ["temporary-a0", "temporary-a1"]
    published_once(s3, sp, "temporary", status)
    print(f"exit 75 then success: {took:.1f} s")


def test_crash_is_retried_as_a_fresh_attempt(s3, sp: Space, started) -> None:
    """SIGKILL (a segfault, the OOM killer): no termination message, exit 137, retried."""
    status = wait_status(sp.vgs, "crash", terminal, sp.operator, timeout=120)
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    assert status["failure"]["exitCode"] == 137
    published_once(s3, sp, "crash", status)


def test_bad_input_fails_at_once_and_is_never_retried(s3, sp: Space, started) -> None:
    status = wait_status(sp.vgs, "bad-input", terminal, sp.operator, timeout=120)
    took = time.monotonic() - started["bad-input"]
    assert status["phase"] == "Failed" and status["attempt"] == 0, status
    failure = status["failure"]
    assert failure["reason"] == contract.IMAGE_NOT_READABLE
    assert failure["exitCode"] == contract.EXIT_INVALID_INPUT
    assert sp.vgs.conditions("bad-input")["Stalled"]["status"] == "True"
    time.sleep(3)  # a resync later: still one attempt
    assert job_names(sp, "bad-input") == ["bad-input-a0"]
    assert objects_of(s3, sp.bucket, sp.namespace, "bad-input") == []
    print(f"exit 42: Failed in {took:.1f} s")


def test_retries_end_when_the_retry_limit_is_spent(s3, sp: Space, started) -> None:
    status = wait_status(sp.vgs, "exhausted", terminal, sp.operator, timeout=120)
    assert status["phase"] == "Failed" and status["attempt"] == 1, status
    reason = sp.vgs.conditions("exhausted")["Stalled"]
    assert reason["reason"] == reasons.BACKOFF_LIMIT_EXCEEDED
    assert "all 2 attempt(s) failed" in reason["message"] and "SimulatedFault" in reason["message"]
    assert job_names(sp, "exhausted") == ["exhausted-a0", "exhausted-a1"]
    assert objects_of(s3, sp.bucket, sp.namespace, "exhausted") == []


# ---- a pod deleted mid-run ----------------------------------------------------------------


def test_pod_deleted_mid_run_is_replaced_by_a_fresh_attempt(kube, s3, sp: Space, started) -> None:
    """`kubectl delete pod` of a running attempt (no disruption condition: not an eviction): the
    node agent stops it (SIGTERM), the pod fails (143), the Job fails, the next attempt publishes
    once."""
    wait_status(sp.vgs, "deleted", lambda s: s.get("phase") == "Running", sp.operator, 120)
    (pod,) = pods_of(kube, sp.namespace, "deleted-a0")
    t0 = time.monotonic()
    client.CoreV1Api(kube).delete_namespaced_pod(pod.metadata.name, sp.namespace)
    status = wait_status(sp.vgs, "deleted", terminal, sp.operator, timeout=120)
    took = time.monotonic() - t0
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    # the agent removes the pod once it has ended, often before the operator reads it: then the
    # Job's own verdict names the attempt
    failure = status["failure"]
    assert failure.get("exitCode", 128 + signal.SIGTERM) == 128 + signal.SIGTERM, failure
    assert "deleted-a0" in failure.get("pod", "") + failure["message"], failure
    assert job_names(sp, "deleted") == ["deleted-a0", "deleted-a1"]
    published_once(s3, sp, "deleted", status)
    print(f"pod deleted: replaced and published in {took:.1f} s")
    assert took < 60


# ---- a rank that hangs (the real runner) --------------------------------------------------


@pytest.mark.timeout(1500)  # may wait up to 420 s for the rendezvous port
def test_hung_rank_ends_the_attempt_within_the_collective_timeout(
    cluster, kube, s3, sp: Space, started
) -> None:
    """Rank 1 of a two-rank run is frozen (SIGSTOP) while the pipeline loads: rank 0 waits for it
    in a gloo collective until WANOPS_COLLECTIVE_TIMEOUT_S, fails, torchrun stops the frozen
    rank (SIGTERM, SIGKILL after its 30 s), and the attempt ends Failed with the reason; nothing
    is published."""
    if not cluster.node_agent:
        pytest.skip("finds the rank's process on this machine")
    name = "hung"
    sp.tiny_checkpoint()
    with rendezvous_turn():
        sp.vgs.create(
            name,
            REAL,
            gpus=2,
            gpusPerPod=2,
            retryLimit=0,
            prompt=f"real-runner collective-timeout:{COLLECTIVE_TIMEOUT_S} a red fox",
        )

        def loading(s: dict[str, Any]) -> bool:
            """rank 0 is loading the pipeline"""
            return (s.get("progress") or {}).get("stage") in ("Loading", "Denoising")

        wait_status(sp.vgs, name, lambda s: loading(s) or terminal(s), sp.operator, 600)
        rank1 = wait_for(
            lambda: processes(f"{name}-a0-0", b"RANK=1", "runner.worker"),
            timeout=60,
            what="rank 1's process",
        )
        os.kill(rank1[0], signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            status = wait_status(sp.vgs, name, terminal, sp.operator, timeout=300)
        finally:
            for pid in processes(f"{name}-a0-0"):  # whatever outlived the pod: not ours to keep
                os.kill(pid, signal.SIGKILL)
        took = time.monotonic() - t0
    names = objects_of(s3, sp.bucket, sp.namespace, name)
    failure = status.get("failure") or {}
    print(f"hung rank: Failed {took:.1f} s after the freeze: {failure}; objects {names}")
    (pod,) = pods_of(kube, sp.namespace, f"{name}-a0")
    log = pod_log(cluster, sp.namespace, pod)
    assert status["phase"] == "Failed" and status["attempt"] == 0, (status, log[-3000:])
    # rank 0's step watchdog (NoProgress) or its gloo collective (a timeout error), whichever
    # fires first; both after WANOPS_COLLECTIVE_TIMEOUT_S
    assert failure["reason"] in ("NoProgress", "WorkerFailed") and failure["exitCode"] == 75
    assert "no progress for" in failure["message"] or "timed out" in failure["message"].lower()
    assert f"{sp.namespace}/{name}.mp4" not in names and not any("upload-" in n for n in names)
    # collective timeout + torchrun's 30 s grace for a rank that ignores SIGTERM + pod and
    # operator, with room for a busy machine
    assert took < COLLECTIVE_TIMEOUT_S + 30 + 40, took

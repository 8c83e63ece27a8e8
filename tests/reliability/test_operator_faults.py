"""Operator faults against the real control plane, Job controller and node agent: the operator is
SIGKILLed again and again while resources run, and two replicas run at once as the chart runs them
(kopf peering). Judged on what a watch saw, every event of it: Jobs are never created twice, a
status never goes back (phase, attempt, observedGeneration, progress, what the runner wrote), each
transition gets one Event, and every resource ends in the phase its runner decides.

Runner pods run tests/wanops_operator/stand_in_runner.py; the prompt picks what a pod does.
"""

from __future__ import annotations

import functools
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster import wait_for
from tests.reliability.operator_proc import (
    Operator,
    Recorder,
    VGs,
    apply_peering_crds,
    operator_namespace,
)
from wanops_operator.render import FIELD_MANAGER
from wanops_operator.status import FAILED, SUCCEEDED, TERMINAL
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

SEED = 1125  # the kill schedule: same seed, same delays
KILLS = 20
RANK = {None: 0, "Pending": 1, "Queued": 1, "Suspended": 1, "Running": 2, SUCCEEDED: 3, FAILED: 3}


def _cases(rng: random.Random) -> dict[str, tuple[dict[str, Any], str, int]]:
    """name -> (spec changes, final phase, final attempt): six runs that report progress for a
    few seconds (one or two pods), two whose runner refuses the input (exit 42, never retried),
    two that fail their first attempt (exit 1) and succeed on the second."""
    cases: dict[str, tuple[dict[str, Any], str, int]] = {}
    for i in range(6):
        pods = {"gpus": 2, "gpusPerPod": 1} if i % 3 == 0 else {"gpus": 1, "gpusPerPod": None}
        cases[f"run-{i}"] = ({"prompt": f"progress:{rng.randint(3, 9)}", **pods}, SUCCEEDED, 0)
    for i in range(2):
        cases[f"bad-{i}"] = ({"prompt": "invalid-input", "gpus": 1, "gpusPerPod": None}, FAILED, 0)
    for i in range(2):
        prompt = f"fail-first-attempt progress:{rng.randint(2, 5)}"
        cases[f"flaky-{i}"] = ({"prompt": prompt, "gpus": 1, "gpusPerPod": None}, SUCCEEDED, 1)
    return cases


@pytest.fixture
def ns(cluster, kube, crd, tmp_path_factory) -> Iterator[str]:
    """Each test its own namespace: the watches and Event counts see only that test's work."""
    if not cluster.runs_pods:
        pytest.skip("no node agent: runner pods would never run")
    yield from operator_namespace(kube, tmp_path_factory.mktemp("claim"))


def _recorders(kube, ns: str) -> tuple[Recorder, Recorder]:
    jobs = Recorder(functools.partial(client.BatchV1Api(kube).list_namespaced_job, ns))
    custom = client.CustomObjectsApi(kube)
    vgs = Recorder(
        functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL)
    )
    return jobs, vgs


def _all_terminal(vgs: VGs, *ops: Operator, timeout: float = 180) -> dict[str, dict]:
    """Every resource's status once all are terminal."""

    def statuses() -> dict[str, dict]:
        return {v["metadata"]["name"]: v.get("status") or {} for v in vgs.list()}

    try:
        return wait_for(
            lambda: (
                (now := statuses())
                and all(s.get("phase") in TERMINAL for s in now.values())
                and now
            ),
            timeout=timeout,
            what="all terminal",
            interval=1,
        )
    except TimeoutError:
        phases = {n: s.get("phase") for n, s in statuses().items()}
        pytest.fail(f"not all terminal: {phases}\n" + "\n---\n".join(op.tail() for op in ops))


def _job_creations(events: list[tuple[float, str, dict]]) -> Counter[str]:
    return Counter(o["metadata"]["name"] for _, kind, o in events if kind == "ADDED")


def _regressions(events: list[tuple[float, str, dict]]) -> list[str]:
    """Every way a status seen by the watch went back from one seen before it."""
    last: dict[str, dict] = {}
    found = []
    for _, kind, vg in events:
        name, new = vg["metadata"]["name"], vg.get("status") or {}
        old = last.get(name, {})
        last[name] = new
        if kind == "DELETED" or not old:
            continue

        def back(what: str, before: Any, after: Any, new: dict = new, name: str = name) -> None:
            found.append(f"{name}: {what} {before!r} -> {after!r} (status now {new})")

        key = lambda s: (s.get("attempt") or 0, RANK[s.get("phase")])
        if key(new) < key(old):
            back("(attempt, phase)", key(old), key(new))
        if old.get("phase") in TERMINAL and new.get("phase") != old.get("phase"):
            back("terminal phase", old.get("phase"), new.get("phase"))
        if (new.get("observedGeneration") or 0) < (old.get("observedGeneration") or 0):
            back("observedGeneration", old.get("observedGeneration"), new.get("observedGeneration"))
        percent = lambda s: (s.get("progress") or {}).get("percent") or 0
        if percent(new) < percent(old):
            back("progress.percent", percent(old), percent(new))
        for field in ("output", "startTime", "completionTime", "failure", "seed"):
            if old.get(field) is not None and new.get(field) is None:
                back(field, old.get(field), None)  # written once, never lost
        for field in ("startTime", "completionTime", "seed"):
            if old.get(field) is not None and new.get(field) != old.get(field):
                back(field, old.get(field), new.get(field))
    return found


def _duplicate_events(core: client.CoreV1Api, ns: str) -> list[tuple[str, str, str]]:
    """(resource, reason, message) of the operator's Events that were posted more than once."""
    events = core.list_namespaced_event(ns).items
    ours = Counter(
        (e.involved_object.name, e.reason, e.message)
        for e in events
        if e.source and e.source.component == FIELD_MANAGER
    )
    return [key for key, n in ours.items() if n > 1]


def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    cluster, kube, ns: str, tmp_path: Path
) -> None:
    """20 SIGKILLs at seeded random delays after each start, while 10 resources are created
    (one per kill) and run; then every resource ends right, with one Job per attempt."""
    rng = random.Random(SEED)
    cases = _cases(rng)
    vgs = VGs(kube, ns)
    jobs, statuses = _recorders(kube, ns)
    op = Operator(cluster, ns, tmp_path / "operator.log")
    delays: list[float] = []
    op.start()
    try:
        pending = list(cases.items())
        for _ in range(KILLS):
            wait_for(op.healthy, timeout=90, what="the operator up", interval=0.1)
            if pending:
                name, (changes, _, _) = pending.pop(0)
                vgs.create(name, **changes)
            delays.append(rng.uniform(0.0, 3.0))
            time.sleep(delays[-1])
            op.kill()
            op.start()

        final = _all_terminal(vgs, op)
        time.sleep(2)  # anything a late pass would still do shows up in the watches
    finally:
        job_events, status_events = jobs.stop(), statuses.stop()
        op.stop()
    print(f"\nkills: {KILLS} after {', '.join(f'{d:.1f}' for d in delays)} s of work each")

    expected_jobs = {f"{n}-a{a}" for n, (_, _, last) in cases.items() for a in range(last + 1)}
    assert _job_creations(job_events) == dict.fromkeys(expected_jobs, 1)
    assert not [o["metadata"]["name"] for _, kind, o in job_events if kind == "DELETED"]
    assert _regressions(status_events) == []
    for name, (_, phase, attempt) in cases.items():
        status = final[name]
        assert (status["phase"], status["attempt"]) == (phase, attempt), (name, status)
        if phase == SUCCEEDED:
            assert status["progress"]["percent"] == 100 and status["output"]["uri"], status
        if name.startswith("bad"):
            assert status["failure"]["reason"] == contract.IMAGE_NOT_READABLE
            assert status["failure"]["exitCode"] == contract.EXIT_INVALID_INPUT
        if name.startswith("flaky"):
            assert status["failure"]["exitCode"] == 1  # the first attempt's failure, kept
    assert _duplicate_events(client.CoreV1Api(kube), ns) == []


def _reconciles(op: Operator) -> float:
    """Passes this replica has made (its /metrics), whatever their outcome."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wanops_reconciles_total{")
    )


def test_two_replicas_work_once_and_the_standby_takes_over(
    cluster, kube, ns: str, tmp_path: Path
) -> None:
    """Two replicas with peering, as the chart runs `replicas: 2`: one works, the other does
    nothing at all (not even its resync loop), and when the working one is SIGKILLed the other
    finishes what runs and takes new work; one Job per resource, one Event per transition."""
    apply_peering_crds(kube)
    custom = client.CustomObjectsApi(kube)
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "wanops"}}
    custom.create_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", peering)
    env = {
        "WANOPS_PEERING": "wanops",
        "WANOPS_PEERING_LIFETIME": "6",  # a dead replica is replaced after ≤ 6 s (chart: 60)
        "WANOPS_RESYNC_SECONDS": "2",  # the standby's loop gets many chances to misbehave
    }
    ops = [Operator(cluster, ns, tmp_path / f"replica-{i}.log", **env) for i in range(2)]
    vgs = VGs(kube, ns)
    jobs, statuses = _recorders(kube, ns)
    for op in ops:
        op.start()
    try:

        def peers() -> dict[str, dict]:
            obj = custom.get_namespaced_custom_object(
                "kopf.dev", "v1", ns, "kopfpeerings", "wanops"
            )
            return obj.get("status") or {}

        wait_for(lambda: len(peers()) == 2, timeout=90, what="both replicas in the peering")
        leader_id = max(peers().items(), key=lambda kv: kv[1]["priority"])[0]
        leader = next(op for op in ops if f"/{op.pid}/" in leader_id)
        standby = next(op for op in ops if op is not leader)

        def paused() -> bool:  # kopf starts it paused; if it resumed first, it pauses again
            text = standby.log.read_text()
            return text.rfind("Resuming operations") < text.rfind("Pausing operations") or (
                "Resuming operations" not in text
            )

        wait_for(paused, timeout=30, what="kopf to pause the standby")
        time.sleep(1)  # a peering event still in flight is handled

        first = [f"before-{i}" for i in range(4)]
        for name in first:
            vgs.create(name, prompt="progress:6", gpus=1, gpusPerPod=None)
        wait_for(
            lambda: all(vgs.status(n).get("phase") == "Running" for n in first),
            timeout=120,
            what="the first resources running",
        )
        time.sleep(3)  # a resync round or more on both replicas
        assert _reconciles(leader) > 0
        assert _reconciles(standby) == 0  # paused by kopf, and its resync loop too

        leader.kill()
        killed = time.monotonic()
        later = [f"after-{i}" for i in range(2)]
        for name in later:
            vgs.create(name, prompt="progress:2", gpus=1, gpusPerPod=None)
        final = _all_terminal(vgs, standby)
        time.sleep(2)
    finally:
        job_events, status_events = jobs.stop(), statuses.stop()
        for op in ops:
            op.stop()
    added = {o["metadata"]["name"]: t for t, kind, o in job_events if kind == "ADDED"}
    takeover = max(added[f"{n}-a0"] for n in later) - killed
    print(f"\ntakeover: the standby made the new Jobs {takeover:.1f} s after the SIGKILL")

    assert {n: s["phase"] for n, s in final.items()} == dict.fromkeys(first + later, SUCCEEDED)
    assert _job_creations(job_events) == {f"{n}-a0": 1 for n in first + later}
    assert _regressions(status_events) == []
    assert _duplicate_events(client.CoreV1Api(kube), ns) == []
    assert takeover <= 6 + 30  # the lifetime, then a pass on a busy machine

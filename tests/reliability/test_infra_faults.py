"""Infrastructure faults on the real local control plane and S3 server (issue 11): the API server
restarted mid-run, the object store down during the upload (back in time, or for good).

- The real runner (torchrun, tiny checkpoint) lives through an API server restart while it runs
  and a store outage at the MP4's upload: its progress reports fail and catch up, the upload is
  retried with backoff, the operator reconnects, and the run ends Succeeded at attempt 0 with one
  whole video and nothing else in the bucket.
- With `fault_runner.py` (the runner's own store code, no torch) the real S3 server is stopped
  during the run: for good, the run ends Failed with a reason naming the store and leaves nothing;
  back within the retry window, it publishes once.
"""

from __future__ import annotations

import hashlib
import threading
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
    space,
    terminal,
    wait_status,
)

from localcluster import wait_for
from localcluster.rendezvous import rendezvous_turn
from localcluster.s3gate import S3Gate

pytestmark = pytest.mark.cluster

STORE_OUTAGE_S = 3.0  # the store's outage at the upload; the runner retries for 7.5 s


@pytest.fixture(scope="module")
def sp(cluster, kube, crd, s3, tmp_path_factory) -> Iterator[Space]:
    with space(cluster, kube, s3, tmp_path_factory.mktemp("infra")) as made:
        yield made


def running(s: dict[str, Any]) -> bool:
    """Running"""
    return s.get("phase") == "Running"


@pytest.mark.timeout(1500)  # may wait up to 420 s for the rendezvous port
def test_api_server_restart_and_store_outage_mid_run_lose_nothing(
    cluster, kube, s3, sp: Space
) -> None:
    """API server stopped while the runner samples and started again once a progress report has
    failed; then the store goes down at the MP4's upload and is back STORE_OUTAGE_S later."""
    if not cluster.kubernetes:
        pytest.skip("restarts the local API server")
    name = "restarts"
    sp.tiny_checkpoint()
    with (
        rendezvous_turn(),
        S3Gate(cluster.s3_endpoint, refuse_at=lambda method, path: "/upload-" in path) as gate,
    ):

        def recover() -> None:
            if gate.tripped.wait(900):
                time.sleep(STORE_OUTAGE_S)
                gate.recover()

        threading.Thread(target=recover, daemon=True).start()
        sp.vgs.create(
            name,
            REAL,
            gpus=1,
            gpusPerPod=None,
            prompt="real-runner a red fox",
            output={"bucket": sp.bucket, "endpoint": gate.endpoint},
        )

        def under_way(s: dict[str, Any]) -> bool:
            """the runner reports progress"""
            return (s.get("progress") or {}).get("stage") in ("Loading", "Denoising")

        wait_status(sp.vgs, name, lambda s: under_way(s) or terminal(s), sp.operator, 600)
        (pod,) = pods_of(kube, sp.namespace, f"{name}-a0")
        t0 = time.monotonic()
        cluster.stop_component("kube-apiserver")
        try:  # down until the runner has seen it (a failed report), 60 s at most
            wait_for(
                lambda: "patch failed" in pod_log(cluster, sp.namespace, pod),
                timeout=60,
                what="a failed status report",
            )
        except TimeoutError:
            pass
        down = time.monotonic() - t0
        restart = cluster.start_component("kube-apiserver")
        status = wait_status(sp.vgs, name, terminal, sp.operator, timeout=600)
        log = pod_log(cluster, sp.namespace, pod)

    assert status["phase"] == "Succeeded" and status["attempt"] == 0, (status, log[-3000:])
    assert sp.operator.running()
    assert "patch failed" in log  # the outage reached the runner, and it carried on
    assert status["progress"]["percent"] == 100 and status["progress"]["step"] == 4
    assert sp.vgs.conditions(name)["Ready"]["status"] == "True"
    # the upload met the outage, was retried with backoff and went through once the store was back
    assert gate.refused and gate.dropped >= 1, (gate.refused, gate.dropped)
    assert "could not upload" not in log and "retry 1 in" in log
    key, log_key = f"{sp.namespace}/{name}.mp4", f"{sp.namespace}/{name}.log"
    assert objects_of(s3, sp.bucket, sp.namespace, name) == sorted([key, log_key])
    data = s3.get_object(sp.bucket, key).read()
    assert status["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert status["output"]["bytes"] == len(data)
    print(f"API server down {down:.1f} s, back in {restart:.1f} s; store down {STORE_OUTAGE_S} s")


def checked(cluster, kube, sp: Space, name: str) -> None:
    """Wait until the runner of `name` has checked the store (and now sleeps before publishing)."""
    wait_status(sp.vgs, name, running, sp.operator, timeout=120)
    (pod,) = pods_of(kube, sp.namespace, f"{name}-a0")
    wait_for(
        lambda: "store checked" in pod_log(cluster, sp.namespace, pod),
        timeout=60,
        what=f"{name} checked the store",
    )


def test_store_down_for_good_fails_the_run_with_the_store_named(
    cluster, kube, s3, sp: Space
) -> None:
    """The S3 server stops after the runner checked it: the upload is retried with backoff
    (5 tries, 7.5 s), the pod exits 75, and with no retry left the resource is Failed with reason
    StoreUnavailable naming the endpoint; the final key stays empty."""
    sp.vgs.create("store-gone", STAND_IN, prompt="sleep:4", retryLimit=0)
    checked(cluster, kube, sp, "store-gone")
    cluster.stop_component("versitygw")
    t0 = time.monotonic()
    try:
        status = wait_status(sp.vgs, "store-gone", terminal, sp.operator, timeout=120)
        took = time.monotonic() - t0
    finally:
        cluster.start_component("versitygw")
    assert status["phase"] == "Failed", status
    failure = status["failure"]
    assert failure["reason"] == "StoreUnavailable" and failure["exitCode"] == 75, failure
    assert cluster.s3_endpoint in failure["message"] and "5 tries" in failure["message"]
    assert objects_of(s3, sp.bucket, sp.namespace, "store-gone") == []
    print(f"store down for good: Failed {took:.1f} s after the store stopped")
    assert took < 60


def test_store_back_within_the_retry_window_publishes_once(cluster, kube, s3, sp: Space) -> None:
    """The S3 server stops after the runner checked it and starts again (same port and data)
    while the upload is being retried: the run succeeds at attempt 0 with one whole object."""
    sp.vgs.create("store-back", STAND_IN, prompt="sleep:3", retryLimit=0)
    checked(cluster, kube, sp, "store-back")
    cluster.stop_component("versitygw")
    time.sleep(4)  # the upload's first tries meet a closed port
    restart = cluster.start_component("versitygw")
    status = wait_status(sp.vgs, "store-back", terminal, sp.operator, timeout=120)
    assert status["phase"] == "Succeeded" and status["attempt"] == 0, status
    key = f"{sp.namespace}/store-back.mp4"
    assert objects_of(s3, sp.bucket, sp.namespace, "store-back") == [key]
    data = s3.get_object(sp.bucket, key).read()
    assert status["output"]["sha256"] == hashlib.sha256(data).hexdigest()
    print(f"store restarted in {restart:.1f} s")

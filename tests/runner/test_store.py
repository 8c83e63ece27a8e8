"""The store against the real S3 server (versitygw): an interrupted upload leaves nothing at the
final key, a finished object is recognised by its run identity, errors are classified."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runner_cases import ROOT, poll

from runner import errors
from runner.store import Store
from wanspec import contract

pytestmark = pytest.mark.cluster

BIG = 96 << 20  # large enough that the upload is still running when it is killed

PUBLISH = """
import os, sys
from runner.store import Store
from wanspec.contract import OutputObject
out = OutputObject.model_validate_json(sys.argv[1])
Store.from_env(out, os.environ).publish(sys.argv[2], sys.argv[3])
"""


def _output(cluster, bucket: str, endpoint: str | None = None) -> contract.OutputObject:
    return contract.OutputObject(
        endpoint=endpoint or cluster.s3_endpoint,
        region="us-east-1",
        bucket=bucket,
        key="videos/ns/cats.mp4",
        log_key="videos/ns/cats.log",
    )


def _store(cluster, bucket: str, **kw) -> Store:
    return Store(_output(cluster, bucket), cluster.s3_access_key, cluster.s3_secret_key, **kw)


def _read_bytes(pid: int) -> int:
    """Bytes the process read from files: the sha256 pass over the video, then the upload's."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def test_interrupted_upload_leaves_nothing_at_the_final_key(cluster, s3, bucket, tmp_path) -> None:
    video = tmp_path / "video.mp4"
    video.write_bytes(os.urandom(BIG))
    out = _output(cluster, bucket)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        contract.ACCESS_KEY_ENV: cluster.s3_access_key,
        contract.SECRET_KEY_ENV: cluster.s3_secret_key,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISH, out.model_dump_json(), str(video), "run-a"], env=env
    )
    # Killed once the upload has read a few MiB of the file but not all of it, so the copy to
    # the final key (after the last part) cannot have happened, whatever the machine's speed.
    read = poll(
        lambda: (n := _read_bytes(proc.pid)) > BIG + (8 << 20) and n, timeout=120, interval=0.01
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read < 2 * BIG
    assert [o.object_name for o in s3.list_objects(bucket, prefix=out.key)] == []

    store = _store(cluster, bucket)
    assert store.finished("run-a") is None  # the retry must generate (or here: upload) again
    published = store.publish(video, "run-a")
    assert published.sha256 == hashlib.sha256(video.read_bytes()).hexdigest()
    assert published.bytes == BIG and published.uri == f"s3://{bucket}/{out.key}"
    store.clear_work("run-a")  # also removes the killed attempt's temporary object
    assert [o.object_name for o in s3.list_objects(bucket, recursive=True)] == [out.key]


def test_a_finished_object_is_found_by_its_run_identity(cluster, s3, bucket, tmp_path) -> None:
    store = _store(cluster, bucket)
    video = tmp_path / "video.mp4"
    video.write_bytes(b"first run")
    first = store.publish(video, "run-a")
    assert store.finished("run-a") == first
    assert store.finished("run-b") is None  # same name, another resource: generate and replace
    video.write_bytes(b"second run, other content")
    second = store.publish(video, "run-b")
    assert store.finished("run-b") == second and store.finished("run-a") is None
    meta = {k.lower(): v for k, v in s3.stat_object(bucket, store.output.key).metadata.items()}
    assert meta["x-amz-meta-sha256"] == second.sha256 and meta["x-amz-meta-wanops-run"] == "run-b"


def test_work_objects_round_trip_beside_the_final_key(cluster, s3, bucket) -> None:
    store = _store(cluster, bucket)
    assert store.get_work("run-a", "latents.pt") is None
    store.put_work("run-a", "latents.pt", b"\x00latent")
    assert store.get_work("run-a", "latents.pt") == b"\x00latent"
    names = [o.object_name for o in s3.list_objects(bucket, recursive=True)]
    assert names == ["videos/ns/.wanops/cats-run-a/latents.pt"]
    assert not any(n.startswith(store.output.key) for n in names)
    store.clear_work("run-a")
    assert list(s3.list_objects(bucket, recursive=True)) == []


def test_refusals_are_bad_input_and_outages_are_retried_then_temporary(cluster, bucket) -> None:
    wrong = Store(_output(cluster, bucket), cluster.s3_access_key, "not-the-secret")
    with pytest.raises(errors.RunnerError) as e:
        wrong.check()
    assert e.value.fatal and e.value.reason == contract.SECRET_INVALID
    with pytest.raises(errors.RunnerError) as e:
        _store(cluster, "no-such-bucket-here").check()
    assert e.value.fatal and e.value.reason == errors.OUTPUT_BUCKET_NOT_FOUND

    down = Store(
        _output(cluster, bucket, "http://127.0.0.1:9"), "k", "s", attempts=3, backoff_s=0.05
    )
    start = time.monotonic()
    with pytest.raises(errors.RunnerError, match="after 3 tries") as e:
        down.finished("run-a")
    assert not e.value.fatal and e.value.reason == errors.STORE_UNAVAILABLE
    assert time.monotonic() - start < 10

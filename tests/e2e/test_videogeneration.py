"""The whole path on the local control plane: VideoGeneration → operator (subprocess) → Indexed
Job → node agent runs `python -m runner` in pods that rendezvous by pod DNS → MP4 in S3 → status
Succeeded with the output, progress observed on the way (issue 8, "How it is checked").

- each task (tiny checkpoints) with 2 pods × 2 processes (gloo on CPU): 4 "GPUs" give Ulysses 4,
  which divides the real heads (40, 24) and the tiny checkpoints' 4;
- fault paths through the operator: a runner process SIGKILLed mid-run (a fresh attempt, exactly
  one video), a bad image URL (Failed at once, reason in status and an Event, no retry), the store
  going down at the upload (retried, then Failed cleanly, nothing at the final key).

One namespace, bucket, claim and operator serve the whole module; sizes, frames (5) and steps (2)
are the smallest the API accepts, because every run here is real sampling plus a VAE decode at a
real size on a shared CPU."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster import wait_for
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parents[2]
CLAIM, RUNNER_SA = "models", "wanops-runner"
CKPT = {
    "t2v-A14B": "Wan2.2-T2V-A14B",
    "i2v-A14B": "Wan2.2-I2V-A14B",
    "ti2v-5B": "Wan2.2-TI2V-5B",
}
SIZE = {
    "t2v-A14B": (832, 480),
    "i2v-A14B": (832, 480),
    "ti2v-5B": (1280, 704),
}  # smallest
# The video's (width, height): i2v follows the image's aspect within the area of `size`, floored
# to the latent grid as upstream does (sqrt(832·480·480/832) lands just under 480 → 464).
OUT_SIZE = {**SIZE, "i2v-A14B": (832, 464)}
TIMEOUT = 900  # pods loading torch and sampling on a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup_namespace(kube, cluster, ns: str, claim_dir: Path) -> None:
    """What the chart and a platform team provide: runner ServiceAccount and Role, store Secret,
    the checkpoint claim bound to a hostPath PV."""
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(ns, {"metadata": {"name": RUNNER_SA}})
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": RUNNER_SA},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "verbs": ["get", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": RUNNER_SA},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": RUNNER_SA,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": RUNNER_SA, "namespace": ns}
            ],
        },
    )
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "wanops-store"},
            "stringData": {
                contract.ACCESS_KEY_ENV: cluster.s3_access_key,
                contract.SECRET_KEY_ENV: cluster.s3_secret_key,
            },
        },
    )
    core.create_persistent_volume(
        {
            "metadata": {"name": f"{ns}-models"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": str(claim_dir)},
                "claimRef": {"namespace": ns, "name": CLAIM},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": f"{ns}-models",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )


@pytest.fixture(scope="module")
def space(cluster, kube, crd, s3, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """(namespace, bucket, claim dir) shared by the module: runner account, store Secret, the
    three tiny checkpoints on a hostPath PV."""
    if not cluster.runs_pods:
        pytest.skip("no node agent: runner pods would never run")
    from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

    claim = tmp_path_factory.mktemp("claim")
    for task, folder in CKPT.items():
        write_tiny_checkpoint(task, claim / folder)
    core = client.CoreV1Api(kube)
    ns = f"t-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(
        lambda: (
            core.list_namespaced_service_account(
                ns, field_selector="metadata.name=default"
            ).items
        ),
        what=f"{ns}/default ServiceAccount",
    )
    _setup_namespace(kube, cluster, ns, claim)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(bucket)
    yield ns, bucket, claim
    core.delete_namespace(ns, propagation_policy="Background")
    core.delete_persistent_volume(f"{ns}-models")
    for obj in s3.list_objects(bucket, recursive=True):
        s3.remove_object(bucket, obj.object_name)
    s3.remove_bucket(bucket)


@pytest.fixture(scope="module")
def operator(cluster, space, tmp_path_factory) -> Iterator[Path]:
    ns, bucket, _ = space
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": str(ROOT),
        "WANOPS_NAMESPACES": ns,
        "WANOPS_STORE_ENDPOINT": cluster.s3_endpoint,
        "WANOPS_STORE_BUCKET": bucket,
        "WANOPS_RESYNC_SECONDS": "3",
        "WANOPS_METRICS_PORT": str(_free_port()),
        "WANOPS_LIVENESS_ENDPOINT": f"http://127.0.0.1:{_free_port()}/healthz",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wanops_operator"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield log
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


class Watched:
    """One VideoGeneration, created and watched: every status version the API server sent."""

    def __init__(self, kube, ns: str, spec: dict[str, Any], operator_log: Path) -> None:
        self.custom = client.CustomObjectsApi(kube)
        self.ns, self.operator_log = ns, operator_log
        self.name = f"vg-{uuid.uuid4().hex[:6]}"
        self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "VideoGeneration",
                "metadata": {"name": self.name},
                "spec": spec,
            },
        )
        self.progress: list[
            dict[str, Any]
        ] = []  # distinct status.progress values, in order
        self.status: dict[str, Any] = {}
        self.t0 = time.monotonic()

    def get(self) -> dict[str, Any]:
        vg = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, self.name
        )
        return vg.get("status") or {}

    def until(self, done, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Watch until done(status) (or a terminal phase), recording each new progress."""
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = watch.Watch()
            for event in w.stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.ns,
                PLURAL,
                field_selector=f"metadata.name={self.name}",
                timeout_seconds=max(1, min(30, int(deadline - time.monotonic()))),
            ):
                self.status = event["object"].get("status") or {}
                progress = self.status.get("progress")
                if progress and (not self.progress or self.progress[-1] != progress):
                    self.progress.append(progress)
                if done(self.status) or self.status.get("phase") in (
                    "Succeeded",
                    "Failed",
                ):
                    w.stop()
                    return self.status
        return self.status

    def finish(self) -> dict[str, Any]:
        status = self.until(lambda s: False)
        self.seconds = time.monotonic() - self.t0
        return status

    def explain(self) -> str:
        tail = "\n".join(
            self.operator_log.read_text(errors="replace").splitlines()[-30:]
        )
        return f"{self.status}\n--- progress: {self.progress}\n--- operator:\n{tail}"


def _spec(task: str, **extra: Any) -> dict[str, Any]:
    width, height = SIZE[task]
    return {
        "task": task,
        "size": f"{width}*{height}",
        "frames": 5,
        "prompt": "a red fox in the snow",
        "seed": 3,
        "checkpoint": {"claimName": CLAIM, "path": CKPT[task]},
        "sampling": {"steps": 2},
        **extra,
    }


def _pods(kube, ns: str, job: str) -> dict[str, dict[str, Any]]:
    """The pods of a Job by completion index."""
    pods = client.CoreV1Api(kube).list_namespaced_pod(
        ns, label_selector=f"batch.kubernetes.io/job-name={job}"
    )
    return {
        p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: {
            "name": p.metadata.name,
            "uid": p.metadata.uid,
            "hostname": p.spec.hostname,
        }
        for p in pods.items
    }


def _pod_log(cluster, ns: str, pod: dict[str, Any]) -> str:
    folder = (
        cluster.state_dir / "nodeagent" / "pods" / f"{ns}_{pod['name']}_{pod['uid']}"
    )
    return (folder / f"{contract.RUNNER_CONTAINER}.log").read_text(errors="replace")


def _ranks(log: str) -> set[int]:
    ranks = set()
    for line in log.splitlines():
        if line.startswith("{") and '"rank"' in line:
            try:
                rank = json.loads(line).get("rank")
            except ValueError:
                continue
            if rank is not None:
                ranks.add(rank)
    return ranks


def _processes(hostname_prefix: str, argv: list[str] | None = None) -> list[int]:
    """Host pids of pod processes (HOSTNAME in their environment), optionally by exact argv."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if not any(e.startswith(b"HOSTNAME=" + hostname_prefix.encode()) for e in env):
            continue
        if argv is None or cmd.rstrip("\0").split("\0")[1:] == argv[1:]:
            found.append(int(pid))
    return found


def _objects(s3, bucket: str, prefix: str = "") -> list[str]:
    return sorted(
        o.object_name for o in s3.list_objects(bucket, prefix=prefix, recursive=True)
    )


def _objects_of(s3, bucket: str, ns: str, name: str) -> list[str]:
    """Everything a resource left in the (shared) bucket: its outputs and any work objects."""
    return [
        n
        for n in _objects(s3, bucket, ns)
        if n.startswith((f"{ns}/{name}.", f"{ns}/.wanops/{name}-"))
    ]


def _check_published(
    s3, bucket: str, status: dict[str, Any], size: tuple[int, int], tmp: Path
):
    from runner.encode import probe

    out = status["output"]
    key = out["uri"].removeprefix(f"s3://{bucket}/")
    path = tmp / "video.mp4"
    s3.fget_object(bucket, key, str(path))
    assert probe(path) == (5, *size)
    assert out["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert out["bytes"] == path.stat().st_size
    meta = {k.lower(): v for k, v in s3.stat_object(bucket, key).metadata.items()}
    assert meta["x-amz-meta-sha256"] == out["sha256"]
    assert status["progress"]["percent"] == 100
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True"
    return key


def _events(kube, ns: str, name: str) -> list[Any]:
    return (
        client.CoreV1Api(kube)
        .list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
        .items
    )


# ---- the whole path, per task ---------------------------------------------------------------


@pytest.mark.parametrize("task", ["t2v-A14B", "i2v-A14B", "ti2v-5B"])
def test_each_task_runs_in_two_pods_of_two_processes(
    task, cluster, kube, s3, space, operator, rendezvous_port, tmp_path
) -> None:
    ns, bucket, _ = space
    extra: dict[str, Any] = {"gpus": 4, "gpusPerPod": 2}
    if task == "i2v-A14B":
        from PIL import Image

        image = tmp_path / "input.png"
        Image.new("RGB", SIZE[task], (200, 90, 40)).save(image)
        s3.fput_object(bucket, f"inputs/{task}.png", str(image))
        extra["inputImage"] = f"s3://{bucket}/inputs/{task}.png"
    vg = Watched(kube, ns, _spec(task, **extra), operator)
    status = vg.finish()
    print(f"{task}: {vg.seconds:.0f} s, progress seen: {vg.progress}")
    assert status.get("phase") == "Succeeded", vg.explain()
    key = _check_published(s3, bucket, status, OUT_SIZE[task], tmp_path)
    assert key == f"{ns}/{vg.name}.mp4" and status["attempt"] == 0

    # progress on the way: loading, denoising steps, decode/encode/upload, never backwards
    stages = [p.get("stage") for p in vg.progress]
    assert "Denoising" in stages and {"Decoding", "Uploading"} & set(stages), (
        vg.progress
    )
    percents = [p["percent"] for p in vg.progress]
    assert percents == sorted(percents) and len(vg.progress) >= 4, vg.progress

    # 2 pods × 2 processes: the Job's shape, and every rank logged in its pod
    job = client.BatchV1Api(kube).read_namespaced_job(status["jobName"], ns)
    assert job.spec.completions == 2
    pods = _pods(kube, ns, status["jobName"])
    assert sorted(pods) == ["0", "1"]
    if cluster.node_agent:
        assert _ranks(_pod_log(cluster, ns, pods["0"])) == {0, 1}
        assert _ranks(_pod_log(cluster, ns, pods["1"])) == {2, 3}
    assert _objects(s3, bucket, f"{ns}/{vg.name}") == [f"{ns}/{vg.name}.log", key]
    assert not _objects(s3, bucket, f"{ns}/.wanops/{vg.name}-")  # work objects cleared


# ---- fault paths through the operator -------------------------------------------------------


def test_killed_runner_is_retried_and_publishes_exactly_once(
    cluster, kube, s3, space, operator, rendezvous_port, tmp_path
) -> None:
    """SIGKILL of pod 0's runner (the process the container runs, as the OOM killer would) while
    the run is under way: the attempt fails, attempt 1 runs whole and publishes one video."""
    if not cluster.node_agent:
        pytest.skip("finds the runner's process on this machine")
    ns, bucket, _ = space
    vg = Watched(kube, ns, _spec("ti2v-5B", gpus=2, gpusPerPod=1), operator)
    status = vg.until(
        lambda s: (s.get("progress") or {}).get("stage") in ("Loading", "Denoising")
    )
    assert status.get("phase") not in ("Succeeded", "Failed"), vg.explain()
    job = status.get("jobName") or f"{vg.name}-a0"
    assert job.endswith("-a0")
    victims = wait_for(
        lambda: _processes(f"{job}-0", ["python", "-m", "runner"]),
        what="pod 0's runner process",
    )
    os.kill(victims[0], signal.SIGKILL)
    key = f"{ns}/{vg.name}.mp4"
    assert key not in _objects_of(s3, bucket, ns, vg.name), (
        "published before the kill: too late"
    )
    # the container's PID namespace takes torchrun and its workers with it
    wait_for(
        lambda: not _processes(f"{job}-"), timeout=120, what=f"no process of {job} left"
    )

    status = vg.finish()
    assert status.get("phase") == "Succeeded", vg.explain()
    assert status["attempt"] == 1 and status["jobName"] == f"{vg.name}-a1", vg.explain()
    _check_published(s3, bucket, status, SIZE["ti2v-5B"], tmp_path)
    # exactly one video, its log, and nothing else: no temporary upload, no work objects
    assert _objects_of(s3, bucket, ns, vg.name) == [f"{ns}/{vg.name}.log", key]
    reasons = [e.reason for e in _events(kube, ns, vg.name)]
    assert "Retrying" in reasons, reasons


def test_bad_image_url_fails_at_once_with_the_reason(kube, s3, space, operator) -> None:
    ns, bucket, _ = space
    missing = f"s3://{bucket}/inputs/no-such-image.png"
    vg = Watched(
        kube, ns, _spec("i2v-A14B", gpus=4, gpusPerPod=2, inputImage=missing), operator
    )
    status = vg.finish()
    assert status.get("phase") == "Failed", vg.explain()
    failure = status["failure"]
    assert failure["reason"] == contract.IMAGE_NOT_READABLE, vg.explain()
    assert "no-such-image.png" in failure["message"] and failure["exitCode"] == (
        contract.EXIT_INVALID_INPUT
    )
    assert status["attempt"] == 0  # bad input is never retried
    jobs = client.BatchV1Api(kube).list_namespaced_job(
        ns, label_selector=f"wanops.io/videogeneration={vg.name}"
    )
    assert [j.metadata.name for j in jobs.items] == [f"{vg.name}-a0"]
    events = wait_for(
        lambda: [e for e in _events(kube, ns, vg.name) if e.type == "Warning"],
        what="a Warning Event",
    )
    assert any("no-such-image.png" in (e.message or "") for e in events), events
    assert vg.seconds < 180  # failed in the pods' checks, before any model was loaded
    # Bad input leaves nothing in the store, not even the log (the reason is in the status).
    assert _objects(s3, bucket, f"{ns}/{vg.name}") == []


def test_store_down_at_upload_is_retried_then_fails_cleanly(
    cluster, kube, s3, space, operator, rendezvous_port
) -> None:
    """The run reaches the store through an S3Gate that goes down at the MP4's upload: the runner
    retries it, the attempt fails StoreUnavailable, attempt 1 finds the store still down, and the
    resource ends Failed with nothing at the final key."""
    from localcluster.s3gate import S3Gate

    ns, bucket, _ = space
    with S3Gate(
        cluster.s3_endpoint, refuse_at=lambda method, path: "/upload-" in path
    ) as gate:
        output = {"bucket": bucket, "endpoint": gate.endpoint}
        vg = Watched(kube, ns, _spec("ti2v-5B", output=output, retryLimit=1), operator)
        status = vg.finish()
    assert status.get("phase") == "Failed", vg.explain()
    assert gate.refused and gate.dropped >= 4, (gate.refused, gate.dropped)
    assert status["failure"]["reason"] == "StoreUnavailable", vg.explain()
    assert status["attempt"] == 1, vg.explain()
    messages = " ".join(e.message or "" for e in _events(kube, ns, vg.name))
    assert "could not upload" in messages, (
        messages
    )  # attempt 0: the upload, after retries
    if cluster.node_agent:
        pod0 = _pods(kube, ns, f"{vg.name}-a0")["0"]
        assert "retry 4 in" in _pod_log(cluster, ns, pod0)
    key = f"{ns}/{vg.name}.mp4"
    names = _objects_of(s3, bucket, ns, vg.name)
    assert key not in names and not any("/upload-" in n for n in names), names

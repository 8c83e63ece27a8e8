"""The whole path on the local control plane: VideoGeneration → operator (subprocess) → Indexed
Job → node agent runs `python -m runner` in 2 pods that rendezvous by pod DNS → MP4 in S3 →
status Succeeded with the output, progress observed on the way."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from localcluster import wait_for
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parents[2]
CRD_FILE = ROOT / "crds" / f"{PLURAL}.{GROUP}.yaml"
CLAIM, CKPT_PATH, RUNNER_SA = "models", "Wan2.2-TI2V-5B", "wanops-runner"
TIMEOUT = 900  # two pods loading torch and sampling on a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _apply_crd(kube) -> None:
    ext = client.ApiextensionsV1Api(kube)
    body = yaml.safe_load(CRD_FILE.read_text())
    ext.patch_custom_resource_definition(
        body["metadata"]["name"],
        body,
        field_manager="wanops-tests",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def served() -> bool:
        try:
            client.CustomObjectsApi(kube).list_cluster_custom_object(
                GROUP, VERSION, PLURAL, limit=1
            )
            return True
        except client.exceptions.ApiException:
            return False

    wait_for(served, what="VideoGeneration API served")


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
                {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]}
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": RUNNER_SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RUNNER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": RUNNER_SA, "namespace": ns}],
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


@pytest.fixture
def operator(cluster, kube, namespace, bucket, tmp_path) -> Iterator[Path]:
    if not cluster.runs_pods:
        pytest.skip("no node agent: runner pods would never run")
    from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

    _apply_crd(kube)
    write_tiny_checkpoint("ti2v-5B", tmp_path / "claim" / CKPT_PATH)
    _setup_namespace(kube, cluster, namespace, tmp_path / "claim")
    log = tmp_path / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": str(ROOT),
        "WANOPS_NAMESPACES": namespace,
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


def test_videogeneration_becomes_an_mp4_in_the_store(
    kube, namespace, bucket, s3, operator, tmp_path
) -> None:
    custom = client.CustomObjectsApi(kube)
    name = f"fox-{uuid.uuid4().hex[:4]}"
    spec: dict[str, Any] = {
        "task": "ti2v-5B",
        "size": "1280*704",
        "frames": 5,
        "prompt": "a red fox in the snow",
        "seed": 3,
        "checkpoint": {"claimName": CLAIM, "path": CKPT_PATH},
        "sampling": {"steps": 3},
        "gpus": 2,
        "gpusPerPod": 1,  # two pods, one rank each: rendezvous through pod DNS
    }
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VideoGeneration",
            "metadata": {"name": name},
            "spec": spec,
        },
    )

    seen_steps: set[int] = set()
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get(
                "status"
            )
            or {}
        )
        if (step := (status.get("progress") or {}).get("step")) is not None:
            seen_steps.add(step)
        if status.get("phase") in ("Succeeded", "Failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    tail = "\n".join(operator.read_text(errors="replace").splitlines()[-30:])
    assert status.get("phase") == "Succeeded", f"{status}\n--- operator:\n{tail}"

    out = status["output"]
    key = out["uri"].removeprefix(f"s3://{bucket}/")
    path = tmp_path / "video.mp4"
    s3.fget_object(bucket, key, str(path))
    from runner.encode import probe

    assert probe(path) == (5, 1280, 704)
    assert (
        out["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        and out["bytes"] == path.stat().st_size
    )
    meta = {k.lower(): v for k, v in s3.stat_object(bucket, key).metadata.items()}
    assert meta["x-amz-meta-sha256"] == out["sha256"]
    assert status["progress"]["percent"] == 100
    assert seen_steps & {1, 2, 3}, f"no denoising progress observed: {seen_steps}"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True"

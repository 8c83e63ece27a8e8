"""The demo after the cluster is up: tiny checkpoint on a local "PVC", CRD, RBAC, store Secret,
operator, the sample VideoGeneration, progress until it ends, the MP4 downloaded to ./out/.

Run by scripts/demo.sh. Idempotent: a second run reuses the checkpoint and, if the sample already
succeeded, only downloads its video again (delete it with kubectl to generate anew).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster import LocalCluster, wait_for
from localcluster import s3 as s3mod
from localcluster.crds import apply_crd
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).with_name("demo-videogeneration.yaml")
CACHE = Path(os.environ.get("WANOPS_DEMO_DIR", Path.home() / ".cache" / "wanops" / "demo"))
BUCKET, RUNNER_SA, STORE_SECRET = "videos", "wanops-runner", "wanops-store"
TIMEOUT_S = 1800


def create(fn, *args) -> None:
    """Create, or keep what exists (a second demo run)."""
    try:
        fn(*args)
    except ApiException as e:
        if e.status != 409:
            raise


def setup(api: client.ApiClient, cluster: LocalCluster, sample: dict) -> None:
    ns, claim = sample["metadata"]["namespace"], sample["spec"]["checkpoint"]
    claim_dir = CACHE / "claim"
    ckpt = claim_dir / claim["path"]
    if not ckpt.is_dir():
        print(f"== writing a tiny {sample['spec']['task']} checkpoint to {ckpt}")
        from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

        write_tiny_checkpoint(sample["spec"]["task"], ckpt)

    print("== installing the CRD, RBAC, the store Secret and the checkpoint claim")
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    apply_crd(api, ROOT / "crds" / f"{PLURAL}.{GROUP}.yaml", field_manager="wanops-demo")
    create(core.create_namespace, {"metadata": {"name": ns}})
    wait_for(
        lambda: (
            core.list_namespaced_service_account(ns, field_selector="metadata.name=default").items
        ),
        what="the namespace's default ServiceAccount",
    )
    create(core.create_namespaced_service_account, ns, {"metadata": {"name": RUNNER_SA}})
    create(
        rbac.create_namespaced_role,
        ns,
        {
            "metadata": {"name": RUNNER_SA},
            "rules": [
                {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]}
            ],
        },
    )
    create(
        rbac.create_namespaced_role_binding,
        ns,
        {
            "metadata": {"name": RUNNER_SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RUNNER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": RUNNER_SA, "namespace": ns}],
        },
    )
    create(
        core.create_namespaced_secret,
        ns,
        {
            "metadata": {"name": STORE_SECRET},
            "stringData": {
                contract.ACCESS_KEY_ENV: cluster.s3_access_key,
                contract.SECRET_KEY_ENV: cluster.s3_secret_key,
            },
        },
    )
    pv = f"{ns}-{claim['claimName']}"
    create(
        core.create_persistent_volume,
        {
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "hostPath": {"path": str(claim_dir)},
                "claimRef": {"namespace": ns, "name": claim["claimName"]},
            },
        },
    )
    create(
        core.create_namespaced_persistent_volume_claim,
        ns,
        {
            "metadata": {"name": claim["claimName"]},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    store = s3mod.client(cluster.s3)
    if not store.bucket_exists(BUCKET):
        store.make_bucket(BUCKET)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_operator(cluster: LocalCluster, ns: str) -> subprocess.Popen[bytes]:
    log = CACHE / "operator.log"
    print(f"== starting the operator (log: {log})")
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PYTHONPATH": str(ROOT),
        "WANOPS_NAMESPACES": ns,
        "WANOPS_STORE_ENDPOINT": cluster.s3_endpoint,
        "WANOPS_STORE_BUCKET": BUCKET,
        "WANOPS_RESYNC_SECONDS": "5",
        "WANOPS_METRICS_PORT": str(free_port()),
        "WANOPS_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "wanops_operator"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def follow(custom: client.CustomObjectsApi, ns: str, name: str) -> dict:
    """Print phase and progress as they change until the resource ends; its final status."""
    last = None
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        status = (
            custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status")
            or {}
        )
        p = status.get("progress") or {}
        line = (
            f"   {status.get('phase', 'Pending'):<10} {p.get('stage', ''):<10} step {p.get('step', 0)}/"
            f"{p.get('totalSteps', '?')} {p.get('percent', 0)}%"
        )
        if line != last:
            print(line, flush=True)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            return status
        time.sleep(1)
    raise TimeoutError(f"{ns}/{name} did not finish in {TIMEOUT_S} s")


def main() -> int:
    cluster = LocalCluster.attach()
    if cluster is None:
        print(
            "demo: the local cluster is not running; start it with: python -m localcluster up",
            file=sys.stderr,
        )
        return 1
    sample = yaml.safe_load(SAMPLE.read_text())
    ns, name = sample["metadata"]["namespace"], sample["metadata"]["name"]
    CACHE.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    setup(api, cluster, sample)
    operator = start_operator(cluster, ns)
    try:
        custom = client.CustomObjectsApi(api)
        print(f"== applying {SAMPLE.relative_to(ROOT)} ({ns}/{name})")
        create(custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, sample)
        status = follow(custom, ns, name)
    finally:
        operator.terminate()
        operator.wait(30)
    if status["phase"] != "Succeeded":
        failure = status.get("failure") or {}
        print(
            f"demo: {name} failed: {failure.get('reason')}: {failure.get('message')}",
            file=sys.stderr,
        )
        return 1
    uri = status["output"]["uri"]
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    target = Path("out") / f"{name}.mp4"
    target.parent.mkdir(exist_ok=True)
    s3mod.client(cluster.s3).fget_object(bucket, key, str(target))
    print(
        f"== done: {uri} (sha256 {status['output']['sha256']}, {status['output']['bytes']} bytes)"
    )
    print(f"   downloaded to {target.resolve()}")
    print(
        '   again: python -c "from localcluster import LocalCluster, s3; '
        f"s3.client(LocalCluster.attach().s3).fget_object('{bucket}', '{key}', 'video.mp4')\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

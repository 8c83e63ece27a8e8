"""`helm install` of the chart into the real local control plane, with the operator's pod made by
the Deployment and ReplicaSet controllers and run by the node agent as `python -m wanops_operator`.

The node agent hands a pod no KUBECONFIG: the operator logs in with the projected token of the
chart's ServiceAccount, so a VideoGeneration reaching its terminal status proves the chart's RBAC is
enough, and `kubectl auth can-i` proves it is not more than intended.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from localcluster import tools, wait_for
from tests.charts.chart import CHART, KUBE_VERSION, ROOT, run_helm, set_args
from wanops_operator import reasons
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster
TIMEOUT = 120  # seconds, for a busy 2-core machine
RUN_TIMEOUT = 600  # a runner pod loading torch, sampling and decoding on that machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Release:
    """One installed release: its names and ports."""

    def __init__(self, name: str, namespace: str, served: str, probe: int, metrics: int) -> None:
        self.name, self.namespace, self.served = name, namespace, served
        self.probe_port, self.metrics_port = probe, metrics
        self.operator_sa = f"{name}-wanops"  # the chart's fullname for a release name without it


@contextmanager
def _installed(cluster, kube, served: str, **values: str) -> Iterator[Release]:
    """The chart installed in its own namespace, serving only `served` (the session's cluster is
    shared with other operators' tests); `values` add to or override the test defaults. Probe and
    metrics ports are free ones: pods share this machine's port space."""
    if not cluster.runs_pods:
        pytest.skip("no node agent: the operator's pod would never run")
    rel = Release(f"w{uuid.uuid4().hex[:6]}", f"wanops-{uuid.uuid4().hex[:6]}", served,
                  _free_port(), _free_port())
    values = {
        "operator.watchNamespaces": f"{{{served}}}",
        "operator.probePort": str(rel.probe_port),
        "operator.metricsPort": str(rel.metrics_port),
        "operator.resyncSeconds": "3",
        "store.endpoint": cluster.s3_endpoint,
        "store.bucket": "videos",
        **values,
    }
    env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin",
           "HOME": str(Path.home())}
    done = run_helm("install", rel.name, str(CHART), "--namespace", rel.namespace,
                    "--create-namespace", *set_args(values), env=env)
    assert "is installed" in done.stdout  # NOTES.txt rendered
    try:
        yield rel
    finally:
        run_helm("uninstall", rel.name, "--namespace", rel.namespace, env=env, check=False)
        client.CoreV1Api(kube).delete_namespace(rel.namespace, propagation_policy="Background")


@pytest.fixture
def release(cluster, kube, namespace: str) -> Iterator[Release]:
    """The chart with the test defaults, serving the test's namespace."""
    with _installed(cluster, kube, namespace) as rel:
        yield rel


def _can_i(cluster, account: str, verb: str, resource: str, namespace: str) -> bool:
    resource, _, subresource = resource.partition("/")
    done = subprocess.run(
        [str(tools.find("kubectl")), "--kubeconfig", str(cluster.kubeconfig), "auth", "can-i",
         verb, resource, f"--subresource={subresource}", "-n", namespace, f"--as={account}"],
        capture_output=True, text=True, check=False, timeout=60)
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


def _operator_pod(kube, rel: Release) -> dict | None:
    pods = client.CoreV1Api(kube).list_namespaced_pod(
        rel.namespace, label_selector=f"app.kubernetes.io/instance={rel.name},"
                                      "app.kubernetes.io/component=operator").items
    running = [p for p in pods if p.status.phase == "Running"]
    return client.ApiClient().sanitize_for_serialization(running[0]) if running else None


def _operator_log(cluster, pod: dict) -> str:
    """The tail of the operator container's log, from the node agent's pod folder."""
    meta = pod["metadata"]
    logs = list(Path(cluster.state_dir).glob(
        f"nodeagent/pods/{meta['namespace']}_{meta['name']}_{meta['uid']}/operator.log"))
    return "\n".join(logs[0].read_text(errors="replace").splitlines()[-40:]) if logs else "(no log)"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except OSError:
        return 0, ""


def _running_operator(cluster, kube, rel: Release) -> dict:
    """Wait for the operator pod the node agent runs and for kopf's probe endpoint (what the
    kubelet would probe); the pod."""
    pod = wait_for(lambda: _operator_pod(kube, rel), timeout=TIMEOUT,
                   what="the operator pod Running", interval=0.5)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{rel.probe_port}/healthz")[0] == 200,
                 timeout=TIMEOUT, what="kopf's /healthz")
    except TimeoutError:
        pytest.fail(f"no /healthz; operator log:\n{_operator_log(cluster, pod)}")
    return pod


def test_installed_operator_fails_a_resource_without_its_claim(cluster, kube, release: Release,
                                                                namespace: str) -> None:
    pod = _running_operator(cluster, kube, release)
    assert pod["spec"]["serviceAccountName"] == release.operator_sa
    assert pod["spec"]["containers"][0]["command"] == ["python", "-m", "wanops_operator"]
    assert "wanops_reconciles_total" in _get(f"http://127.0.0.1:{release.metrics_port}/metrics")[1]

    # An example resource whose checkpoint claim does not exist in this namespace.
    body = yaml.safe_load((ROOT / "examples" / "ti2v-5b.yaml").read_text())
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    name = body["metadata"]["name"]

    def failed() -> dict | None:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                     name).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = wait_for(failed, timeout=TIMEOUT, what=f"{name} Failed", interval=0.5)
    assert status["failure"]["reason"] == reasons.CHECKPOINT_NOT_FOUND
    assert "wan-models" in status["failure"]["message"]
    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items
    assert any(e.reason == reasons.CHECKPOINT_NOT_FOUND for e in events)


def test_rbac_grants_what_each_account_needs_and_no_more(cluster, release: Release,
                                                         namespace: str) -> None:
    operator = f"system:serviceaccount:{release.namespace}:{release.operator_sa}"
    runner = f"system:serviceaccount:{namespace}:wanops-runner"
    other = release.namespace  # a namespace the operator does not serve
    expected = [
        (operator, "watch", f"{PLURAL}.{GROUP}", other, True),  # cluster-wide watch
        (operator, "patch", f"{PLURAL}.{GROUP}/status", namespace, True),
        (operator, "create", "jobs.batch", namespace, True),
        (operator, "delete", "jobs.batch", namespace, True),
        (operator, "create", "events", namespace, True),
        (operator, "get", "secrets", namespace, True),
        (operator, "create", "jobs.batch", other, False),  # only where it serves
        (operator, "get", "secrets", other, False),
        (operator, "list", "secrets", namespace, False),
        (operator, "delete", f"{PLURAL}.{GROUP}", namespace, False),
        (operator, "create", "pods", namespace, False),
        (operator, "watch", "namespaces", other, True),  # kopf resolves watchNamespaces
        (operator, "get", "namespaces", other, False),
        (runner, "patch", f"{PLURAL}.{GROUP}/status", namespace, True),
        (runner, "get", f"{PLURAL}.{GROUP}/status", namespace, True),
        (runner, "patch", f"{PLURAL}.{GROUP}", namespace, False),  # never the spec
        (runner, "create", "jobs.batch", namespace, False),
        (runner, "get", "secrets", namespace, False),
        (runner, "get", "secrets", other, False),
        (runner, "patch", f"{PLURAL}.{GROUP}/status", other, False),
    ]
    wrong = [(who.rsplit(":", 1)[1], verb, resource, ns, allowed)
             for who, verb, resource, ns, allowed in expected
             if _can_i(cluster, who, verb, resource, ns) != allowed]
    assert wrong == []


@pytest.mark.parametrize("values", [
    {"demoStore.enabled": "true", "checkpoint.pvc.create": "true"},
    {"operator.replicas": "2"},
], ids=["demo-store-and-claim", "peering"])
def test_rendered_chart_passes_server_side_dry_run(cluster, release: Release, namespace: str,
                                                   values: dict[str, str]) -> None:
    """What `helm template` renders, with the options the install above leaves off, is accepted
    by the real API server (admission, schemas, the kopf peering CRDs the chart installed).
    Conflicts are forced: the runner's objects in `namespace` belong to the installed release."""
    manifest = run_helm("template", "dry", str(CHART), "--namespace", release.namespace,
                        "--kube-version", KUBE_VERSION,
                        *set_args({"runner.namespaces": f"{{{namespace}}}", **values})).stdout
    done = subprocess.run(
        [str(tools.find("kubectl")), "--kubeconfig", str(cluster.kubeconfig), "apply",
         "--server-side", "--force-conflicts", "--dry-run=server", "--field-manager=wanops-tests",
         "-f", "-"],
        input=manifest, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "deployment.apps/dry-wanops-operator serverside-applied (server dry run)" in done.stdout


def test_installed_chart_runs_the_ti2v_example_to_an_mp4(cluster, kube, s3, namespace: str,
                                                         bucket: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    """What a platform team does after `helm install` (README): the store Secret and a checkpoint
    volume for the chart's claim; then the shipped ti2v-5B example, with frames and steps lowered
    for a tiny checkpoint on a CPU, goes through the installed operator to an MP4 in the store.
    Everything the runner pod needs comes from the chart: its ServiceAccount and Role, the claim,
    the runner image and the store endpoint, bucket and Secret name in the operator's env."""
    from runner.encode import probe
    from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

    body = yaml.safe_load((ROOT / "examples" / "ti2v-5b.yaml").read_text())
    spec = body["spec"]
    claim, folder = spec["checkpoint"]["claimName"], spec["checkpoint"]["path"]
    write_tiny_checkpoint(spec["task"], tmp_path / "claim" / folder)
    core = client.CoreV1Api(kube)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "wanops-store"},
        "stringData": {contract.ACCESS_KEY_ENV: cluster.s3_access_key,
                       contract.SECRET_KEY_ENV: cluster.s3_secret_key}})
    pv = f"{namespace}-{claim}"
    core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
        "hostPath": {"path": str(tmp_path / "claim")},
        "claimRef": {"namespace": namespace, "name": claim}}})
    try:
        with _installed(cluster, kube, namespace, **{
            "store.bucket": bucket, "checkpoint.pvc.create": "true", "checkpoint.pvc.size": "1Gi",
        }) as rel:
            _running_operator(cluster, kube, rel)
            # The example as shipped, but 5 frames and 2 steps: a real VAE decode at the task's
            # only size (1280*704) is what a CPU can afford.
            spec["frames"] = 5
            spec["sampling"]["steps"] = 2
            request.getfixturevalue("rendezvous_port")  # the runner pod's torchrun takes its turn
            custom = client.CustomObjectsApi(kube)
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            name = body["metadata"]["name"]

            def ended() -> dict | None:
                status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                             name).get("status") or {}
                return status if status.get("phase") in ("Succeeded", "Failed") else None

            status = wait_for(ended, timeout=RUN_TIMEOUT, what=f"{name} finished", interval=1)
            assert status["phase"] == "Succeeded", status
            job = client.BatchV1Api(kube).read_namespaced_job(status["jobName"], namespace)
    finally:
        core.delete_persistent_volume(pv)

    pod = job.spec.template.spec
    assert pod.service_account_name == "wanops-runner"  # the chart's runner account
    assert pod.containers[0].image == "ghcr.io/wanops/runner:0.1.0"  # the chart's appVersion
    assert [v.persistent_volume_claim.claim_name for v in pod.volumes
            if v.persistent_volume_claim] == [claim]  # the claim the chart made
    out = status["output"]
    assert out["uri"] == f"s3://{bucket}/{namespace}/{name}.mp4" and status["attempt"] == 0
    video = tmp_path / "video.mp4"
    s3.fget_object(bucket, f"{namespace}/{name}.mp4", str(video))
    assert probe(video) == (5, 1280, 704)
    assert out["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert out["bytes"] == video.stat().st_size


def _refusal(kube, namespace: str, body: dict) -> str | None:
    """The API server's refusal of creating `body` (a server-side dry run: nothing is stored and
    the operator sees nothing), or None when it would be created."""
    try:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All")
    except client.ApiException as e:
        assert e.status == 403, e.body  # the policy's reason: Forbidden
        return e.body
    return None


def test_admission_policy_refuses_what_reaches_beyond_the_namespace(cluster, kube, release: Release,
                                                                    namespace: str) -> None:
    """The chart's ValidatingAdmissionPolicy in the real API server: each field that could reach
    beyond the namespace is refused with what to change, what the chart allows passes, and the
    policy's CEL type-checks against the installed CRD."""
    base = yaml.safe_load((ROOT / "examples" / "ti2v-5b.yaml").read_text())

    def variant(**spec: object) -> dict:
        body = yaml.safe_load(yaml.safe_dump(base))
        body["metadata"]["name"] = f"adm-{uuid.uuid4().hex[:8]}"
        body["spec"].update(spec)
        return body

    evil_image = variant(placement={"runnerImage": "evil.example/miner:1"})
    # The binding reaches the API server's policy cache a moment after the install.
    message = wait_for(lambda: _refusal(kube, namespace, evil_image), timeout=TIMEOUT,
                       what="the admission policy in force", interval=0.5)
    assert "spec.placement.runnerImage evil.example/miner:1 is not an image this cluster runs" in message
    assert "ghcr.io/wanops/runner:" in message and "admission.runnerImages" in message
    store = cluster.s3_endpoint
    refused = {
        "a look-alike repository": (variant(placement={"runnerImage": "ghcr.io/wanops/runner-x:1"}),
                                    "spec.placement.runnerImage ghcr.io/wanops/runner-x:1"),
        "a system priority class": (variant(placement={"priorityClassName": "system-node-critical"}),
                                    "system-* classes are kept for cluster components"),
        "another endpoint": (variant(output={"bucket": "videos", "endpoint": "https://attacker.example"}),
                             f"spec.output.endpoint https://attacker.example is not an object store this cluster uploads to; leave it unset for the chart's store, or use one of {store}"),
        "another bucket with the chart's credentials": (variant(inputImage="s3://payroll/scan.png"),
                                                        "spec.inputImage s3://payroll/scan.png is in a bucket"),
    }
    for what, (body, expected) in refused.items():
        message = _refusal(kube, namespace, body)
        assert message is not None and expected in message, (what, message)
    allowed = {
        "the chart's runner image, another tag": variant(placement={"runnerImage": "ghcr.io/wanops/runner:0.2.0"}),
        "a digest": variant(placement={"runnerImage": "ghcr.io/wanops/runner@sha256:" + "0" * 64}),
        "a workload priority class": variant(placement={"priorityClassName": "batch-high"}),
        "the chart's store, spelled with a slash": variant(output={"bucket": "videos", "endpoint": store + "/"}),
        "an image in the chart's bucket": variant(inputImage="s3://videos/in.png"),
        "another bucket with the resource's own credentials": variant(
            inputImage="s3://payroll/scan.png",
            output={"bucket": "mine", "credentialsSecretRef": {"name": "my-store"}}),
        "an https image": variant(inputImage="https://example.com/in.png"),
    }
    assert {what: _refusal(kube, namespace, body) for what, body in allowed.items()} == dict.fromkeys(allowed)

    policy_name = f"{release.operator_sa}-videogenerations"
    admission = client.AdmissionregistrationV1Api(kube)

    def checked() -> dict | None:
        policy = kube.sanitize_for_serialization(admission.read_validating_admission_policy(policy_name))
        status = policy.get("status") or {}
        return status if status.get("observedGeneration") == policy["metadata"]["generation"] else None

    status = wait_for(checked, timeout=TIMEOUT, what="the policy's type check", interval=0.5)
    assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status

"""Security: the pods we create run restricted, and no secret value leaks.

- The runner pods the operator renders and the operator pod of the chart run as non-root, without
  privilege escalation, with a read-only root filesystem, all capabilities dropped and the
  RuntimeDefault seccomp profile; GPUs come through the `nvidia.com/gpu` resource, not privilege.
  Checked field by field and by the real API server's Pod Security admission at level
  `restricted` (tests/charts/test_chart.py checks every pod of the chart field by field too).
- A canary secret (object-store keys and a DashScope key) used by a VideoGeneration that runs to
  Succeeded on the real control plane appears in none of: the resource's spec and status, its
  Job, pods and ConfigMap, the namespace's events, the pods' log files, the operator's log and its
  /metrics; nor in what the real runner prints when the store refuses those keys.
"""

from __future__ import annotations

import copy
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.reliability.bad_input_cases import CANARY, HOSTILE_PROMPT
from tests.reliability.operator_proc import (
    SPEC,
    Operator,
    VGs,
    operator_namespace,
)
from tests.runner.runner_cases import SPEC as RUNNER_SPEC
from tests.runner.runner_cases import Run
from wanops_operator.config import OperatorConfig
from wanops_operator.render import render
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _runner_pods() -> list[tuple[str, dict[str, Any]]]:
    """The pod template of the Job rendered for each example (every task and layout we ship)."""
    out = []
    for path in EXAMPLES:
        example = yaml.safe_load(path.read_text())
        vg = {
            **example,
            "metadata": {**example["metadata"], "namespace": "team", "uid": "u-1", "generation": 1},
        }
        job = render(vg, config=OperatorConfig(store_bucket="videos"))[-1]
        out.append((f"runner of {path.name}", job["spec"]["template"]["spec"]))
    return out


def _operator_pod() -> tuple[str, dict[str, Any]]:
    from tests.charts.chart import find
    from tests.charts.chart import render as helm_render

    (deployment,) = find(helm_render(), "Deployment")
    return "the chart's operator", deployment["spec"]["template"]["spec"]


def _restriction_problems(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from running restricted, read-only-root (empty: nothing)."""
    problems = []
    pod_sc = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("shares a host namespace")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']} is a hostPath")
    writable_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (
            sc.get("capabilities") or {}
        ).get("add"):
            problems.append(f"{name}: capabilities are not exactly drop ALL")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
        if seccomp != {"type": "RuntimeDefault"}:
            problems.append(f"{name}: seccompProfile is {seccomp}")
        for mount in c.get("volumeMounts", []):
            if not mount.get("readOnly") and mount["name"] not in writable_volumes:
                problems.append(f"{name}: {mount['mountPath']} is writable but not an emptyDir")
    return problems


def test_runner_and_operator_pods_are_restricted_with_a_read_only_root() -> None:
    pods = [*_runner_pods(), _operator_pod()]
    assert len(pods) == len(EXAMPLES) + 1
    problems = {what: p for what, pod in pods if (p := _restriction_problems(pod))}
    assert not problems
    for what, pod in pods[:-1]:  # the runner: scratch and caches in an emptyDir at /tmp
        (runner,) = pod["containers"]
        assert {"name": "HOME", "value": "/tmp"} in runner["env"], what
        assert any(m["mountPath"] == "/tmp" for m in runner["volumeMounts"]), what


@pytest.mark.cluster
def test_pod_security_admission_restricted_accepts_our_pods(kube, crd) -> None:
    """The API server's own `restricted` Pod Security level (enforce) admits both pods; the same
    runner pod with privilege escalation allowed is refused, so the check is not vacuous."""
    core = client.CoreV1Api(kube)
    ns = f"t-psa-{uuid.uuid4().hex[:6]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.create_namespace({"metadata": {"name": ns, "labels": labels}})
    try:

        def dry_run(pod: dict[str, Any]) -> None:
            spec = {**copy.deepcopy(pod), "serviceAccountName": "default"}
            spec.pop("subdomain", None)
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
            core.create_namespaced_pod(ns, body, dry_run="All")

        pods = [*_runner_pods(), _operator_pod()]
        for _, pod in pods:
            dry_run(pod)
        loose = copy.deepcopy(pods[0][1])
        loose["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        with pytest.raises(ApiException) as refused:
            dry_run(loose)
        assert refused.value.status == 403
        message = json.loads(refused.value.body)["message"]
        assert (
            'violates PodSecurity "restricted' in message and "allowPrivilegeEscalation" in message
        )
    finally:
        core.delete_namespace(ns)


# ---- the canary secret ---------------------------------------------------------------------------


@pytest.fixture
def canary_ns(kube, crd, tmp_path) -> Iterator[str]:
    yield from operator_namespace(kube, tmp_path)


def _dump(obj: Any) -> str:
    return json.dumps(client.ApiClient().sanitize_for_serialization(obj))


@pytest.mark.cluster
def test_canary_secret_appears_nowhere(kube, cluster, canary_ns: str, tmp_path) -> None:
    if not cluster.runs_pods:
        pytest.skip("no node agent: runner pods would never run")
    canary = f"canary-{uuid.uuid4().hex}"
    core = client.CoreV1Api(kube)
    values = {
        "canary-store": {
            contract.ACCESS_KEY_ENV: f"{canary}-access",
            contract.SECRET_KEY_ENV: f"{canary}-secret",
        },
        "canary-dash": {contract.DASHSCOPE_KEY_ENV: f"{canary}-dash"},
    }
    for name, data in values.items():
        core.create_namespaced_secret(canary_ns, {"metadata": {"name": name}, "stringData": data})
    op = Operator(cluster, canary_ns, tmp_path / "operator.log")
    op.start()
    vgs = VGs(kube, canary_ns)
    try:
        vgs.create(
            "canary",
            {
                **SPEC,
                "gpus": 1,
                "gpusPerPod": 1,
                "prompt": HOSTILE_PROMPT,
                "output": {"bucket": "videos", "credentialsSecretRef": {"name": "canary-store"}},
                "promptExtension": {
                    "method": "dashscope",
                    "apiKeySecretRef": {"name": "canary-dash", "key": contract.DASHSCOPE_KEY_ENV},
                },
            },
        )
        vgs.wait_phase("canary", "Succeeded", op)
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        op.stop()
    assert 'wanops_runs_finished_total{outcome="Succeeded"}' in metrics

    selector = "wanops.io/videogeneration=canary"
    (job,) = vgs.jobs("canary")
    envs = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert envs[contract.DASHSCOPE_KEY_ENV]["valueFrom"]["secretKeyRef"]["name"] == "canary-dash"
    pods = core.list_namespaced_pod(canary_ns, label_selector=selector).items
    assert pods and all(p.status.phase == "Succeeded" for p in pods)
    pod_dir = cluster.state_dir / "nodeagent" / "pods"
    pod_files = [f for f in pod_dir.glob(f"{canary_ns}_*/**/*") if f.is_file()]
    assert any(f.suffix == ".log" for f in pod_files)
    places = {
        "resource (spec, status, annotations)": json.dumps(vgs.get("canary")),
        "job": json.dumps(job),
        "pods": _dump(pods),
        "config maps": _dump(core.list_namespaced_config_map(canary_ns).items),
        "events": _dump(core.list_namespaced_event(canary_ns).items),
        "operator log": op.log.read_text(errors="replace"),
        "operator /metrics": metrics,
        **{f"pod file {f.relative_to(pod_dir)}": f.read_text(errors="replace") for f in pod_files},
    }
    leaks = [where for where, text in places.items() if canary in text]
    assert not leaks
    assert not CANARY.exists()


@pytest.mark.cluster
def test_refused_credentials_are_not_echoed_by_the_runner(
    kube, cluster, crd, namespace, bucket, tmp_path
) -> None:
    """The store refuses the keys: the runner's output, termination message and the resource
    name the Secret's keys, never their values."""
    canary = f"canary{uuid.uuid4().hex}"
    run = Run(kube, cluster, namespace, bucket, tmp_path, tmp_path, RUNNER_SPEC)
    run.termination.touch()
    code, out = run.run(
        timeout=120,
        **{
            contract.ACCESS_KEY_ENV: canary.upper()[:20],
            contract.SECRET_KEY_ENV: canary,
            "WANOPS_TERMINATION_MESSAGE_PATH": str(run.termination),
        },
    )
    message = run.termination.read_text()
    assert code == contract.EXIT_INVALID_INPUT, out[-3000:]
    assert message.startswith(f"{contract.SECRET_INVALID}: ") and contract.SECRET_KEY_ENV in message
    resource = run.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run.name)
    for where, text in (
        ("output", out),
        ("termination message", message),
        ("resource", json.dumps(resource)),
    ):
        assert canary not in text and canary.upper()[:20] not in text, where

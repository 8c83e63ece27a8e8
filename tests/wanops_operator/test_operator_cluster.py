"""The operator running as a subprocess (`python -m wanops_operator`) against the local control
plane: real API server, Job controller, garbage collector, scheduler and node agent.

Runner pods run `stand_in_runner.py` (the operator's `WANOPS_RUNNER_COMMAND`, a deployment knob),
which keeps the runner contract without the pipeline; see its docstring. Starting the operator and
preparing the namespace live in tests/reliability/operator_proc.py, shared with the fault tests.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import wait_for
from tests.reliability.operator_proc import (
    BUCKET,
    CLAIM,
    ROOT,
    RUNNER_SA,
    SPEC,
    TIMEOUT,
    Operator,
    VGs,
    operator_namespace,
)
from wanops_operator import reasons
from wanops_operator.config import OperatorConfig
from wanops_operator.reconcile import reconcile
from wanops_operator.render import (
    FIELD_MANAGER,
    KUEUE_QUEUE_LABEL,
    render,
    service_name,
)
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ns(kube, crd, tmp_path_factory) -> Iterator[str]:
    yield from operator_namespace(kube, tmp_path_factory.mktemp("claim"))


@pytest.fixture(scope="module")
def operator(cluster, ns, tmp_path_factory) -> Iterator[Operator]:
    if not cluster.runs_pods:
        pytest.skip("no node agent: runner pods would never run")
    op = Operator(cluster, ns, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    print(op.tail())


@pytest.fixture
def vgs(kube, ns) -> VGs:
    return VGs(kube, ns)


def test_rendered_objects_pass_server_side_dry_run(kube, ns, crd) -> None:
    """Every example and a multi-pod layout render into objects the API server accepts."""
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    specs = [
        yaml.safe_load(p.read_text())["spec"] for p in sorted((ROOT / "examples").glob("*.yaml"))
    ]
    specs.append(
        {
            **SPEC,
            "gpus": 16,
            "gpusPerPod": 8,
            "task": "t2v-A14B",
            "size": "1280*720",
            "checkpoint": {"claimName": CLAIM, "path": "Wan2.2-T2V-A14B"},
        }
    )
    for i, spec in enumerate(specs):
        vg = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VideoGeneration",
            "metadata": {
                "name": f"dry-{i}",
                "namespace": ns,
                "uid": str(uuid.uuid4()),
                "generation": 1,
            },
            "spec": spec,
        }
        for obj in render(vg, config=OperatorConfig(store_bucket=BUCKET)):
            patch = {
                "ConfigMap": core.patch_namespaced_config_map,
                "Service": core.patch_namespaced_service,
                "Job": batch.patch_namespaced_job,
            }[obj["kind"]]
            patch(
                obj["metadata"]["name"],
                ns,
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                dry_run="All",
                field_validation="Strict",
                _content_type="application/apply-patch+yaml",
            )


def test_runs_to_succeeded_with_ready_condition(vgs: VGs, operator: Operator) -> None:
    vg = vgs.create("ok")
    status = vgs.wait_phase("ok", "Succeeded", operator)

    conds = vgs.conditions("ok")
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == reasons.SUCCEEDED
    assert conds["Reconciling"]["status"] == "False" and conds["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == vg["metadata"]["generation"] for c in conds.values())
    assert status["observedGeneration"] == vg["metadata"]["generation"]
    # the runner's fields survive the operator's status writes
    assert status["output"]["uri"] == f"s3://{BUCKET}/{vgs.ns}/ok.mp4"
    assert status["progress"]["percent"] == 100
    assert status["jobName"] == "ok-a0" and status["attempt"] == 0
    assert status["startTime"] <= status["completionTime"]

    (job,) = vgs.jobs("ok")
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (2, 2, "Indexed")
    assert job["status"]["succeeded"] == 2
    assert job["metadata"]["ownerReferences"][0]["uid"] == vg["metadata"]["uid"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service_name("ok") and pod["serviceAccountName"] == RUNNER_SA
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    svc = vgs.core.read_namespaced_service(service_name("ok"), vgs.ns)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses
    meta = vgs.get("ok")["metadata"]
    assert not meta.get("finalizers")  # deletion never waits for the operator
    assert "wanops.io/last-handled-configuration" in meta["annotations"]  # kopf's records
    assert "kopf" not in status
    events = vgs.core.list_namespaced_event(vgs.ns, field_selector="involvedObject.name=ok").items
    assert {reasons.SUCCEEDED} <= {e.reason for e in events}


def test_invalid_input_fails_at_once_with_the_runners_reason(vgs: VGs, operator: Operator) -> None:
    vgs.create("bad-image", prompt="invalid-input")
    status = vgs.wait_phase("bad-image", "Failed", operator)

    failure = status["failure"]
    assert failure["reason"] == contract.IMAGE_NOT_READABLE
    assert failure["exitCode"] == contract.EXIT_INVALID_INPUT
    assert "no such object" in failure["message"]
    assert failure["pod"].startswith("bad-image-a0-")
    stalled = vgs.conditions("bad-image")["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", contract.IMAGE_NOT_READABLE)
    time.sleep(5)  # a resync or two: still one attempt
    assert [j["metadata"]["name"] for j in vgs.jobs("bad-image")] == ["bad-image-a0"]
    assert vgs.status("bad-image")["attempt"] == 0


def test_missing_claim_fails_before_any_job(vgs: VGs, operator: Operator) -> None:
    spec = {**SPEC, "checkpoint": {"claimName": "nowhere", "path": "x"}}
    vgs.create("no-claim", spec)
    status = vgs.wait_phase("no-claim", "Failed", operator, timeout=60)

    assert status["failure"]["reason"] == reasons.CHECKPOINT_NOT_FOUND
    assert "'nowhere'" in status["failure"]["message"]
    assert vgs.conditions("no-claim")["Stalled"]["reason"] == reasons.CHECKPOINT_NOT_FOUND
    assert vgs.jobs("no-claim") == []


def test_layout_that_cannot_fit_fails_before_any_job_naming_what_would(
    vgs: VGs, operator: Operator
) -> None:
    """spec.memory.gpuMemoryGiB 32: one A14B expert and its activations, and the expert kept
    through the decode (no offload), cannot fit; the planner names a layout that would."""
    spec = {
        **SPEC,
        "task": "t2v-A14B",
        "size": "1280*720",
        "gpus": 1,
        "gpusPerPod": None,
        "memory": {"offloadModel": False, "gpuMemoryGiB": 32},
    }
    vgs.create("too-big", spec)
    status = vgs.wait_phase("too-big", "Failed", operator, timeout=60)

    assert status["failure"]["reason"] == reasons.INSUFFICIENT_GPU_MEMORY
    message = status["failure"]["message"]
    assert "32 GiB GPUs" in message and "would fit: gpus=4, parallelism.ulysses=4, parallelism.ditFsdp=true" in message
    assert vgs.conditions("too-big")["Stalled"]["reason"] == reasons.INSUFFICIENT_GPU_MEMORY
    assert vgs.jobs("too-big") == []
    events = vgs.core.list_namespaced_event(
        vgs.ns, field_selector="involvedObject.name=too-big"
    ).items
    assert any(e.reason == reasons.INSUFFICIENT_GPU_MEMORY and e.type == "Warning" for e in events)


def test_chart_default_gpu_memory_applies_when_the_spec_sets_none(
    vgs: VGs, operator: Operator
) -> None:
    """fp32 weights, nothing offloaded, 401 frames: about 80 GiB, over the 76 GiB usable of the
    80 GiB default."""
    spec = {
        **SPEC,
        "task": "t2v-A14B",
        "size": "1280*720",
        "frames": 401,
        "gpus": 1,
        "gpusPerPod": None,
        "memory": {"offloadModel": False, "convertModelDtype": False},
    }
    vgs.create("fp32-whole", spec)
    status = vgs.wait_phase("fp32-whole", "Failed", operator, timeout=60)

    assert status["failure"]["reason"] == reasons.INSUFFICIENT_GPU_MEMORY
    assert "80 GiB GPUs" in status["failure"]["message"]
    assert "memory.convertModelDtype=true" in status["failure"]["message"]
    assert vgs.jobs("fp32-whole") == []


def test_infrastructure_failure_retries_with_a_fresh_attempt(vgs: VGs, operator: Operator) -> None:
    vgs.create("flaky", prompt="fail-first-attempt", gpus=1, gpusPerPod=None)
    status = vgs.wait_phase("flaky", "Succeeded", operator, timeout=2 * TIMEOUT)

    assert status["attempt"] == 1 and status["jobName"] == "flaky-a1"
    assert status["failure"]["exitCode"] == 1  # the last failure is kept
    assert sorted(j["metadata"]["name"] for j in vgs.jobs("flaky")) == ["flaky-a0", "flaky-a1"]


def test_suspend_then_resume(vgs: VGs, operator: Operator) -> None:
    vgs.create("paused", suspend=True)
    vgs.wait_phase("paused", "Suspended", operator, timeout=60)
    (job,) = vgs.jobs("paused")
    assert job["spec"]["suspend"] is True
    assert not vgs.core.list_namespaced_pod(
        vgs.ns, label_selector="wanops.io/videogeneration=paused"
    ).items

    vgs.custom.patch_namespaced_custom_object(
        GROUP, VERSION, vgs.ns, PLURAL, "paused", {"spec": {"suspend": False}}
    )
    status = vgs.wait_phase("paused", "Succeeded", operator)
    assert status["observedGeneration"] == vgs.get("paused")["metadata"]["generation"] == 2
    assert [j["metadata"]["name"] for j in vgs.jobs("paused")] == ["paused-a0"]


def test_deleting_the_resource_collects_its_children(vgs: VGs, operator: Operator) -> None:
    vgs.create("gone", prompt="sleep:600")
    vgs.wait_phase("gone", "Running", operator)
    vgs.custom.delete_namespaced_custom_object(GROUP, VERSION, vgs.ns, PLURAL, "gone")

    def collected() -> bool:
        selector = "wanops.io/videogeneration=gone"
        return not (
            vgs.jobs("gone")
            or vgs.core.list_namespaced_pod(vgs.ns, label_selector=selector).items
            or vgs.core.list_namespaced_service(vgs.ns, label_selector=selector).items
            or vgs.core.list_namespaced_config_map(vgs.ns, label_selector=selector).items
        )

    wait_for(collected, timeout=TIMEOUT, what="garbage collection of Job, pods, Service, ConfigMap")


def test_killed_operator_restarts_without_duplicates(vgs: VGs, operator: Operator) -> None:
    vgs.create("steady", prompt="sleep:15", gpus=1, gpusPerPod=None)
    running = vgs.wait_phase("steady", "Running", operator)
    operator.kill()
    operator.start()
    time.sleep(8)  # resume handlers and a resync pass
    status = vgs.status("steady")
    assert status["phase"] in ("Running", "Succeeded")
    assert status["startTime"] == running["startTime"]
    status = vgs.wait_phase("steady", "Succeeded", operator)
    assert [j["metadata"]["name"] for j in vgs.jobs("steady")] == ["steady-a0"]
    assert status["attempt"] == 0


def test_kueue_decides_when_the_job_runs(vgs: VGs, operator: Operator) -> None:
    """Created suspended and Queued; when Kueue (here: another field manager) admits the Job the
    operator follows, and never suspends it again."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VideoGeneration",
        "metadata": {"name": "queued", "labels": {KUEUE_QUEUE_LABEL: "gpu-queue"}},
        "spec": {**SPEC, "gpus": 1, "gpusPerPod": 1},
    }
    vgs.custom.create_namespaced_custom_object(GROUP, VERSION, vgs.ns, PLURAL, body)
    status = vgs.wait_phase("queued", "Queued", operator, timeout=60)
    assert "gpu-queue" in vgs.conditions("queued")["Reconciling"]["message"]
    (job,) = vgs.jobs("queued")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert status["conditions"][0]["reason"] == reasons.QUEUED

    vgs.batch.patch_namespaced_job(
        "queued-a0", vgs.ns, {"spec": {"suspend": False}}, field_manager="kueue-admission"
    )
    vgs.wait_phase("queued", "Succeeded", operator)


def test_start_timeout_fails_with_the_cause_and_removes_the_job(
    vgs: VGs, operator: Operator
) -> None:
    vgs.create(
        "stuck",
        gpus=1,
        gpusPerPod=1,
        startTimeoutSeconds=5,
        placement={"nodeSelector": {"pool": "does-not-exist"}},
    )
    status = vgs.wait_phase("stuck", "Failed", operator, timeout=60)
    assert status["failure"]["reason"] == reasons.START_TIMEOUT
    assert "node" in status["failure"]["message"]  # the scheduler's message
    wait_for(lambda: not vgs.jobs("stuck"), timeout=60, what="the stuck Job to be deleted")


def test_missing_store_secret_names_what_to_create(vgs: VGs, operator: Operator) -> None:
    vgs.create("no-keys", output={"bucket": BUCKET, "credentialsSecretRef": {"name": "absent"}})
    status = vgs.wait_phase("no-keys", "Failed", operator, timeout=60)
    assert status["failure"]["reason"] == reasons.SECRET_NOT_FOUND
    assert "'absent'" in status["failure"]["message"]
    assert "spec.output.credentialsSecretRef" in status["failure"]["message"]
    assert vgs.jobs("no-keys") == []


def test_metrics_and_liveness_are_served(vgs: VGs, operator: Operator) -> None:
    vgs.create("counted", gpus=1, gpusPerPod=1)
    vgs.wait_phase("counted", "Succeeded", operator)

    def scrape() -> str | None:
        url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        return text if 'wanops_runs_finished_total{outcome="Succeeded"}' in text else None

    text = wait_for(scrape, timeout=30, what="the finished run in /metrics")
    assert 'wanops_videogenerations{phase="Succeeded"}' in text
    assert "wanops_job_creation_seconds_count" in text
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=10
    ) as r:
        assert r.status == 200 and "resync" in r.read().decode()


def test_repeated_passes_change_nothing(kube, vgs: VGs, operator: Operator) -> None:
    """Two more passes (as a second replica or a restarted operator would make) on a steady
    resource write nothing: same resourceVersions of the resource and all its children."""
    vgs.create("idle", suspend=True, gpus=1, gpusPerPod=1)
    vgs.wait_phase("idle", "Suspended", operator, timeout=60)
    time.sleep(2)  # let the Job's own status settle

    def versions() -> dict[str, str]:
        return {
            "vg": vgs.get("idle")["metadata"]["resourceVersion"],
            "job": vgs.batch.read_namespaced_job("idle-a0", vgs.ns).metadata.resource_version,
            "svc": vgs.core.read_namespaced_service("idle", vgs.ns).metadata.resource_version,
            "cm": vgs.core.read_namespaced_config_map("idle-a0", vgs.ns).metadata.resource_version,
        }

    before = versions()
    config = OperatorConfig.from_env(operator.env)
    assert reconcile(kube, vgs.ns, "idle", config=config) == "Suspended"
    assert reconcile(kube, vgs.ns, "idle", config=config) == "Suspended"
    assert versions() == before


def test_recreated_resource_of_the_same_name_gets_its_own_job(vgs: VGs, operator: Operator) -> None:
    """kubectl delete + apply: the new resource waits for the old Job and pods to be collected
    (same names), then runs; nothing of the old one is reused."""
    old = vgs.create("again", prompt="sleep:600", gpus=1, gpusPerPod=1)
    vgs.wait_phase("again", "Running", operator)
    vgs.custom.delete_namespaced_custom_object(GROUP, VERSION, vgs.ns, PLURAL, "again")
    wait_for(lambda: not _exists(vgs, "again"), what="the old resource to go")
    new = vgs.create("again", gpus=1, gpusPerPod=1)
    vgs.wait_phase("again", "Succeeded", operator)
    (job,) = vgs.jobs("again")
    owner = job["metadata"]["ownerReferences"][0]["uid"]
    assert owner == new["metadata"]["uid"] != old["metadata"]["uid"]


def _exists(vgs: VGs, name: str) -> bool:
    try:
        vgs.get(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True

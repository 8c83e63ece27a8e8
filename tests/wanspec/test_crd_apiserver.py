"""The generated CRD on a real API server: it installs, refuses bad objects at admission with a
message naming the field, applies defaults, keeps the spec immutable except `suspend`, and agrees
with wanspec.validate on every case and GPU layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from vg_cases import BASE, INVALID, spec  # tests/wanspec/vg_cases.py

from wanspec.spec import GROUP, MAX_NAME_LENGTH, PLURAL, VERSION
from wanspec.tasks import TASKS
from wanspec.validate import validate

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture
def vg(kube, crd, namespace):
    """Create/get/patch VideoGenerations in the test's namespace."""
    from kubernetes import client

    return _VG(client.CustomObjectsApi(kube), namespace)


class _VG:
    def __init__(self, api, namespace: str):
        self.api, self.ns = api, namespace

    def create(self, spec_: dict, name: str = "vg", dry_run: bool = False) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VideoGeneration",
            "metadata": {"name": name},
            "spec": spec_,
        }
        return self.api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            body,
            field_validation="Strict",
            **({"dry_run": "All"} if dry_run else {}),
        )

    def patch(self, name: str, patch: dict) -> dict:
        return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def patch_status(self, name: str, status: dict) -> dict:
        return self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.ns, PLURAL, name, {"status": status}
        )

    def refusal(self, spec_: dict, name: str = "vg") -> tuple[str, list[str]] | None:
        """(message, fields) of the API server's refusal of a dry-run create; None: accepted."""
        from kubernetes.client.rest import ApiException

        try:
            self.create(spec_, name=name, dry_run=True)
        except ApiException as e:
            assert e.status in (400, 422), e.body
            body = json.loads(e.body)
            fields = [c.get("field", "") for c in body.get("details", {}).get("causes", [])]
            return body["message"], fields
        return None


# (id, spec, field the server names, text in its message). Messages from CEL rules are ours;
# the others are the API server's own OpenAPI wording.
SERVER_REFUSES = [
    ("task enum", spec(task="s2v-14B"), "spec.task", 'Unsupported value: "s2v-14B"'),
    (
        "size not of the task",
        spec("ti2v-5B", size="1280*720"),
        "spec.size",
        "spec.size is not a size of spec.task",
    ),
    ("size enum", spec(size="1920*1080"), "spec.size", "Unsupported value"),
    ("frames not 4n+1", spec(frames=80), "spec.frames", "spec.frames must be of the form 4n+1"),
    ("frames absurd", spec(frames=100001), "spec.frames", "less than or equal to 1001"),
    (
        "i2v without image",
        spec("i2v-A14B", inputImage=None),
        "spec.inputImage",
        "spec.inputImage is required for i2v-A14B",
    ),
    (
        "t2v with image",
        spec(inputImage="https://example.org/a.png"),
        "spec.inputImage",
        "only accepted by i2v-A14B, ti2v-5B",
    ),
    (
        "image URL scheme",
        spec("i2v-A14B", inputImage="ftp://example.org/a.png"),
        "spec.inputImage",
        "should match",
    ),
    (
        "ulysses not dividing heads",
        spec(gpus=3, parallelism__ulysses=3),
        "spec.parallelism.ulysses",
        "must divide the task's attention heads",
    ),
    (
        "ulysses not dividing 5B heads",
        spec("ti2v-5B", gpus=5, parallelism__ulysses=5),
        "spec.parallelism.ulysses",
        "ti2v-5B: 24 heads",
    ),
    (
        "ulysses not dividing gpus",
        spec(gpus=8, parallelism__ulysses=5),
        "spec.parallelism.ulysses",
        "must equal spec.gpus",
    ),
    ("gpus without a layout", spec(gpus=3), "spec.gpus", "must divide the task's attention heads"),
    (
        "gpusPerPod not dividing gpus",
        spec(gpus=16, gpusPerPod=3),
        "spec.gpusPerPod",
        "spec.gpusPerPod must divide spec.gpus",
    ),
    ("steps zero", spec(sampling__steps=0), "spec.sampling.steps", "greater than or equal to 1"),
    ("prompt over the limit", spec(prompt="x" * 10_001), "spec.prompt", "10000"),
    ("empty prompt", spec(prompt=""), "spec.prompt", "at least 1"),
    (
        "two guide scales for 5B",
        spec("ti2v-5B", sampling__guideScale=[3.0, 4.0]),
        "spec.sampling.guideScale",
        "two values (low, high) only for the two-expert",
    ),
    (
        "dashscope without key",
        spec(promptExtension={"method": "dashscope"}),
        "spec.promptExtension.apiKeySecretRef",
        "required for method dashscope",
    ),
    (
        "t5Fsdp with t5Cpu",
        spec(gpus=2, parallelism__t5Fsdp=True, memory__t5Cpu=True),
        "spec.memory.t5Cpu",
        "cannot be combined",
    ),
    ("ditFsdp on one GPU", spec(parallelism__ditFsdp=True), "spec.parallelism.ditFsdp", "gpus > 1"),
    (
        "checkpoint path escapes",
        spec(checkpoint={"claimName": "m", "path": "a/../b"}),
        "spec.checkpoint.path",
        "must not contain `..`",
    ),
    (
        "GPU in resources",
        spec(placement={"resources": {"limits": {"nvidia.com/gpu": 8}}}),
        "spec.placement.resources.limits",
        "must not set nvidia.com/gpu",
    ),
    (
        "toleration Exists with value",
        spec(placement={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.placement.tolerations[0].value",
        "must be empty with operator Exists",
    ),
    ("unknown field", spec(promt="typo"), "", 'unknown field "spec.promt"'),
    ("missing checkpoint", spec(checkpoint=None), "spec.checkpoint", "Required value"),
]


@pytest.mark.parametrize(
    ("case", "value", "field", "text"), SERVER_REFUSES, ids=[c[0] for c in SERVER_REFUSES]
)
def test_server_refuses_with_a_message_naming_the_field(vg, case, value, field, text):
    refusal = vg.refusal(value)
    assert refusal is not None, f"{case}: accepted"
    message, fields = refusal
    assert text in message, message
    assert field in message, message
    assert validate(value), f"{case}: the server refuses what validate() accepts"


def test_server_refuses_a_name_too_long_for_derived_hostnames(vg):
    message, _ = vg.refusal(BASE["t2v-A14B"], name="a" * (MAX_NAME_LENGTH + 1))
    assert f"metadata.name must be at most {MAX_NAME_LENGTH} characters" in message
    assert vg.refusal(BASE["t2v-A14B"], name="a" * MAX_NAME_LENGTH) is None


def test_server_refuses_names_that_cannot_name_a_service(vg):
    message, _ = vg.refusal(BASE["t2v-A14B"], name="1-cats")
    assert "metadata.name must be a DNS label starting with a letter" in message


@pytest.mark.parametrize(("case", "value", "path", "text"), INVALID, ids=[c[0] for c in INVALID])
def test_server_refuses_everything_validate_refuses(vg, case, value, path, text):
    refusal = vg.refusal(value)
    assert refusal is not None, f"{case}: validate() refuses at {path} but the API server accepts"
    assert path.removeprefix("spec.").split(".")[0].split("[")[0] in refusal[0], refusal


def test_server_and_validate_agree_on_every_gpu_layout(vg):
    """CEL and Python implement the layout rule separately; they must agree everywhere."""
    disagreements = []
    for task in TASKS:
        for gpus in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 40, 48, 80):
            for par in (
                {},
                {"cfgParallel": True},
                {"cfgParallel": False},
                {"ulysses": gpus},
                {"ulysses": max(gpus // 2, 1)},
                {"ulysses": 8, "cfgParallel": True},
            ):
                for per_pod in (None, 4):
                    value = spec(
                        task,
                        gpus=gpus,
                        parallelism=par,
                        **({"gpusPerPod": per_pod} if per_pod else {}),
                    )
                    python_ok = not validate(value)
                    server_ok = vg.refusal(value) is None
                    if python_ok != server_ok:
                        disagreements.append((task, gpus, par, per_pod, python_ok, server_ok))
    assert not disagreements


@pytest.mark.parametrize("task", list(TASKS))
def test_valid_object_per_task_is_accepted_with_defaults(vg, task):
    created = vg.create(BASE[task], name=f"ok-{task.lower()}")
    s = created["spec"]
    assert (s["seed"], s["gpus"], s["suspend"], s["retryLimit"], s["startTimeoutSeconds"]) == (
        -1,
        1,
        False,
        2,
        1800,
    )
    assert s["sampling"] == {"solver": "unipc"}
    assert s["memory"] == {"t5Cpu": False}
    assert s["parallelism"] == {} and s["placement"] == {} and s["negativePrompt"] == ""
    assert created["metadata"]["generation"] == 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(vg, path):
    example = yaml.safe_load(path.read_text())
    assert validate(example["spec"], name=example["metadata"]["name"]) == []
    created = vg.create(example["spec"], name=example["metadata"]["name"])
    assert created["spec"]["task"] == example["spec"]["task"]


def test_spec_is_immutable_except_suspend(vg):
    from kubernetes.client.rest import ApiException

    vg.create(BASE["t2v-A14B"], name="fixed")
    for patch in (
        {"prompt": "dogs"},
        {"frames": 41},
        {"gpus": 2},
        {"sampling": {"steps": 10}},
        {"checkpoint": {"path": "elsewhere"}},
    ):
        with pytest.raises(ApiException) as err:
            vg.patch("fixed", {"spec": patch})
        field = next(iter(patch))
        assert err.value.status == 422
        assert (
            f"spec.{field} is immutable after creation; only spec.suspend may change"
            in err.value.body
        )
    suspended = vg.patch("fixed", {"spec": {"suspend": True}})
    assert suspended["spec"]["suspend"] is True and suspended["metadata"]["generation"] == 2
    assert vg.patch("fixed", {"spec": {"suspend": False}})["spec"]["suspend"] is False


def test_status_subresource_keeps_our_fields_and_kopf_state(vg):
    vg.create(BASE["ti2v-5B"], name="progress")
    status = {
        "phase": "Running",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Reconciling",
                "status": "True",
                "reason": "Running",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "progress": {"stage": "Denoising", "step": 3, "totalSteps": 50, "percent": 7},
        "kopf": {"progress": {"handler": {"started": "2026-01-01T00:00:00Z"}}},
    }
    got = vg.patch_status("progress", status)["status"]
    assert got["progress"]["step"] == 3 and got["conditions"][0]["type"] == "Reconciling"
    assert got["kopf"] == status["kopf"]  # not pruned (kopf#574)
    # With the status subresource, status changes through the main resource are ignored.
    assert vg.patch("progress", {"status": {"phase": "Failed"}})["status"]["phase"] == "Running"


def test_printer_columns(kube, vg):
    vg.create(BASE["t2v-A14B"], name="table")
    vg.patch_status(
        "table",
        {
            "phase": "Succeeded",
            "progress": {"percent": 100},
            "output": {"uri": "s3://videos/table.mp4"},
        },
    )
    # What `kubectl get vg` prints: the server renders the printer columns as a Table.
    method, url, headers, _, _ = kube.param_serialize(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{vg.ns}/{PLURAL}/table",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )
    response = kube.call_api(method, url, header_params=headers)
    table = json.loads(response.read())
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:7] == ["Name", "Task", "Size", "Phase", "Progress", "Age", "Output"]
    row = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert (row["Task"], row["Size"], row["Phase"], row["Progress"], row["Output"]) == (
        "t2v-A14B",
        "1280*720",
        "Succeeded",
        100,
        "s3://videos/table.mp4",
    )


def test_installed_crd_describes_every_property(crd):
    """What `kubectl explain videogeneration.spec...` shows comes from these descriptions."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = []

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if not sub.get("description") and f"{path}.{name}" != ".metadata":
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert not missing
    assert schema["properties"]["spec"]["properties"]["sampling"]["properties"]["steps"][
        "description"
    ].startswith("Denoising steps.")

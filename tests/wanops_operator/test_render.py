"""render(): golden manifests and table tests of every task and GPU layout; no cluster needed.

The golden file is reviewed output; regenerate with WANOPS_UPDATE_GOLDEN=1 after a deliberate
change and read the diff. The table tests check the rules independently of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from vg_builder import make_vg  # tests/wanops_operator/vg_builder.py

from wanops_operator.config import OperatorConfig
from wanops_operator.render import (
    ANNOTATION_OWNER,
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    LABEL_VIDEOGENERATION,
    fit,
    job_name,
    render,
    seed_for,
    service_name,
)
from wanspec import contract
from wanspec.spec import VideoGeneration
from wanspec.validate import InvalidSpec, parse

GOLDEN = Path(__file__).with_name("golden")
CONFIG = OperatorConfig(
    runner_image="registry.example/wanops-runner:1",
    store_endpoint="http://s3.store:9000",
    store_bucket="videos",
    store_prefix="out/",
)


def objects(vg: dict, **kwargs) -> dict[str, dict]:
    return {o["kind"]: o for o in render(vg, config=CONFIG, **kwargs)}


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(
    "case",
    [
        ("t2v-8gpu", make_vg("t2v-A14B", gpus=8, seed=42)),
        ("i2v-16gpu-2pods", make_vg("i2v-A14B", name="surf", gpus=16, gpusPerPod=8, seed=7)),
        ("ti2v-1gpu", make_vg("ti2v-5B", name="rain", seed=1)),
    ],
    ids=lambda c: c[0],
)
def test_golden(case) -> None:
    name, vg = case
    objs = render(vg, config=CONFIG)
    # config.json decoded, so a reviewer reads the runner's config field by field
    objs[0] = {**objs[0], "data": {k: json.loads(v) for k, v in objs[0]["data"].items()}}
    rendered = yaml.safe_dump_all(objs, sort_keys=True, allow_unicode=True)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("WANOPS_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(rendered)
    assert rendered == path.read_text()


LAYOUTS = [  # task, gpus, gpusPerPod, expected pods, expected per pod
    ("t2v-A14B", 1, None, 1, 1),
    ("t2v-A14B", 8, None, 1, 8),
    ("t2v-A14B", 16, 8, 2, 8),
    ("t2v-A14B", 40, None, 5, 8),
    ("t2v-A14B", 4, 1, 4, 1),
    ("i2v-A14B", 2, None, 1, 2),
    ("i2v-A14B", 20, 4, 5, 4),
    ("ti2v-5B", 1, None, 1, 1),
    ("ti2v-5B", 6, None, 1, 6),
    ("ti2v-5B", 24, 8, 3, 8),
]


@pytest.mark.parametrize(("task", "gpus", "per_pod", "pods", "want_per_pod"), LAYOUTS)
def test_layout_shapes_job_pods_and_torchrun(task, gpus, per_pod, pods, want_per_pod) -> None:
    extra = {"gpusPerPod": per_pod} if per_pod else {}
    out = objects(make_vg(task, gpus=gpus, **extra))
    job, svc = out["Job"], out["Service"]
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"]) == (pods, pods)
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(want_per_pod)
    env = env_of(job)
    assert env["PET_NNODES"]["value"] == str(pods)
    assert env["PET_NPROC_PER_NODE"]["value"] == str(want_per_pod)
    assert env["PET_MASTER_ADDR"]["value"] == f"cats-a0-0.{svc['metadata']['name']}"
    assert env["PET_MASTER_PORT"]["value"] == str(contract.MASTER_PORT)
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert pod["subdomain"] == svc["metadata"]["name"] == "cats"
    config = contract.RunnerConfig.model_validate_json(out["ConfigMap"]["data"]["config.json"])
    assert (config.resolved.pods, config.resolved.gpus_per_pod) == (pods, want_per_pod)


def test_job_fails_fast_and_leaves_retries_to_the_operator() -> None:
    spec = objects(make_vg())["Job"]["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    fail, ignore = spec["podFailurePolicy"]["rules"]
    assert fail == {
        "action": "FailJob",
        "onExitCodes": {
            "containerName": "runner",
            "operator": "In",
            "values": [contract.EXIT_INVALID_INPUT],
        },
    }
    assert ignore["action"] == "Ignore"
    assert ignore["onPodConditions"][0]["type"] == "DisruptionTarget"


def test_headless_service_publishes_not_ready_pods_of_this_resource() -> None:
    out = objects(make_vg())
    svc = out["Service"]["spec"]
    assert svc["clusterIP"] == "None" and svc["publishNotReadyAddresses"] is True
    pod_labels = out["Job"]["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= pod_labels.items()
    assert pod_labels[LABEL_ATTEMPT] == "0"


def test_every_object_is_owned_by_the_resource() -> None:
    vg = make_vg()
    for obj in render(vg, config=CONFIG):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == (
            "VideoGeneration",
            "cats",
            vg["metadata"]["uid"],
        )
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert obj["metadata"]["namespace"] == "team"
        assert obj["metadata"]["labels"][LABEL_VIDEOGENERATION] == "cats"
        assert obj["metadata"]["annotations"][ANNOTATION_OWNER] == "cats"


def test_pod_mounts_config_checkpoint_read_only_and_memory_shm() -> None:
    pod = objects(make_vg())["Job"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert volumes[mounts["/etc/wanops"]["name"]]["configMap"]["name"] == "cats-a0"
    claim = volumes[mounts["/checkpoints"]["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": "models", "readOnly": True} and mounts["/checkpoints"]["readOnly"]
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory"}
    container = pod["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"] == ["python", "-m", "runner"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["serviceAccountName"] == "wanops-runner"


def test_store_credentials_from_the_chart_secret_or_the_specs() -> None:
    env = env_of(objects(make_vg())["Job"])
    ref = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "wanops-store", "key": "AWS_ACCESS_KEY_ID"}
    own = make_vg(output={"bucket": "mine", "credentialsSecretRef": {"name": "my-keys"}})
    env = env_of(objects(own)["Job"])
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "my-keys"
    assert "DASH_API_KEY" not in env


def test_dashscope_key_comes_from_its_secret() -> None:
    vg = make_vg(
        promptExtension={"method": "dashscope", "apiKeySecretRef": {"name": "dash", "key": "k"}}
    )
    ref = env_of(objects(vg)["Job"])["DASH_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "dash", "key": "k"}


def test_runner_config_names_the_output_object_and_resource() -> None:
    out = objects(make_vg(seed=5))
    config = json.loads(out["ConfigMap"]["data"][contract.CONFIG_FILE])
    assert config["resource"] == {
        "namespace": "team",
        "name": "cats",
        "uid": "0b5e7a2c-0000-4000-8000-000000000001",
    }
    assert config["output"] == {
        "endpoint": "http://s3.store:9000",
        "region": "us-east-1",
        "bucket": "videos",
        "key": "out/team/cats.mp4",
        "log_key": "out/team/cats.log",
    }
    assert config["seed"] == 5 and config["attempt"] == 0 and config["job_name"] == "cats-a0"
    assert config["checkpoint_dir"] == "/checkpoints/Wan2.2-T2V-A14B"
    spec_output = make_vg(output={"bucket": "bkt", "prefix": "p/", "endpoint": "https://s3.x"})
    output = json.loads(objects(spec_output)["ConfigMap"]["data"]["config.json"])["output"]
    assert (output["endpoint"], output["bucket"], output["key"]) == (
        "https://s3.x",
        "bkt",
        "p/team/cats.mp4",
    )


def test_random_seed_is_fixed_per_resource_not_per_attempt() -> None:
    a0 = json.loads(objects(make_vg())["ConfigMap"]["data"]["config.json"])["seed"]
    a1 = json.loads(objects(make_vg(), attempt=1)["ConfigMap"]["data"]["config.json"])["seed"]
    other = json.loads(objects(make_vg(uid="other"))["ConfigMap"]["data"]["config.json"])["seed"]
    assert a0 == a1 != other
    assert 0 <= a0 < 2**32
    assert seed_for(parse(make_vg(seed=3)["spec"]), "u") == 3


def test_rendering_is_deterministic_and_attempts_get_their_own_job() -> None:
    vg = make_vg()
    assert render(vg, config=CONFIG) == render(vg, config=CONFIG)
    a1 = objects(vg, attempt=1)
    assert a1["Job"]["metadata"]["name"] == a1["ConfigMap"]["metadata"]["name"] == "cats-a1"
    assert a1["Service"]["metadata"]["name"] == "cats"  # shared: pod host names differ per attempt
    assert env_of(a1["Job"])["PET_MASTER_ADDR"]["value"] == "cats-a1-0.cats"


def test_parsed_model_renders_like_the_dict() -> None:
    vg = make_vg(gpus=8)
    assert render(VideoGeneration.model_validate(vg), config=CONFIG) == render(vg, config=CONFIG)


def test_suspend_is_mirrored_without_kueue() -> None:
    assert objects(make_vg(suspend=True))["Job"]["spec"]["suspend"] is True
    assert objects(make_vg())["Job"]["spec"]["suspend"] is False
    live = {"spec": {"suspend": True}}
    assert objects(make_vg(), existing_job=live)["Job"]["spec"]["suspend"] is False


def test_kueue_job_is_created_suspended_and_then_left_to_kueue() -> None:
    vg = make_vg(labels={KUEUE_QUEUE_LABEL: "gpu-queue"})
    out = objects(vg)
    assert out["Job"]["spec"]["suspend"] is True
    assert out["Job"]["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"
    assert KUEUE_QUEUE_LABEL not in out["Service"]["metadata"]["labels"]
    admitted = {"spec": {"suspend": False}}
    assert objects(vg, existing_job=admitted)["Job"]["spec"]["suspend"] is False


def test_deadlines_and_ttl_pass_through_only_when_set() -> None:
    spec = objects(make_vg())["Job"]["spec"]
    assert "activeDeadlineSeconds" not in spec and "ttlSecondsAfterFinished" not in spec
    spec = objects(make_vg(activeDeadlineSeconds=3600, ttlSecondsAfterFinished=60))["Job"]["spec"]
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (3600, 60)


def test_placement_is_copied_into_the_pod() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ]
            }
        }
    }
    vg = make_vg(
        placement={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "affinity": affinity,
            "priorityClassName": "batch-high",
            "runnerImage": "mine/runner:2",
            "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "80Gi"}},
        }
    )
    pod = objects(vg)["Job"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        *NODE_LOST_TOLERATIONS,
    ]
    assert pod["affinity"] == affinity and pod["priorityClassName"] == "batch-high"
    container = pod["containers"][0]
    assert container["image"] == "mine/runner:2"
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"memory": "80Gi", "nvidia.com/gpu": "1"},
    }
    plain = objects(make_vg())["Job"]["spec"]["template"]["spec"]
    assert plain["containers"][0]["image"] == CONFIG.runner_image
    assert not {"nodeSelector", "affinity", "priorityClassName"} & plain.keys()
    assert plain["tolerations"] == NODE_LOST_TOLERATIONS


NODE_LOST_TOLERATIONS = [
    {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
]


def test_pods_leave_a_lost_node_after_the_configured_time_unless_the_spec_says_otherwise() -> None:
    """Kubernetes' default 300 s on a NotReady/unreachable node becomes node_lost_seconds; a
    toleration of the spec for the same taint is kept as the user wrote it."""
    config = OperatorConfig.from_env({"WANOPS_NODE_LOST_SECONDS": "15"})
    job = next(o for o in render(make_vg(), config=config) if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    assert [t["tolerationSeconds"] for t in pod["tolerations"]] == [15, 15]
    mine = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}
    pod = objects(make_vg(placement={"tolerations": [mine]}))["Job"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [mine, NODE_LOST_TOLERATIONS[0]]


def test_compile_cache_claim_is_mounted_writable_and_named_to_the_runner() -> None:
    pod = objects(make_vg())["Job"]["spec"]["template"]["spec"]
    assert not any(m["mountPath"] == contract.COMPILE_CACHE_DIR for m in pod["containers"][0]["volumeMounts"])
    assert contract.COMPILE_CACHE_ENV not in {e["name"] for e in pod["containers"][0]["env"]}

    config = OperatorConfig.from_env({"WANOPS_COMPILE_CACHE_CLAIM": "wan-compile-cache"})
    job = {o["kind"]: o for o in render(make_vg(), config=config)}["Job"]
    pod = job["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == contract.COMPILE_CACHE_DIR)
    assert volumes[mount["name"]]["persistentVolumeClaim"] == {"claimName": "wan-compile-cache"}
    assert not mount.get("readOnly")
    assert env_of(job)[contract.COMPILE_CACHE_ENV]["value"] == contract.COMPILE_CACHE_DIR


def test_runner_command_is_a_deployment_setting() -> None:
    config = OperatorConfig.from_env(
        {
            "WANOPS_RUNNER_COMMAND": "python3 -X dev -m runner",
            "WANOPS_NAMESPACES": "a, b",
            "WANOPS_METRICS_PORT": "0",
        }
    )
    assert config.runner_command == ("python3", "-X", "dev", "-m", "runner")
    assert config.namespaces == ("a", "b") and config.metrics_port == 0
    job = {o["kind"]: o for o in render(make_vg(), config=config)}["Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == list(
        config.runner_command
    )


@pytest.mark.parametrize("length", [1, 40, 53, 63, 120, 253])
def test_derived_names_fit_dns_labels(length: int) -> None:
    name = "v" * length
    for attempt in (0, 9):
        job = job_name(name, attempt)
        assert len(job) + len("-79") <= 63  # pod host name <job>-<index>
        assert job.endswith(f"-a{attempt}")
    assert len(service_name(name)) <= 63


def test_shortened_names_stay_distinct_and_stable() -> None:
    a, b = "x" * 70 + "a", "x" * 70 + "b"
    assert job_name(a, 0) != job_name(b, 0)
    assert job_name(a, 0) == job_name(a, 0)
    assert fit("short", "-a0") == "short-a0"
    assert fit("a.b", "") == "a-b"  # dots are not allowed in DNS labels


def test_invalid_spec_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="spec.frames"):
        render(make_vg(frames=80), config=CONFIG)

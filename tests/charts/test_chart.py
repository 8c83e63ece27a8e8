"""The Helm chart without a cluster: lint, schema, CRD drift, and what `helm template` renders
(least-privilege RBAC, restricted pods, every operator setting wired to its WANOPS_* variable)."""

from __future__ import annotations

import filecmp
import subprocess
from collections.abc import Mapping

import pytest
import yaml

from tests.charts.chart import (
    CHART,
    KUBE_VERSION,
    ROOT,
    find,
    render,
    run_helm,
    set_args,
)
from wanops_operator.config import OperatorConfig

DEMO = {"demoStore.enabled": "true", "runner.namespaces": "{team-a,team-b}"}
OPERATOR = "t-wanops-operator"


@pytest.mark.parametrize("values", [{}, DEMO, {"operator.replicas": "3"},
                                    {"operator.watchNamespaces": "{team-a}",
                                     "operator.replicas": "2"}],
                         ids=["defaults", "demo-store", "peering", "namespaced-peering"])
def test_helm_lint(values: dict[str, str]) -> None:
    done = run_helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
                    *set_args(values))
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(("values", "complaint"), [
    ({"operator.replicas": "two"}, "/operator/replicas"),
    ({"operator.replicas": "0"}, "/operator/replicas"),
    ({"operator.replica": "2"}, "'replica' not allowed"),
    ({"runner.namespaces": "{Team_A}"}, "/runner/namespaces"),
    ({"store.endpoint": "s3.example.com"}, "/store/endpoint"),
    ({"runner.compileCache.create": "true"}, "runner.compileCache.create needs runner.compileCache.claimName"),
    ({"admission.outputEndpoints": "{s3.example.com}"}, "/admission/outputEndpoints/0"),
    ({"admission.inputBuckets": "{Not_A_Bucket}"}, "/admission/inputBuckets/0"),
])
def test_schema_refuses_bad_values(values: dict[str, str], complaint: str) -> None:
    done = run_helm("template", "t", str(CHART), "--kube-version", KUBE_VERSION,
                    *set_args(values), check=False)
    assert done.returncode != 0
    assert complaint in done.stderr


def test_kube_version_below_1_30_is_refused() -> None:
    done = run_helm("template", "t", str(CHART), "--kube-version", "1.29.0", check=False)
    assert done.returncode != 0 and "kubeVersion" in done.stderr


def test_chart_crds_are_the_generated_ones() -> None:
    """Every generated CRD is in the chart, byte for byte; the chart adds only kopf's peering."""
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == sorted([*generated, "kopf-peerings.yaml"])
    for name in generated:
        assert filecmp.cmp(ROOT / "crds" / name, CHART / "crds" / name, shallow=False), (
            f"charts/wanops/crds/{name} is stale: run bash scripts/sync-chart-crds.sh")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "sync-chart-crds.sh"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _rules(objects: list[dict]) -> list[dict]:
    return [rule for o in objects if o["kind"] in ("ClusterRole", "Role") for rule in o["rules"]]


@pytest.mark.parametrize("values", [{}, DEMO, {"operator.watchNamespaces": "{team-a}",
                                               "operator.replicas": "2"}])
def test_rbac_has_no_wildcards(values: dict[str, str]) -> None:
    for rule in _rules(render(values)):
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule


def _grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_operator_cluster_role_is_exactly_what_the_operator_uses() -> None:
    """The list in wanops_operator/__init__.py, plus kopf's CRD watch; nothing else."""
    role = find(render(), "ClusterRole", OPERATOR)[0]
    assert _grants(role["rules"]) == {
        ("wanops.io", "videogenerations"): {"get", "list", "watch", "patch"},
        ("wanops.io", "videogenerations/status"): {"patch"},
        ("wanops.io", "videogenerations/finalizers"): {"update"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "configmaps"): {"get", "create", "patch"},
        ("", "services"): {"get", "create", "patch"},
        ("", "pods"): {"list"},
        ("", "persistentvolumeclaims"): {"get"},
        ("", "serviceaccounts"): {"get"},
        ("", "secrets"): {"get"},
        ("", "events"): {"create"},
    }


def test_watch_namespaces_move_namespaced_rights_into_roles() -> None:
    objects = render({"operator.watchNamespaces": "{team-a,team-b}"})
    cluster = _grants(find(objects, "ClusterRole", OPERATOR)[0]["rules"])
    assert ("batch", "jobs") not in cluster and ("", "secrets") not in cluster
    for ns in ("team-a", "team-b"):
        role = find(objects, "Role", OPERATOR, ns)
        assert role and ("batch", "jobs") in _grants(role[0]["rules"])
        binding = find(objects, "RoleBinding", OPERATOR, ns)[0]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "t-wanops",
                                        "namespace": "wanops-system"}]


def test_secret_names_restrict_secret_reads() -> None:
    role = find(render({"operator.rbac.secretNames": "{wanops-store}"}), "ClusterRole",
                OPERATOR)[0]
    (rule,) = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert rule["verbs"] == ["get"] and rule["resourceNames"] == ["wanops-store"]


def test_runner_role_only_reads_and_patches_status() -> None:
    objects = render({"runner.namespaces": "{team-a,team-b}"})
    for ns in ("team-a", "team-b"):
        (role,) = find(objects, "Role", "wanops-runner", ns)
        assert role["rules"] == [{"apiGroups": ["wanops.io"],
                                  "resources": ["videogenerations/status"],
                                  "verbs": ["get", "patch"]}]
        assert find(objects, "ServiceAccount", "wanops-runner", ns)
        assert find(objects, "RoleBinding", "wanops-runner", ns)[0]["subjects"][0]["namespace"] == ns


def test_runner_namespaces_default_to_the_watched_ones() -> None:
    objects = render({"operator.watchNamespaces": "{team-a}"})
    assert find(objects, "Role", "wanops-runner", "team-a")
    assert not find(render(), "Role", "wanops-runner")


@pytest.mark.parametrize("values", [{}, DEMO])
def test_every_pod_is_restricted(values: dict[str, str]) -> None:
    for obj in render(values):
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}


class _Recording(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def _env(deployment: Mapping) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_deployment_sets_every_variable_the_operator_reads() -> None:
    recording = _Recording()
    OperatorConfig.from_env(recording)
    env = _env(find(render(), "Deployment", OPERATOR)[0])
    assert set(env) == recording.asked


def test_deployment_env_parses_to_the_chosen_settings() -> None:
    objects = render({
        "operator.watchNamespaces": "{team-a,team-b}", "operator.replicas": "2",
        "operator.probePort": "9090", "operator.metricsPort": "9091",
        "operator.nodeLostSeconds": "30", "operator.peeringLifetime": "45",
        "store.endpoint": "https://s3.example.com", "store.bucket": "vids",
        "runner.command": "{sh,-c,exec python -m runner \"$0\" 'it''s'}", "runner.image.tag": "9.9",
    })
    deployment = find(objects, "Deployment", OPERATOR)[0]
    config = OperatorConfig.from_env(_env(deployment))
    assert config.namespaces == ("team-a", "team-b")
    assert config.peering == "wanops"
    assert config.liveness_endpoint == "http://0.0.0.0:9090/healthz"
    assert config.metrics_port == 9091
    assert (config.node_lost_seconds, config.peering_lifetime) == (30, 45)
    assert (config.store_endpoint, config.store_bucket) == ("https://s3.example.com", "vids")
    assert config.runner_command == ("sh", "-c", "exec python -m runner \"$0\" 'it''s'")
    assert config.runner_image == "ghcr.io/wanops/runner:9.9"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "probe": 9090, "metrics": 9091}
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {o["metadata"]["namespace"] for o in find(objects, "KopfPeering", "wanops")} == {
        "team-a", "team-b"}


def test_single_replica_is_standalone_and_never_overlaps() -> None:
    objects = render()
    deployment = find(objects, "Deployment", OPERATOR)[0]
    assert OperatorConfig.from_env(_env(deployment)).peering == ""
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not find(objects, "ClusterKopfPeering") and not find(objects, "KopfPeering")
    assert find(render({"operator.replicas": "2"}), "ClusterKopfPeering", "wanops")


def test_demo_store_is_off_by_default_and_complete_when_on() -> None:
    assert not [o for o in render() if "demo-store" in o["metadata"]["name"]]
    objects = render(DEMO)
    (server,) = find(objects, "Deployment", "t-wanops-demo-store")
    image = server["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("quay.io/minio/minio:RELEASE.") and "@sha256:" in image
    assert find(objects, "Service", "t-wanops-demo-store")
    assert find(objects, "Job")  # makes the bucket
    keys = {o["metadata"]["namespace"]: o["stringData"] for o in find(objects, "Secret",
                                                                       "wanops-store")}
    assert set(keys) == {"team-a", "team-b"}
    (root,) = find(objects, "Secret", "t-wanops-demo-store")
    for data in keys.values():  # one generated key everywhere
        assert data == {"AWS_ACCESS_KEY_ID": root["stringData"]["MINIO_ROOT_USER"],
                        "AWS_SECRET_ACCESS_KEY": root["stringData"]["MINIO_ROOT_PASSWORD"]}
    config = OperatorConfig.from_env(_env(find(objects, "Deployment", OPERATOR)[0]))
    assert config.store_endpoint == "http://t-wanops-demo-store.wanops-system.svc:9000"
    assert config.store_bucket == "videos"


def test_demo_store_without_namespaces_says_why() -> None:
    done = run_helm("template", "t", str(CHART), "--kube-version", KUBE_VERSION,
                    "--set", "demoStore.enabled=true", check=False)
    assert done.returncode != 0 and "runner.namespaces" in done.stderr


def test_service_monitor_is_optional_and_scrapes_the_metrics_service() -> None:
    assert not find(render(), "ServiceMonitor")
    objects = render({"metrics.serviceMonitor.enabled": "true"})
    (monitor,) = find(objects, "ServiceMonitor")
    (service,) = find(objects, "Service", "t-wanops-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_checkpoint_pvc_is_optional_and_kept_on_uninstall() -> None:
    assert not find(render({"runner.namespaces": "{team-a}"}), "PersistentVolumeClaim")
    (pvc,) = find(render({"runner.namespaces": "{team-a}", "checkpoint.pvc.create": "true"}),
                  "PersistentVolumeClaim", "wan-models", "team-a")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_compile_cache_claim_reaches_the_operator_and_is_made_where_asked() -> None:
    off = render({"runner.namespaces": "{team-a}"})
    assert OperatorConfig.from_env(_env(find(off, "Deployment", OPERATOR)[0])).compile_cache_claim == ""
    on = render({"runner.namespaces": "{team-a}", "runner.compileCache.claimName": "wan-compile",
                 "runner.compileCache.create": "true"})
    assert OperatorConfig.from_env(_env(find(on, "Deployment", OPERATOR)[0])).compile_cache_claim == "wan-compile"
    (pvc,) = find(on, "PersistentVolumeClaim", "wan-compile", "team-a")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "helm.sh/resource-policy" not in pvc["metadata"].get("annotations", {})  # a cache: goes with the release


def test_values_yaml_passes_its_own_schema() -> None:
    import json

    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


def _policy(values: dict[str, str] | None = None) -> tuple[dict, dict]:
    objects = render(values)
    (policy,) = find(objects, "ValidatingAdmissionPolicy")
    (binding,) = find(objects, "ValidatingAdmissionPolicyBinding")
    return policy, binding


def test_admission_policy_is_on_by_default_and_bound_to_the_served_namespaces() -> None:
    policy, binding = _policy()
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] == "t-wanops-videogenerations"
    assert binding["spec"]["validationActions"] == ["Deny"] and "matchResources" not in binding["spec"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["operations"] == ["CREATE"]  # immutable fields; the operator's patches never checked
    _, binding = _policy({"operator.watchNamespaces": "{team-a,team-b}"})
    (selector,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
    assert not find(render({"admission.enabled": "false"}), "ValidatingAdmissionPolicy")


def test_admission_policy_allows_the_chart_values_lists() -> None:
    """Each list reaches its rule: the chart's own image, store and bucket plus what the values add."""
    policy, _ = _policy({"store.endpoint": "https://s3.example", "store.bucket": "videos",
                         "admission.runnerImages": "{registry.example/wanops/}",
                         "admission.priorityClassNames": "{batch-high}",
                         "admission.outputEndpoints": "{https://other.example}",
                         "admission.inputBuckets": "{inputs}"})
    image, priority, endpoint, bucket = (v["expression"] for v in policy["spec"]["validations"])
    assert '["ghcr.io/wanops/runner:","ghcr.io/wanops/runner@","registry.example/wanops/"]' in image
    assert 'in ["batch-high"]' in priority and "system-" not in priority
    assert '["https://other.example","https://s3.example"]' in endpoint
    assert '["inputs","videos"]' in bucket
    policy, _ = _policy({"demoStore.enabled": "true", "runner.namespaces": "{team-a}"})
    _, _, endpoint, bucket = (v["expression"] for v in policy["spec"]["validations"])
    assert '["http://t-wanops-demo-store.wanops-system.svc:9000"]' in endpoint and '["videos"]' in bucket
    policy, _ = _policy()  # no store configured: an explicit endpoint has nothing to match
    assert "[].exists(" in policy["spec"]["validations"][2]["expression"]
    assert "none is allowed here, leave it unset" in policy["spec"]["validations"][2]["messageExpression"]

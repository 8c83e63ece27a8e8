"""GitOps: the Argo CD health check and kstatus read our status right; the Argo CD Application
and Flux HelmRelease in examples/gitops/ are well-formed and install the chart with valid values.

Statuses come from OUR code (gitops_scenarios.py drives wanops_operator.status and the runner's
StatusReporter), never written by hand. The Lua check runs in real Lua 5.1 (lupa), as Argo CD's
gopher-lua does. kstatus is ported below from sigs.k8s.io/cli-utils pkg/kstatus/status
(Compute → checkGenericProperties → checkGeneration; a kind without built-in rules is Current
when no generic rule decides), the library Helm 4 `--wait` and Flux use.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_scenarios import SCENARIOS, scenario  # tests/gitops/gitops_scenarios.py

from wanspec.spec import (
    CONDITION_TYPES,
    GROUP,
    KIND,
    READY,
    RECONCILING,
    STALLED,
    VideoGenerationStatus,
)

ROOT = Path(__file__).parents[2]
GITOPS = ROOT / "examples" / "gitops"
LUA = GITOPS / "argocd-health-videogeneration.lua"
CHART = ROOT / "charts" / "wanops"
NAMES = list(SCENARIOS)


# ---------------------------------------------------------------------------------- kstatus

def kstatus(obj: dict[str, Any]) -> tuple[str, str]:
    """kstatus Compute for a custom resource: (status, message)."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", f"generation is {generation}, latest observed is {observed}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == RECONCILING and cond.get("status") == "True":
            return "InProgress", cond.get("message", "")
        if cond.get("type") == STALLED and cond.get("status") == "True":
            return "Failed", cond.get("message", "")
    return "Current", "Resource is current"


@pytest.mark.parametrize("name", NAMES)
def test_kstatus_reads_each_state(name: str) -> None:
    s = scenario(name)
    assert (s.vg.get("status") or {}).get("phase") == s.phase
    result, message = kstatus(s.vg)
    assert result == s.kstatus, (result, message, s.vg.get("status"))
    if result == "Failed":  # Helm 4 / Flux print the Stalled message: it must say what to fix
        assert message == s.vg["status"]["failure"]["message"] or s.vg["status"]["failure"][
            "reason"] in message


@pytest.mark.parametrize("name", [n for n in NAMES if n != "created"])
def test_status_shape_follows_kstatus_conventions(name: str) -> None:
    """observedGeneration always written; Ready/Reconciling/Stalled each present once, True or
    False (abnormal-true: Reconciling and Stalled True only while abnormal), each condition
    stamped with the generation it was computed from; and the CRD's status model accepts it."""
    s = scenario(name)
    status = s.vg["status"]
    VideoGenerationStatus.model_validate(status)
    assert isinstance(status["observedGeneration"], int)
    conds = status["conditions"]
    assert sorted(c["type"] for c in conds) == sorted(CONDITION_TYPES)
    by_type = {c["type"]: c for c in conds}
    for c in conds:
        assert c["status"] in ("True", "False"), c
        assert c["observedGeneration"] == status["observedGeneration"], c
        assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", c["reason"]), c
        assert c["lastTransitionTime"].endswith("Z")
    true = [c["type"] for c in conds if c["status"] == "True"]
    assert len(true) <= 1, true
    phase = status["phase"]
    assert (by_type[RECONCILING]["status"] == "True") == (phase in ("Pending", "Queued", "Running"))
    assert (by_type[STALLED]["status"] == "True") == (phase == "Failed")
    assert (by_type[READY]["status"] == "True") == (phase == "Succeeded")
    if by_type[READY]["status"] == "True":  # Ready only once the video is there
        assert status["output"]["uri"].startswith("s3://")


def test_generation_is_observed_everywhere_once_the_operator_catches_up() -> None:
    """A spec edit makes kstatus InProgress until the operator writes the new generation (for a
    running resource the next pass does; for a finished one, the generation refresh)."""
    s = scenario("suspended")
    assert s.vg["metadata"]["generation"] == 2
    assert s.vg["status"]["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in s.vg["status"]["conditions"])


def test_only_suspended_is_current_without_ready() -> None:
    """kstatus ignores Ready for custom kinds: with neither Reconciling nor Stalled True a
    resource is Current. For us that is Succeeded (Ready=True) and Suspended (nothing will happen
    until spec.suspend changes, which is the spec fully realised). `kubectl wait
    --for=condition=Ready` is the way to wait for the video itself."""
    current_not_ready = [
        n for n in NAMES if n != "created" and scenario(n).kstatus == "Current"
        and not any(c["type"] == READY and c["status"] == "True"
                    for c in scenario(n).vg["status"]["conditions"])
    ]
    assert current_not_ready == ["suspended"]


# ------------------------------------------------------------------- Argo CD health (Lua)

def _lua_runtimes() -> list[str]:
    """Lua 5.1-semantics runtimes lupa ships (Argo CD's gopher-lua implements Lua 5.1). Without
    lupa: skipped locally, failed in CI (as the cluster tests are)."""
    import os

    try:
        import lupa
    except ModuleNotFoundError:
        reason = "lupa not installed (pip install -e '.[dev]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    found = []
    for module in ("lua51", "luajit21", "luajit20"):
        try:
            __import__(f"lupa.{module}")
            found.append(module)
        except ImportError:
            pass
    return found or [lupa.__name__]


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON → Lua as Argo CD hands `obj` to the script: objects and arrays become tables
    (arrays 1-based), numbers are float64 (gopher-lua's LNumber)."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            table[key] = _to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(lua, item)
        return table
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(type(value))


def argocd_health(obj: dict[str, Any], runtime: str = "lua51") -> dict[str, str]:
    """Run the health check as Argo CD does: `obj` global, the chunk returns `hs`."""
    import importlib

    module = importlib.import_module(runtime if runtime == "lupa" else f"lupa.{runtime}")
    lua = module.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
    # JSON round trip first: the API server's view, no Python-only types.
    lua.globals().obj = _to_lua(lua, json.loads(json.dumps(obj)))
    hs = lua.execute(LUA.read_text())
    assert hs is not None, "the health check returned nothing"
    out = {k: hs[k] for k in ("status", "message")}
    assert set(dict(hs.items())) <= {"status", "message"}, dict(hs.items())
    return out


@pytest.fixture(scope="module")
def runtimes() -> list[str]:
    return _lua_runtimes()


@pytest.mark.parametrize("name", NAMES)
def test_argocd_health_per_state(name: str, runtimes: list[str]) -> None:
    s = scenario(name)
    for runtime in runtimes:
        hs = argocd_health(s.vg, runtime)
        assert hs["status"] == s.argocd, (runtime, hs, s.vg.get("status"))
        assert isinstance(hs["message"], str) and hs["message"], hs
        status = s.vg.get("status") or {}
        if hs["status"] == "Degraded":  # what failed and why, from the Stalled condition
            stalled = next(c for c in status["conditions"] if c["type"] == STALLED)
            assert hs["message"] == f"{stalled['reason']}: {stalled['message']}"
        if hs["status"] == "Healthy":
            assert status["output"]["uri"] in hs["message"]
        if hs["status"] == "Suspended":
            assert "spec.suspend" in hs["message"]


def test_argocd_health_messages_for_people(runtimes: list[str]) -> None:
    runtime = runtimes[0]
    assert "generation 2" in argocd_health(scenario("succeeded-then-edited").vg, runtime)["message"]
    assert "gpu-queue" in argocd_health(scenario("queued").vg, runtime)["message"]
    running = argocd_health(scenario("running").vg, runtime)["message"]
    assert running.startswith("Running: 1 of 1 pod(s)") and running.endswith("%)"), running
    assert "(39%)" in running  # 20 of 50 steps: 5 + 85 * 20 // 50, from the runner's reporter
    assert "Retrying" in argocd_health(scenario("retrying").vg, runtime)["message"]
    timeout = argocd_health(scenario("failed-start-timeout").vg, runtime)["message"]
    assert timeout.startswith("StartTimeout: ") and "Insufficient nvidia.com/gpu" in timeout


def test_argocd_health_falls_back_on_phase_without_conditions(runtimes: list[str]) -> None:
    """A status from an older operator (or a hand edit) with a phase but no conditions."""
    base = {"apiVersion": f"{GROUP}/v1alpha1", "kind": KIND,
            "metadata": {"name": "x", "generation": 1}}
    for phase, health in [("Succeeded", "Healthy"), ("Failed", "Degraded"),
                          ("Suspended", "Suspended"), ("Running", "Progressing"),
                          ("Queued", "Progressing"), ("Pending", "Progressing")]:
        obj = {**base, "status": {"phase": phase, "observedGeneration": 1}}
        assert argocd_health(obj, runtimes[0])["status"] == health, phase


def test_health_check_is_lua51() -> None:
    """gopher-lua is Lua 5.1: no goto, integer division, bit operators or `//` in the script."""
    code = "\n".join(line.split("--", 1)[0] for line in LUA.read_text().splitlines())
    for construct in ("goto ", "//", "::", " & ", " | ", " ~ ", "<<", ">>"):
        assert construct not in code, construct
    assert "hs = {}" in code.replace("local hs = {}", "hs = {}")
    assert code.rstrip().endswith("return hs")


def test_argocd_cm_patch_registers_the_same_script() -> None:
    patch = yaml.safe_load((GITOPS / "argocd-cm-patch.yaml").read_text())
    assert (patch["apiVersion"], patch["kind"]) == ("v1", "ConfigMap")
    assert (patch["metadata"]["name"], patch["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    key = f"resource.customizations.health.{GROUP}_{KIND}"
    assert list(patch["data"]) == [key]
    assert patch["data"][key] == LUA.read_text()


# ------------------------------------------------------------- Application and HelmRelease

DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")  # Flux's metav1.Duration pattern


def _schema_check(values: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(values, schema)


def _render(values: dict[str, Any], tmp_path: Path, namespace: str) -> list[dict]:
    """`helm template --include-crds` with these values: what Argo CD applies, and what
    helm-controller installs."""
    from localcluster import tools

    try:
        helm = str(tools.find("helm"))
    except tools.ToolNotBuilt as e:
        pytest.skip(str(e))
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [helm, "template", "wanops", str(CHART), "--namespace", namespace, "--include-crds",
         "--kube-version", tools.versions()["KUBERNETES_VERSION"], "-f", str(values_file)],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _chart_path_ok(path: str) -> None:
    chart_dir = ROOT / path.removeprefix("./")
    assert chart_dir.resolve() == CHART.resolve(), path
    assert (chart_dir / "Chart.yaml").is_file()


def test_argocd_application(tmp_path: Path) -> None:
    app = yaml.safe_load((GITOPS / "argocd-application.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["name"] and app["metadata"]["namespace"] == "argocd"
    spec = app["spec"]
    assert spec["project"]
    source = spec["source"]
    assert re.match(r"^(https://|ssh://|git@)", source["repoURL"]), source["repoURL"]
    assert source["targetRevision"]
    _chart_path_ok(source["path"])
    helm = source["helm"]
    assert set(helm) <= {"releaseName", "valuesObject", "values", "valueFiles", "parameters",
                         "skipCrds", "passCredentials", "ignoreMissingValueFiles", "version",
                         "namespace", "kubeVersion", "apiVersions", "skipSchemaValidation",
                         "skipTests", "fileParameters"}
    assert not helm.get("skipCrds"), "the VideoGeneration CRD comes from the chart's crds/"
    values = helm["valuesObject"]
    _schema_check(values)
    dest = spec["destination"]
    assert ("server" in dest) != ("name" in dest) and dest["namespace"]
    sync = spec.get("syncPolicy", {})
    assert "CreateNamespace=true" in sync.get("syncOptions", [])
    # Argo CD renders with `helm template`: no `lookup`, so no value may lean on it.
    assert not values.get("demoStore", {}).get("enabled") or values["demoStore"].get("secretKey")
    objects = _render(values, tmp_path, dest["namespace"])
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("CustomResourceDefinition", f"videogenerations.{GROUP}") in kinds
    assert any(k == "Deployment" for k, _ in kinds)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == values["operator"]["replicas"]


def test_flux_gitrepository_and_helmrelease(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all((GITOPS / "flux-helmrelease.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"GitRepository", "HelmRelease"}
    repo, release = by_kind["GitRepository"], by_kind["HelmRelease"]
    assert repo["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    assert re.match(r"^(https?|ssh)://", repo["spec"]["url"])
    assert DURATION.match(repo["spec"]["interval"]) and DURATION.match(release["spec"]["interval"])
    ref = repo["spec"]["ref"]
    assert len(set(ref) & {"branch", "tag", "semver", "commit", "name"}) >= 1
    # the ignore rules must keep the chart
    assert "!/charts/wanops/" in repo["spec"].get("ignore", "!/charts/wanops/")

    chart = release["spec"]["chart"]["spec"]
    _chart_path_ok(chart["chart"])
    source = chart["sourceRef"]
    assert source["kind"] == "GitRepository" and source["name"] == repo["metadata"]["name"]
    assert source.get("namespace", release["metadata"]["namespace"]) == repo["metadata"][
        "namespace"]
    assert chart.get("reconcileStrategy", "ChartVersion") in ("ChartVersion", "Revision")
    for phase in ("install", "upgrade"):
        crds = release["spec"].get(phase, {}).get("crds")
        assert crds in (None, "Create", "CreateReplace"), (phase, crds)
    assert release["spec"]["install"]["crds"] in ("Create", "CreateReplace")
    _schema_check(release["spec"]["values"])
    namespace = release["spec"].get("targetNamespace", release["metadata"]["namespace"])
    objects = _render(release["spec"]["values"], tmp_path, namespace)
    assert any(o["kind"] == "CustomResourceDefinition" for o in objects)


def test_gitops_values_agree() -> None:
    """Both tools install the same configuration, so the README can describe one."""
    app = yaml.safe_load((GITOPS / "argocd-application.yaml").read_text())
    flux = {d["kind"]: d for d in yaml.safe_load_all((GITOPS / "flux-helmrelease.yaml").read_text())}
    a, f = app["spec"]["source"]["helm"]["valuesObject"], flux["HelmRelease"]["spec"]["values"]
    for key in ("operator", "runner", "store"):
        assert a[key] == f[key], key
    assert app["spec"]["destination"]["namespace"] == flux["HelmRelease"]["spec"]["targetNamespace"]

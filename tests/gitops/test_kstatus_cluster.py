"""Our status through a real API server, read by the real kubectl: the operator's and runner's
status patches (from gitops_scenarios.py, made by wanops_operator.status and runner.report) are
replayed through the status subresource in the order they happened, exactly as the operator
writes them (`reconcile.Cluster.patch_status`, a JSON merge patch). Then `kubectl wait
--for=condition=Ready` / `--for=jsonpath='{.status.phase}'=Succeeded` return for a finished
video and only for it, the CRD keeps every status field the tools read (nothing pruned), and
kstatus and the Argo CD health check give the same answers on the API server's copy.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from pathlib import Path

import pytest
from gitops_scenarios import SCENARIOS, scenario  # tests/gitops/gitops_scenarios.py
from test_gitops import argocd_health, kstatus  # tests/gitops/test_gitops.py

from localcluster import tools
from wanspec.spec import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parents[2]
HAVE_LUA = importlib.util.find_spec("lupa") is not None  # else test_gitops skips the Lua tests


class Kubectl:
    def __init__(self, kubeconfig: Path, namespace: str, cache: Path) -> None:
        self.base = [str(tools.find("kubectl")), "--kubeconfig", str(kubeconfig),
                     "--cache-dir", str(cache), "-n", namespace]

    def cmd(self, *args: str) -> list[str]:
        return [*self.base, *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def wait(self, name: str, condition: str, seconds: int) -> subprocess.CompletedProcess[str]:
        return self.run("wait", f"vg/{name}", f"--for={condition}", f"--timeout={seconds}s",
                        timeout=seconds + 30)


@pytest.fixture
def kubectl(cluster, namespace, tmp_path) -> Kubectl:
    try:
        tools.find("kubectl")
    except tools.ToolNotBuilt as e:
        pytest.skip(str(e))
    return Kubectl(cluster.kubeconfig, namespace, tmp_path / "kube-cache")


class Store:
    """Create a VideoGeneration and replay a scenario's writes, as the operator and runner do."""

    def __init__(self, kube, namespace: str) -> None:
        from kubernetes import client

        from wanops_operator.reconcile import Cluster

        self.operator = Cluster(kube)  # the operator's own API calls
        self.custom = client.CustomObjectsApi(kube)
        self.ns = namespace

    def create(self, created: dict) -> dict:
        body = {k: created[k] for k in ("apiVersion", "kind", "spec")}
        meta = created["metadata"]
        body["metadata"] = {"name": meta["name"], "labels": meta.get("labels") or {}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def replay(self, name: str, history: list[tuple[str, dict]]) -> dict:
        for target, patch in history:
            if target == "status":
                self.operator.patch_status(self.get(name), patch)
            else:  # a user's spec edit
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.ns, PLURAL, name, {"spec": patch})
        return self.get(name)


@pytest.fixture
def store(kube, crd, namespace) -> Store:
    return Store(kube, namespace)


def _load(store: Store, name: str) -> tuple[dict, object]:
    s = scenario(name)
    created = dict(s.created, metadata={**s.created["metadata"], "name": name})
    store.create(created)
    return store.replay(name, s.history), s


def test_every_state_through_the_api_server(store: Store, kubectl: Kubectl) -> None:
    """All twelve states side by side in one namespace; the API server's copy matches what our
    code computed field for field, and each tool reads it as designed."""
    loaded = {name: _load(store, name) for name in SCENARIOS}
    for name, (got, s) in loaded.items():
        assert got["metadata"]["generation"] == s.vg["metadata"]["generation"], name
        assert got.get("status") == s.vg.get("status"), name  # nothing pruned or defaulted away
        assert kstatus(got)[0] == s.kstatus, name
        if HAVE_LUA:
            assert argocd_health(got)["status"] == s.argocd, name

    for name, (_, s) in loaded.items():
        done = kubectl.wait(name, "condition=Ready", 20 if s.kubectl_ready else 1)
        assert (done.returncode == 0) == s.kubectl_ready, (name, done.stdout, done.stderr)
        if done.returncode == 0:
            assert f"videogeneration.{GROUP}/{name} condition met" in done.stdout
        else:
            assert "timed out" in done.stderr, (name, done.stderr)

    done = kubectl.wait("succeeded", "jsonpath={.status.phase}=Succeeded", 20)
    assert done.returncode == 0, done.stderr
    assert kubectl.wait("running", "jsonpath={.status.phase}=Succeeded", 1).returncode != 0
    for name in [n for n in SCENARIOS if n.startswith("failed-")]:
        done = kubectl.wait(name, "condition=Stalled", 20)
        assert done.returncode == 0, (name, done.stderr)
        assert kubectl.wait(name, "jsonpath={.status.phase}=Failed", 20).returncode == 0


def test_kubectl_wait_follows_the_transition_to_ready(store: Store, kubectl: Kubectl) -> None:
    """`kubectl wait` started while the video is still rendering returns once the operator
    writes Succeeded (the watch sees the change), not before."""
    s = scenario("succeeded")
    created = dict(s.created, metadata={**s.created["metadata"], "name": "live"})
    store.create(created)
    # replay up to and including the runner's first progress report: Running
    running_until = next(i for i, (t, p) in enumerate(s.history) if "progress" in p) + 1
    store.replay("live", s.history[:running_until])
    assert store.get("live")["status"]["phase"] == "Running"
    waiter = subprocess.Popen(kubectl.cmd("wait", "vg/live", "--for=condition=Ready",
                                          "--timeout=60s"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        assert waiter.poll() is None, "kubectl wait returned while the video was rendering"
        store.replay("live", s.history[running_until:])
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    assert "condition met" in out


def test_a_spec_edit_is_not_ready_until_the_operator_observes_it(
    store: Store, kubectl: Kubectl, kube
) -> None:
    """Ready=True computed for generation 1 does not satisfy `kubectl wait` after spec.suspend
    is edited (generation 2); the operator's generation refresh for finished resources does."""
    from wanops_operator.reconcile import Cluster, _refresh_generation

    got, _ = _load(store, "succeeded-then-edited")
    assert (got["metadata"]["generation"], got["status"]["observedGeneration"]) == (2, 1)
    stale = kubectl.wait("succeeded-then-edited", "condition=Ready", 2)
    assert stale.returncode != 0, stale.stdout
    _refresh_generation(Cluster(kube), got)
    fresh = store.get("succeeded-then-edited")
    assert kstatus(fresh)[0] == "Current"
    if HAVE_LUA:
        assert argocd_health(fresh)["status"] == "Healthy"
    done = kubectl.wait("succeeded-then-edited", "condition=Ready", 20)
    assert done.returncode == 0, done.stderr

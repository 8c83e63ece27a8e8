"""The operator as a subprocess (`python -m wanops_operator`) against the local control plane, and a
namespace set up as the chart sets one up; shared by tests/wanops_operator/test_operator_cluster.py
and the reliability tests, so each starts, kills and watches the operator the same way.

Runner pods run tests/wanops_operator/stand_in_runner.py (the operator's `WANOPS_RUNNER_COMMAND`,
a deployment knob), which keeps the runner contract without the pipeline; see its docstring.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from localcluster import wait_for
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

ROOT = Path(__file__).parents[2]
STAND_IN = ROOT / "tests" / "wanops_operator" / "stand_in_runner.py"
PEERING_CRDS = ROOT / "charts" / "wanops" / "crds" / "kopf-peerings.yaml"
CLAIM = "models"
BUCKET = "videos"
RUNNER_SA = "wanops-runner"
TIMEOUT = 120  # seconds for a phase to be reached on a busy 2-core machine

SPEC = {
    "task": "ti2v-5B",
    "size": "1280*704",
    "prompt": "rain",
    "checkpoint": {"claimName": CLAIM, "path": "Wan2.2-TI2V-5B"},
    "gpus": 2,
    "gpusPerPod": 1,
    "sampling": {"steps": 4},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_namespace(kube: client.ApiClient, folder: Path) -> str:
    """A fresh namespace as the chart would set it up: runner ServiceAccount with its Role, the
    store Secret, and a checkpoint claim pre-bound to a hostPath PV on `folder`."""
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    name = f"op-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for(
        lambda: (
            core.list_namespaced_service_account(name, field_selector="metadata.name=default").items
        ),
        what="default ServiceAccount",
    )
    core.create_namespaced_service_account(name, {"metadata": {"name": RUNNER_SA}})
    rbac.create_namespaced_role(
        name,
        {
            "metadata": {"name": RUNNER_SA},
            "rules": [
                {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]}
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        name,
        {
            "metadata": {"name": RUNNER_SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RUNNER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": RUNNER_SA, "namespace": name}],
        },
    )
    core.create_namespaced_secret(
        name,
        {
            "metadata": {"name": "wanops-store"},
            "stringData": {contract.ACCESS_KEY_ENV: "key", contract.SECRET_KEY_ENV: "secret"},
        },
    )
    core.create_persistent_volume(
        {
            "metadata": {"name": f"{name}-models"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "hostPath": {"path": str(folder)},
                "storageClassName": "",
                "claimRef": {"namespace": name, "name": CLAIM},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        name,
        {
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": f"{name}-models",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    return name


def remove_namespace(kube: client.ApiClient, name: str) -> None:
    """Delete the namespace (not awaited) and its claim's PV."""
    core = client.CoreV1Api(kube)
    core.delete_namespace(name, propagation_policy="Background")
    core.delete_persistent_volume(f"{name}-models")


def apply_peering_crds(kube: client.ApiClient) -> None:
    """kopf's peering CRDs from the chart (the chart installs them; kopf needs them for replicas)."""
    ext, custom = client.ApiextensionsV1Api(kube), client.CustomObjectsApi(kube)
    for crd in yaml.safe_load_all(PEERING_CRDS.read_text()):
        ext.patch_custom_resource_definition(
            crd["metadata"]["name"],
            crd,
            field_manager="wanops-tests",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        spec = crd["spec"]

        def served(spec: dict = spec) -> bool:
            try:
                custom.list_cluster_custom_object(
                    spec["group"], spec["versions"][0]["name"], spec["names"]["plural"], limit=1
                )
                return True
            except ApiException:
                return False

        wait_for(served, what=f"the {crd['metadata']['name']} API served")


class Operator:
    """`python -m wanops_operator` in a subprocess, watching one namespace; `env` overrides the
    `WANOPS_*` settings the tests use by default."""

    def __init__(self, cluster: Any, namespace: str, log: Path, **env: str) -> None:
        self.log = log
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "PYTHONPATH": str(ROOT),
            "WANOPS_NAMESPACES": namespace,
            "WANOPS_RUNNER_COMMAND": f"{sys.executable} {STAND_IN}",
            "WANOPS_STORE_ENDPOINT": cluster.s3_endpoint,
            "WANOPS_STORE_BUCKET": BUCKET,
            "WANOPS_RESYNC_SECONDS": "3",
            "WANOPS_DEFAULT_GPU_MEMORY_GIB": "80",  # the chart's default
            "WANOPS_METRICS_PORT": str(self.metrics_port),
            "WANOPS_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.liveness_port}/healthz",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wanops_operator"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Whether its liveness endpoint answers (kopf is up and serving)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies under the operator."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory (VmHWM) so far, in MiB; it must still run."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far; it must still run."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class VGs:
    """VideoGenerations of one namespace, as a user makes and reads them."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(kube)
        self.batch = client.BatchV1Api(kube)
        self.core = client.CoreV1Api(kube)
        self.ns = namespace

    @staticmethod
    def body(name: str, spec: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VideoGeneration",
            "metadata": {"name": name},
            "spec": {**copy.deepcopy(spec or SPEC), **changes},
        }

    def create(self, name: str, spec: dict[str, Any] | None = None, **changes: Any) -> dict:
        body = self.body(name, spec, **changes)
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def list(self) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL)["items"]

    def status(self, name: str) -> dict:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, op: Operator, timeout: float = TIMEOUT) -> dict:
        try:
            return wait_for(
                lambda: (s := self.status(name)).get("phase") == phase and s,
                timeout=timeout,
                what=f"{name} {phase}",
                interval=0.5,
            )
        except TimeoutError:
            pytest.fail(f"{name} never {phase}: {self.status(name)}\n--- operator:\n{op.tail()}")

    def jobs(self, name: str) -> list[dict]:
        items = self.batch.list_namespaced_job(
            self.ns, label_selector=f"wanops.io/videogeneration={name}"
        ).items
        return [client.ApiClient().sanitize_for_serialization(j) for j in items]

    def conditions(self, name: str) -> dict[str, dict]:
        return {c["type"]: c for c in self.status(name).get("conditions", [])}


class Recorder:
    """Every watch event of one kind of object, in order, from a thread: what the tests judge
    'never duplicated, never regressed' on. `list_fn` is a list call with its arguments bound
    (functools.partial); the watch resumes at the last resourceVersion, so nothing is missed
    between two watch requests."""

    def __init__(self, list_fn: Callable[..., Any]) -> None:
        self.list_fn = list_fn
        self.events: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic time, type, object)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        first = json.loads(list_fn(_preload_content=False).data)
        self._version = first["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True, name="recorder")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for event in watch.Watch().stream(
                    self.list_fn,
                    resource_version=self._version,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {obj}")
                    self._version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.events.append((time.monotonic(), event["type"], obj))
        except Exception as e:  # noqa: BLE001  (stop() raises it: a lost watch would hide duplicates)
            self.error = e

    def stop(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Stop after the current watch request (≤ 5 s) and return the events."""
        self._stop.set()
        self._thread.join(15)
        if self.error is not None:
            raise AssertionError(f"the watch broke: {self.error!r}") from self.error
        return self.events


def operator_namespace(kube: client.ApiClient, folder: Path) -> Iterator[str]:
    """Fixture body: a prepared namespace, removed afterwards."""
    name = prepare_namespace(kube, folder)
    yield name
    remove_namespace(kube, name)

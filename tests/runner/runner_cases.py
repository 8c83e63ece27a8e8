"""Helpers of the runner tests: the spec they generate, one VideoGeneration with its runner
config as the operator renders it, and the runner's JSON log read back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanops_operator.config import OperatorConfig
from wanops_operator.render import runner_config
from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION
from wanspec.validate import parse

ROOT = Path(__file__).parents[2]

# Small enough for a shared 2-core CPU: 5 frames (2 latent frames) at the task's real size.
SPEC: dict[str, Any] = {
    "task": "ti2v-5B",
    "size": "1280*704",
    "frames": 5,
    "prompt": "a red fox in the snow",
    "seed": 7,
    "checkpoint": {"claimName": "models", "path": "Wan2.2-TI2V-5B"},
    "sampling": {"steps": 4},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One VideoGeneration and the runner config the operator would mount for it."""

    def __init__(
        self,
        kube,
        cluster,
        namespace: str,
        bucket: str,
        ckpt: Path,
        tmp: Path,
        spec: dict[str, Any],
        checkpoint_every: int = 0,
    ) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(kube)
        self.cluster, self.namespace, self.bucket, self.tmp = cluster, namespace, bucket, tmp
        self.name = f"vg-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VideoGeneration",
            "metadata": {"name": self.name},
            "spec": spec,
        }
        vg = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        operator = OperatorConfig(store_endpoint=cluster.s3_endpoint, store_bucket=bucket)
        cfg = runner_config(vg, parse(vg["spec"]), attempt=0, config=operator)
        self.config = cfg.model_copy(
            update={"checkpoint_dir": str(ckpt), "checkpoint_every_steps": checkpoint_every}
        )
        self.config_path = tmp / f"{self.name}.json"
        self.config_path.write_text(self.config.model_dump_json())
        self.termination = tmp / f"{self.name}.termination"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "OMP_NUM_THREADS": "1",
            contract.CONFIG_ENV: str(self.config_path),
            contract.ACCESS_KEY_ENV: self.cluster.s3_access_key,
            contract.SECRET_KEY_ENV: self.cluster.s3_secret_key,
            "PET_MASTER_PORT": str(free_port()),
            "WANOPS_METRICS_PORT": str(free_port()),
            **extra,
        }

    def start(self, **extra: str) -> subprocess.Popen[str]:
        """`python -m runner` as the pod runs it (termination message redirected to a file)."""
        env = self.env(**extra)
        return subprocess.Popen(
            [sys.executable, "-m", "runner"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, timeout: float = 300, **extra: str) -> tuple[int, str]:
        proc = self.start(**extra)
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out

    def status(self) -> dict[str, Any]:
        vg = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        return vg.get("status") or {}


def log_events(output: str) -> list[dict[str, Any]]:
    """The runner's JSON log lines (torchrun's own lines are not JSON)."""
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, as a lost node would: torchrun starts its workers
    in sessions of their own, so killing the runner's process group would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass

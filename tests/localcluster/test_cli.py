"""``python -m localcluster up``/``down`` from other processes: detached start, clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localcluster.tools import REPO_ROOT

pytestmark = pytest.mark.cluster


def localcluster(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANOPS_CLUSTER_DIR": str(state_dir)}
    return subprocess.run([sys.executable, "-m", "localcluster", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def alive(pid: int) -> bool:
    """Running, not a zombie: detached components are reparented to a PID 1 that may not reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose arguments contain ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline and alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_up_env_down_leaves_no_processes(tmp_path: Path) -> None:
    if os.environ.get("WANOPS_KUBECONFIG"):
        pytest.skip("tests localcluster itself, which an external (kind) run does not use")
    state_dir = tmp_path / "cluster"
    up = localcluster(state_dir, "up", "--timing")
    assert up.returncode == 0, up.stderr
    state = json.loads((state_dir / "state.json").read_text())
    names = {p["name"] for p in state["processes"]}
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "versitygw"} <= names
    assert processes_mentioning(str(state_dir))

    status = localcluster(state_dir, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    env = localcluster(state_dir, "env").stdout
    assert f"export KUBECONFIG={state_dir / 'kubeconfig'}" in env
    assert "export WANOPS_S3_ENDPOINT=http://127.0.0.1:" in env

    down = localcluster(state_dir, "down")
    assert down.returncode == 0, down.stderr
    assert processes_mentioning(str(state_dir)) == []
    assert [p["name"] for p in state["processes"] if alive(p["pid"])] == []
    assert localcluster(state_dir, "status").returncode == 1

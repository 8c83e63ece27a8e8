"""Shared helpers for the chart tests: run the pinned helm and render the chart to objects."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import tools

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "wanops"
KUBE_VERSION = tools.versions()["KUBERNETES_VERSION"]


def helm() -> str:
    """The pinned helm binary; skips when it is not built (CI builds it: scripts/install-tools.sh)."""
    try:
        return str(tools.find("helm"))
    except tools.ToolNotBuilt as e:
        pytest.skip(str(e))


def run_helm(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120,
                          check=False, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def render(values: dict[str, str] | None = None, namespace: str = "wanops-system") -> list[dict]:
    """`helm template` with the pinned cluster version; the objects, in order."""
    done = run_helm("template", "t", str(CHART), "--namespace", namespace,
                    "--kube-version", KUBE_VERSION, *set_args(values or {}))
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]

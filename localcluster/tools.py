"""Locate the control-plane binaries that scripts/install-tools.sh built into the shared cache.

The binaries are pinned in tools/versions.env and live outside the clone, in
``$WANOPS_CACHE/bin/<tool>-<version>-<go version>/<tool>`` with a ``STAMP`` file written after the
binary ("<tool> <version> <go version> <module digest>"); a directory without a stamp naming the tool
and version is an interrupted build and is ignored. Whether a build is stale for its go.mod/go.sum
(the digest) is install-tools.sh's question, not this module's: a stale binary still runs.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO_ROOT / "tools" / "versions.env"

#: Which versions.env key pins each tool.
TOOL_VERSION_KEYS: dict[str, str] = {
    "etcd": "ETCD_VERSION",
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kubectl": "KUBERNETES_VERSION",
    "helm": "HELM_VERSION",
    "versitygw": "VERSITYGW_VERSION",
}


class ToolNotBuilt(RuntimeError):
    """A pinned binary is missing from the cache; the message says how to build it."""


def cache_root() -> Path:
    """The cache shared by install-tools.sh and CI (``$WANOPS_CACHE``, default ~/.cache/wanops)."""
    return Path(os.environ.get("WANOPS_CACHE") or Path.home() / ".cache" / "wanops")


def versions() -> dict[str, str]:
    """Parse tools/versions.env (plain KEY=VALUE lines, also sourced by bash)."""
    if not VERSIONS_FILE.is_file():
        raise ToolNotBuilt(f"{VERSIONS_FILE} not found; localcluster runs from a wanops checkout")
    pins: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def find(tool: str) -> Path:
    """Return the cached binary for ``tool`` at its pinned version, or raise ToolNotBuilt."""
    version = versions()[TOOL_VERSION_KEYS[tool]]
    candidates = []
    for stamp in (cache_root() / "bin").glob(f"{tool}-{version}-go*/STAMP"):
        binary = stamp.parent / tool
        if stamp.read_text().split()[:2] == [tool, version] and os.access(binary, os.X_OK):
            candidates.append((stamp.stat().st_mtime, binary))
    if not candidates:
        raise ToolNotBuilt(
            f"{tool} {version} is not built in {cache_root() / 'bin'}; "
            f"run: bash {REPO_ROOT / 'scripts' / 'install-tools.sh'}"
        )
    return max(candidates)[1]  # newest build wins when several Go versions built it


def missing(tools: tuple[str, ...] = tuple(TOOL_VERSION_KEYS)) -> list[str]:
    """Names of the tools that are not built (empty when everything is in place)."""
    absent = []
    for tool in tools:
        try:
            find(tool)
        except ToolNotBuilt:
            absent.append(tool)
    return absent

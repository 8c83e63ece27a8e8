"""The Dockerfile and its install script, without a Docker engine: lint both, check the shape of
the final stages, and run the operator install path for real into a throw-away venv."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "docker" / "install.sh"
FINAL_STAGES = ("operator", "runner")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "python3-dev", "-devel", "nvcc")


def _stages() -> dict[str, str]:
    """Stage name -> its lines (FROM line included), from the Dockerfile."""
    stages: dict[str, str] = {}
    name = None
    for line in DOCKERFILE.read_text().splitlines():
        if m := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE):
            name = m.group(2)
            stages[name] = ""
        if name is not None:
            stages[name] += line + "\n"
    return stages


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (pip install {name}-bin / the dev extra)")
    return path


def test_hadolint_passes() -> None:
    done = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_install_script_passes_shellcheck() -> None:
    done = subprocess.run([_tool("shellcheck"), str(INSTALL)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bases_are_pinned_by_exact_tag_and_digest() -> None:
    bases = re.findall(r"^ARG \w+_BASE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(bases) == 3
    for image in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w.-]+@sha256:[0-9a-f]{64}", image), image


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_stages_run_as_numeric_non_root_without_build_tools(stage: str) -> None:
    base, _, body = _stages()[stage].partition("\n")
    assert re.match(r"FROM \$\{(PYTHON|CUDA_RUNTIME)_BASE\}", base), base
    user = re.findall(r"^USER (\d+):(\d+)$", body, re.MULTILINE)
    assert user and int(user[-1][0]) > 0 and int(user[-1][1]) > 0
    for tool in BUILD_TOOLS:
        assert tool not in body, f"{stage} installs {tool}"


def test_every_installed_package_is_copied_into_the_build_stages() -> None:
    """The Dockerfile copies named paths; a new top-level package must be added there too."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [p.rstrip("*") for p in setuptools["packages"]["find"]["include"]]
    for stage in ("operator-build", "runner-build"):
        text = _stages()[stage]
        for package in packages:
            assert f"COPY {package} /src/{package}" in text, f"{stage} misses {package}"
        for module in setuptools["py-modules"]:
            assert f"{module}.py" in text


def test_operator_install_has_no_torch(tmp_path: Path) -> None:
    """docker/install.sh operator, as the operator image runs it, into a fresh venv; the script
    itself fails if torch is importable afterwards. Installs from PyPI (about a minute cold)."""
    src = tmp_path / "src"
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in (p.rstrip("*") for p in setuptools["packages"]["find"]["include"]):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", *(f"{m}.py" for m in setuptools["py-modules"])):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run(["bash", str(INSTALL), "operator"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(python), "SRC": str(src),
                               "HOME": str(Path.home())},
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "operator install: ok" in done.stdout and "bytecode compiled" in done.stdout
    helped = subprocess.run([str(venv / "bin" / "wanops"), "operator", "--help"],
                            capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "WANOPS_" in helped.stdout

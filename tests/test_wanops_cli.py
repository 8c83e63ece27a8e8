"""`wanops` delegates to each entry point; the operator path never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _wanops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wanops_cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("generate", "--ckpt_dir"),  # wan_core.cli's own parser
        ("cluster", "up"),  # localcluster's own parser
        ("operator", "WANOPS_"),
        ("runner", "exit codes"),
        ("demo", "scripts/demo.sh"),
    ],
)
def test_subcommand_help(command: str, expected: str) -> None:
    done = _wanops(command, "--help")
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout


def test_top_level_help_lists_every_subcommand() -> None:
    done = _wanops("--help")
    assert done.returncode == 0, done.stderr
    for command in ("generate", "operator", "runner", "cluster", "demo"):
        assert command in done.stdout


def test_unknown_subcommand_is_refused() -> None:
    done = _wanops("train")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_operator_path_never_imports_torch() -> None:
    """The operator image has no torch: neither the CLI nor the operator module may pull it in."""
    probe = (
        "import sys, wanops_cli\n"
        "try:\n"
        "    wanops_cli.main(['operator', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import wanops_operator.__main__  # what `wanops operator` runs, minus starting it\n"
        "heavy = sorted(m for m in ('torch', 'wan_core', 'runner') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_demo_without_script_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import wanops_cli

    monkeypatch.setattr(wanops_cli, "DEMO_SCRIPT", tmp_path / "demo.sh")
    assert wanops_cli.main(["demo"]) == 1
    assert "not found" in capsys.readouterr().err


def test_demo_runs_the_script_with_its_arguments(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    import wanops_cli

    script = tmp_path / "demo.sh"
    script.write_text(f'echo "$@" > {tmp_path / "out"}\nexit 3\n')
    monkeypatch.setattr(wanops_cli, "DEMO_SCRIPT", script)
    assert wanops_cli.main(["demo", "--fast", "x"]) == 3
    assert (tmp_path / "out").read_text().strip() == "--fast x"
    assert wanops_cli.main(["demo", "--", "--help"]) == 3
    assert (tmp_path / "out").read_text().strip() == "--help"

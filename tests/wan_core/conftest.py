"""Fixtures shared by the wan_core tests: tiny official-layout checkpoints, one per task."""

from __future__ import annotations

from pathlib import Path

import pytest

from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint
from wanspec.tasks import TASKS


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Written once per session (seed 0); tests must not modify them."""
    root = tmp_path_factory.mktemp("tiny-ckpts")
    return {task: write_tiny_checkpoint(task, root / task) for task in TASKS}

"""Tiny official-layout checkpoints (one per task, written once per session) and their pipelines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from wan_core.pipelines import WanPipeline, load_pipeline
from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint
from wanspec.tasks import TASKS


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors on a shared CI machine: extra intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-ckpts")
    return {task: write_tiny_checkpoint(task, root / task) for task in TASKS}


@pytest.fixture(scope="session")
def pipelines(tiny_ckpts: dict[str, Path]) -> dict[str, WanPipeline]:
    """The fp32 CPU parity path of every task (loaded once; generate does not change them)."""
    return {task: load_pipeline(task, path, device="cpu", dtype=torch.float32) for task, path in tiny_ckpts.items()}

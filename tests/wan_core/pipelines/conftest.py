"""The tiny checkpoints (tests/wan_core/conftest.py) loaded into pipelines, once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from wan_core.pipelines import WanPipeline, load_pipeline


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors on a shared CI machine: extra intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pipelines(tiny_ckpts: dict[str, Path]) -> dict[str, WanPipeline]:
    """The fp32 CPU parity path of every task (loaded once; generate does not change them)."""
    return {task: load_pipeline(task, path, device="cpu", dtype=torch.float32) for task, path in tiny_ckpts.items()}

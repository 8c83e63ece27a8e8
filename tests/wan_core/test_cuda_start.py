"""wan_core.cuda_start: CUDA begun on a thread; a failure is left to the main thread's first call."""

from __future__ import annotations

import threading

import pytest
import torch

from wan_core.cuda_start import start_cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path of a machine without a GPU")
def test_a_failed_start_is_left_to_the_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    escaped: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda hook_args: escaped.append(hook_args.exc_value))
    thread = start_cuda(torch.device("cuda"))
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon
    assert escaped == []  # no traceback from the thread
    with pytest.raises((RuntimeError, AssertionError)):  # the main thread's first call raises it
        torch.ones(1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_is_ready_once_the_thread_ends() -> None:
    start_cuda(torch.device("cuda", 0)).join(timeout=60)
    assert torch.cuda.is_initialized()
    assert torch.ones(2, device="cuda").sum().item() == 2

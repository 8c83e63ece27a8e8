"""The timing loop shared by the bench scripts: one warm-up, CUDA events, peak memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor


def timed(fn: Callable[[], Tensor], runs: int, device: torch.device, warmup: bool = True) -> tuple[Tensor, list[float], float | None]:
    """One warm-up (unless the caller just ran `fn`), then `runs` timed calls; returns the last
    output (CPU fp32), seconds, peak GiB."""
    if warmup:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(runs):
        out = None  # never two outputs alive on the device
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(device)
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            out = fn()
            seconds.append(time.perf_counter() - begin)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return out.float().cpu(), seconds, peak

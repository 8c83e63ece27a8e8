"""CUDA's first use begun on a thread, as soon as a process knows its GPU.

The first CUDA call of a process initialises the driver, creates the context and sets up the
allocator: 0.34 s right after `import torch` on an H100 host (BENCHMARKS.md, "CUDA's first use on
a thread"). Started on a thread, that overlaps the imports and the setup that come before the
first copy to the GPU instead of delaying it. torch's lazy CUDA init holds a lock, so the main
thread's first CUDA call waits for this one rather than racing it.
"""

from __future__ import annotations

import threading

import torch


def start_cuda(device: torch.device) -> threading.Thread | None:
    """Begin CUDA on `device` in the background (None: not a CUDA device, nothing to begin). A
    failure is left to the main thread's first CUDA call, which raises it where the caller handles
    errors."""
    if device.type != "cuda":
        return None

    def touch() -> None:
        try:
            torch.ones(1, device=device)
        except Exception:  # noqa: BLE001 (raised again, with its context, by the main thread's call)
            return

    thread = threading.Thread(target=touch, name="cuda-start", daemon=True)
    thread.start()
    return thread

"""Where the DiTs' weights live during a run (spec §11), and moving them cheaply.

Upstream offloads an A14B expert with `.to('cpu')` before the other one comes in: a device→host
copy of 27 GB into fresh pageable memory, then the host→device copy of the other. On an H100 host
that one switch cost ≈ 31 s of a 480P T2V run (bench/results/2026-11-26-h100-e2e-t2v-a14b-480p.log,
step 27). Here every DiT keeps its host copy for the whole run (inference never changes weights;
after a memory-mapped safetensors load it is the file's page cache, so it costs no extra memory
on the host), which gives:

- release: the device copy is dropped and the parameters point at the host copy again, no copy;
- prefetch: an expert is copied in on a side stream by a background thread (the copies release
  the GIL) while the current expert samples, so a switch that has room for both costs nothing;
- copy-in through pinned staging buffers (`PinnedStager`): a pageable `.to(device)` of a memory-
  mapped expert goes through the driver's own staging one chunk at a time; here torch's
  multi-threaded CPU copy fills one pinned buffer while the DMA engine drains the others;
- the dtype cast on the device (`cast`, upstream's `convert_model_dtype`): the host copy stays the
  stored fp32 file mapping and each chunk is cast to bf16 as it lands. Casting on the host instead
  costs seconds of every start (a 20 GB DiT read and a 10 GB copy written by the CPU) and a second
  host copy; both casts round to nearest even, so the device weights are the same bits.

The pipelines decide when both experts may stay (`offload_model=False` and room on the device);
this class only moves weights.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

STAGING_BYTES = 64 << 20  # one pinned staging buffer
STAGING_BUFFERS = 4  # filled by the CPU while the DMA engine drains the others


class PinnedStager:
    """Host→device copies of plain tensors through a few pinned staging buffers, kept for reuse.

    Each tensor's bytes go in chunks: torch's CPU copy (multi-threaded, GIL released) fills a free
    pinned buffer, then an asynchronous DMA on `stream` empties it into the device tensor; a buffer
    is refilled once its last DMA has finished. Returns once every copy is done, so the source
    may be released and the buffers reused. The buffers (4 × 64 MiB of pinned host memory) are
    made at the first copy and kept for the run's later ones (prefetch, switches); one copy at a
    time uses them (the prefetch thread and the caller's may both ask). A tensor given another
    dtype lands chunk by chunk in a device buffer of the slot and is cast from there."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: list[Tensor] = []
        self._landing: list[Tensor] = []  # device buffers of the slots, for copies that cast
        self._lock = threading.Lock()

    def copy(
        self, tensors: Sequence[Tensor], stream: torch.cuda.Stream, dtypes: Sequence[torch.dtype] | None = None
    ) -> list[Tensor]:
        """The tensors on the device, each in its dtype or the one given for it in `dtypes`."""
        with self._lock:
            return self._copy(tensors, stream, dtypes or [t.dtype for t in tensors])

    def _copy(self, tensors: Sequence[Tensor], stream: torch.cuda.Stream, dtypes: Sequence[torch.dtype]) -> list[Tensor]:
        if not self._buffers:
            self._buffers = [torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=True)
                             for _ in range(STAGING_BUFFERS)]
        if not self._landing and any(d != t.dtype for t, d in zip(tensors, dtypes)):
            self._landing = [torch.empty(STAGING_BYTES, dtype=torch.uint8, device=self.device)
                             for _ in range(STAGING_BUFFERS)]
        done: list[torch.cuda.Event | None] = [None] * len(self._buffers)
        slot = 0
        out = []
        with torch.cuda.stream(stream):
            for t, dtype in zip(tensors, dtypes):
                dst = torch.empty(t.shape, dtype=dtype, device=self.device)
                src, size = t.contiguous().view(-1).view(torch.uint8), t.element_size()
                flat = dst.view(-1) if dtype != t.dtype else dst.view(-1).view(torch.uint8)
                for start in range(0, src.numel(), STAGING_BYTES):  # STAGING_BYTES: whole elements
                    n = min(STAGING_BYTES, src.numel() - start)
                    if (event := done[slot]) is not None:
                        event.synchronize()
                    buffer = self._buffers[slot][:n]
                    buffer.copy_(src[start : start + n])
                    if dtype == t.dtype:
                        flat[start : start + n].copy_(buffer, non_blocking=True)
                    else:  # land in the slot's device buffer, cast from there on the same stream
                        landed = self._landing[slot][:n]
                        landed.copy_(buffer, non_blocking=True)
                        flat[start // size : (start + n) // size].copy_(landed.view(t.dtype))
                    done[slot] = torch.cuda.Event()
                    done[slot].record(stream)
                    slot = (slot + 1) % len(self._buffers)
                out.append(dst)
        for event in done:
            if event is not None:
                event.synchronize()
        return out


class Residency:
    """Device placement of named DiTs that start on the host (one process, or replicas under torchrun without FSDP)."""

    def __init__(
        self, models: Mapping[str, nn.Module], device: torch.device, *, pinned_staging: bool = True,
        cast: torch.dtype | None = None,
    ) -> None:
        """`pinned_staging=False` copies in with a plain `.to(device)` (the baseline of bench/copy_in.py);
        `cast`: the device dtype of floating weights stored in another (host copies keep theirs)."""
        self.models = dict(models)
        self.device = device
        self.cast = cast
        # weight name → a detached alias of its host tensor: keeps the host copy alive while the
        # module holds the device copy.
        self._host: dict[str, dict[str, Tensor]] = {
            name: {n: t.detach() for n, t in _weights(model) if t.device.type == "cpu"}
            for name, model in self.models.items()
        }
        self._pending: dict[str, Future[None]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._stream: torch.cuda.Stream | None = None
        self._stager = PinnedStager(device) if device.type == "cuda" and pinned_staging else None

    def on_device(self, name: str) -> bool:
        return next(self.models[name].parameters()).device == self.device

    def nbytes(self, name: str) -> int:
        """Bytes of `name`'s weights as they will sit on the device."""
        return sum(_nbytes(t, self.cast) for _, t in _weights(self.models[name]))

    def activate(self, name: str, keep_others: bool = False) -> nn.Module:
        """`name` on the device (waiting for its prefetch), the others released unless `keep_others`."""
        if not keep_others:
            self.release_all(except_=name)
        if (pending := self._pending.pop(name, None)) is not None:
            try:
                pending.result()
            except torch.OutOfMemoryError:
                log.warning("prefetching %s ran out of device memory; loading it after releasing the others", name)
                self.release_all()
        if not self.on_device(name):
            self._move_in(name)
        return self.models[name]

    def prefetch(self, name: str) -> None:
        """Start copying `name` to the device in the background (a CUDA side stream); `activate` waits."""
        if self.device.type != "cuda" or name in self._pending or self.on_device(name):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wanops-prefetch")
            self._stream = torch.cuda.Stream(self.device)
        self._pending[name] = self._pool.submit(self._copy_in, name)

    def _copy_in(self, name: str) -> None:
        assert self._stream is not None
        with torch.cuda.device(self.device):
            self._move_in(name, self._stream)
        self._stream.synchronize()  # the copies are done before `activate` hands the model out

    def _move_in(self, name: str, stream: torch.cuda.Stream | None = None) -> None:
        """`name`'s host tensors to the device: through the pinned stager on `stream` (default: the
        current one), or by `.to` off CUDA."""
        model = self.models[name]
        if self._stager is None:
            model.to(self.device, dtype=self.cast)
            return
        stream = stream or torch.cuda.current_stream(self.device)
        host = {id(t): t for _, t in _weights(model) if t.device.type == "cpu"}
        dtypes = [self._device_dtype(t) for t in host.values()]
        moved = dict(zip(host, self._stager.copy([t.detach() for t in host.values()], stream, dtypes)))
        with torch.cuda.stream(stream):
            model._apply(lambda t: moved[id(t)] if id(t) in moved else t.to(self.device))

    def _device_dtype(self, t: Tensor) -> torch.dtype:
        return self.cast if self.cast is not None and t.is_floating_point() else t.dtype

    def release(self, name: str) -> None:
        """Drop `name`'s device copy: its parameters point at the host copy again (no copy back)."""
        if (pending := self._pending.pop(name, None)) is not None:
            pending.exception()  # wait for it; a failed prefetch leaves nothing to keep
        if not self.on_device(name):
            return
        if self.device.type == "cuda":
            # Kernels queued on the compute stream may still read these weights, and memory made
            # on the side stream is reused by later side-stream copies without waiting for them.
            torch.cuda.current_stream(self.device).synchronize()
        model, host = self.models[name], self._host[name]
        back = {id(t): host[n] for n, t in _weights(model) if n in host}  # the current objects
        model._apply(lambda t: back[id(t)] if id(t) in back else t.to("cpu"))

    def release_all(self, except_: str | None = None) -> None:
        for name in self.models:
            if name != except_:
                self.release(name)


def _weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Parameters and buffers by name: the FP8 layers of the lossy precisions keep their weights
    as buffers (`wan_core.ops.fp8.Fp8Linear`)."""
    return chain(model.named_parameters(), model.named_buffers())


def _nbytes(t: Tensor, cast: torch.dtype | None = None) -> int:
    return t.numel() * (cast.itemsize if cast is not None and t.is_floating_point() else t.element_size())

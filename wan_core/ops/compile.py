"""Per-block `torch.compile` of the DiT, put on from outside the model (as torchtitan does).

The block's non-GEMM work is long chains of element-wise fp32 ops over [L, dim] tensors
(LayerNorm, modulation, gated residuals, q/k RMSNorm, RoPE, casts): run eagerly each link reads
and writes the whole stream, ~1.5–2.5 s per 720P A14B forward. Inductor fuses each chain into one
kernel and gathers the per-token modulation rows inside it; GEMMs stay cuBLAS and attention stays
our kernel choice at run time (`wanops::attention`, opaque to the compiler, so a block traces as
one graph). All blocks share code and shapes,
and parameters are graph inputs, so one compile serves every block and both A14B experts.

`WANOPS_COMPILE=0` turns it off (debugging, or a platform where Triton cannot build kernels).

Saved across processes (`saved=`, one process without hooks): even with Inductor's cache warm,
every process traces the block again with Dynamo before the first step. torch's AOT compile
(`aot_compile`, `save_compiled_function`) keeps the traced and compiled forward of one block in a
file, and a later process loads it instead of tracing; one file serves every block and expert of
the same shapes, as the in-process compile does. A file is keyed by what its code depends on:
torch's version, the GPU model, the inputs' shapes, dtypes and devices, the grad and autocast
state, and the source of `wan_core.models` and `wan_core.ops` (a changed kernel or block never
runs stale code). A file that cannot be read, or whose guards refuse the call, is compiled again.
A load marks its file used; a save beyond `MAX_SAVED` files removes the least recently used, so
the files of past torch versions, GPU kinds, sizes and our past code do not pile up on a claim.

A load first asks for `triton_key()`, Inductor's cache key for the Triton it runs: a SHA-256 of
Triton's sources and its 0.5 GB `libtriton.so`, ≈0.4 s of one core once per process, on the way
to the first denoising step. Reading and hashing release the GIL, so `compile_blocks` starts it on
a thread, where it runs beside the weights' load and copy to the GPU.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wan_core.kept import mark_used, prune_least_used, source_digest, write_whole

log = logging.getLogger(__name__)

ENV_VAR = "WANOPS_COMPILE"
SAVED_FORMAT = 1
MAX_SAVED = 64  # compiled blocks kept per folder (a few MB each)
_SOURCES = ("models", "ops")  # wan_core subpackages whose code a compiled block runs


def compile_wanted(device: torch.device) -> bool:
    """Default: on for CUDA (Triton kernels), off for the CPU (tests, tiny models: compile would
    cost more than it saves); `WANOPS_COMPILE=0|1` overrides."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return device.type == "cuda"


def compile_blocks(model: nn.Module, backend: str = "inductor", *, saved: Path | None = None) -> nn.Module:
    """Compile each of `model.blocks` in place (hooks included, so Ulysses' run inside); returns model.

    Call after the Ulysses hooks and before FSDP2 wraps the blocks (torchtitan's order). `backend`
    is torch.compile's; tests use "aot_eager" to check tracing without generating kernels.
    `saved`: a folder where the compiled forward is kept across processes (module docstring);
    only for blocks without hooks, and where this torch has AOT compile.
    """
    if saved is not None and _aot_compile_available():
        _hash_triton_ahead()
        shared = SavedForward(saved, backend)
        for block in model.blocks:
            block.forward = functools.partial(shared, block)
        return model
    for block in model.blocks:
        block.compile(backend=backend, dynamic=False)
    return model


def _aot_compile_available() -> bool:
    """torch ≥ 2.10 has AOT compile behind `enable_aot_compile`; older ones compile per process."""
    import torch._dynamo

    return hasattr(torch.compiler, "load_compiled_function") and hasattr(torch._dynamo.config, "enable_aot_compile")


_triton_key_thread: threading.Thread | None = None


def _hash_triton_ahead() -> None:
    """Compute `triton_key()` on a thread, once per process (module docstring); its cache keeps it."""
    global _triton_key_thread
    if _triton_key_thread is not None:
        return
    try:
        from triton.runtime.cache import triton_key
    except ImportError:  # no Triton: nothing to hash, and Inductor will say so itself
        return
    _triton_key_thread = threading.Thread(target=triton_key, name="triton-key", daemon=True)
    _triton_key_thread.start()


def _triton_key_hashed() -> None:
    """Wait for the thread, so a load does not hash the same library a second time beside it."""
    if _triton_key_thread is not None:
        _triton_key_thread.join()


def saved_folder() -> Path:
    """Where compiled forwards are kept: beside Inductor's cache (`TORCHINDUCTOR_CACHE_DIR`, or
    its default), so a runner pod's `runner.compileCache` claim keeps them too."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "wanops-blocks"


class SavedForward:
    """One block class's forward, compiled once per input signature and kept in `folder`."""

    def __init__(self, folder: Path, backend: str) -> None:
        self.folder, self.backend = Path(folder), backend
        self._compiled: dict[str, Callable[..., Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Saving a block pickles its guards' state, which reaches this object through the block's
        # `forward`; a compiled function held here (its guard manager) cannot be pickled.
        return {**self.__dict__, "_compiled": {}}

    def __call__(self, block: nn.Module, *args: Any) -> Tensor:
        key = self._key(block, args)
        if (fn := self._compiled.get(key)) is None:
            fn = self._compiled[key] = self._load(key) or self._compile(key, block, args)
        try:
            return fn(block, *args)
        except RuntimeError as err:
            if "guard" not in str(err).lower():
                raise
            log.warning("compiled block %s refused its inputs (%s); compiling it again", key[:12], err)
            fn = self._compiled[key] = self._compile(key, block, args)
            return fn(block, *args)

    def _key(self, block: nn.Module, args: tuple[Any, ...]) -> str:
        def describe(a: Any) -> Any:
            if isinstance(a, Tensor):
                return [list(a.shape), str(a.dtype), str(a.device)]
            return repr(a)

        devices = sorted({a.device for a in args if isinstance(a, Tensor) and a.device.type == "cuda"}, key=str)
        state = [torch.is_grad_enabled(), torch.is_inference_mode_enabled()]
        state += [[t, torch.is_autocast_enabled(t), str(torch.get_autocast_dtype(t))] for t in ("cuda", "cpu")]
        ident = [SAVED_FORMAT, torch.__version__, self.backend, type(block).__qualname__, source_digest(*_SOURCES),
                 [torch.cuda.get_device_name(d) for d in devices], [describe(a) for a in args], state]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def _load(self, key: str) -> Callable[..., Tensor] | None:
        path = self.folder / f"{key}.bin"
        if not path.is_file():
            return None
        _triton_key_hashed()
        try:
            with path.open("rb") as f:
                fn = torch.compiler.load_compiled_function(f)
        except Exception as err:  # a truncated file or another torch's: compile again
            log.warning("compiled block %s cannot be loaded (%s); compiling it again", path, err)
            return None
        log.info("compiled DiT block loaded from %s (no tracing in this process)", path)
        mark_used(path)
        return fn

    def _compile(self, key: str, block: nn.Module, args: tuple[Any, ...]) -> Callable[..., Tensor]:
        with torch._dynamo.config.patch(enable_aot_compile=True):
            compiled = torch.compile(type(block).forward, fullgraph=True, dynamic=False, backend=self.backend)
            try:
                fn = compiled.aot_compile(((block, *args), {}))
            except Exception as err:  # e.g. torch 2.11 with aot_eager ("expected OutputCode"): compile as usual
                log.warning("cannot keep the compiled block (this torch cannot compile it ahead of time: %s); "
                            "it is compiled in this process only", err)
                return compiled
        path = self.folder / f"{key}.bin"
        try:
            write_whole(path, fn.save_compiled_function)
            log.info("compiled DiT block kept in %s for later processes", path)
            prune_least_used(self.folder, "*.bin", MAX_SAVED)
        except Exception as err:  # an unwritable folder, or output torch cannot serialize: only a cost
            log.warning("cannot keep the compiled block in %s (%s); the next process compiles again", self.folder, err)
        return fn

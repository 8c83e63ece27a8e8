"""One attention entry point for every model; kernels register behind it with their limits.

`attention(q, k, v, *, k_lens=None, backend=None)` takes (B, L, N, D) tensors and returns
(B, Lq, N, D) in q's dtype, softmax(q·kᵀ/√D)·v. Backends, tried in this order when none is forced:

- `flash3`  FlashAttention-3 (`flash_attn_interface`), CUDA sm90, fp16/bf16 — what upstream runs.
- `flash4`  FlashAttention-4 (`flash_attn.cute`, the `flash-attn-4` package: CuTe DSL kernels
            compiled on first use, kept on disk beside Inductor's cache), CUDA sm90+, fp16/bf16:
            ≈1% faster than FlashInfer's per A14B forward on an H200; passed over for ≤ 512 keys,
            like FlashInfer, where cuDNN's is faster. Imported at the first forward (≈1 s past
            torch._dynamo; on a thread beside the main one's imports it broke torch's circular ones).
- `flashinfer`  FlashInfer's FA3-class sm90 kernel (`wan_core.ops.flashinfer_attention`): FA3's
            speed where FA3 itself does not install (≈12% faster than cuDNN on the video's
            tokens; passed over for ≤ 512 keys, the cross-attention to the text, where cuDNN's is faster).
- `flash2`  FlashAttention-2 (`flash_attn`), CUDA sm80+, fp16/bf16 — upstream's fallback.
- `sdpa`    `torch.nn.functional.scaled_dot_product_attention` on CUDA, cuDNN first, then flash,
            memory-efficient, math; an enclosing `torch.nn.attention.sdpa_kernel` overrides that.
- `math`    exact reference on any device: SDPA's math kernel in fp32 (the CPU default).

and one lossy backend, never chosen unless forced (the `fp8-full` precision forces it on the
DiT's self-attention):

- `fp8`  FP8 flash attention on Hopper, FlashInfer's kernel or cuDNN's (`wan_core.ops.fp8_attention`).

Force one with the `backend=` argument, `with attention_backend("sdpa"):`, or the environment
variable `WANOPS_ATTENTION_BACKEND`; a forced backend that cannot run the request raises with
one line saying why.

Key padding (`k_lens[b]` = number of valid keys of sample b, spec §3.6) is honoured the same way
for every backend: keys and values are cut to their valid length (one call when all lengths are
equal, else one call per sample), which is exactly a key mask and keeps every kernel mask-free.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from wan_core.ops import flashinfer_attention, fp8_attention

log = logging.getLogger(__name__)

ENV_VAR = "WANOPS_ATTENTION_BACKEND"
_HALF = (torch.float16, torch.bfloat16)
_forced: list[str] = []  # stack of names set by `attention_backend`


@dataclass(frozen=True)
class Backend:
    """A kernel: `check` returns None when it can run the request, else a one-line reason."""

    name: str
    check: Callable[[Tensor, Tensor, Tensor], str | None]
    run: Callable[[Tensor, Tensor, Tensor], Tensor]  # dense (B, L, N, D) → (B, Lq, N, D)
    exact: bool = True  # False: changes the numbers; only ever run when forced
    # (out, shift) with the attention = out + shift, for callers that add shift themselves
    shifted: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    min_auto_keys: int = 1  # automatic selection passes it over for fewer keys (forcing does not)


def _keep_flash4_kernels() -> None:
    """FlashAttention-4 compiles each kernel on first use (3 s) and keeps it on disk only when told,
    at its import: kept beside Inductor's cache, so a runner pod's compile cache claim keeps it too."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", os.path.join(cache_dir(), "flash-attn-cute"))


_BEFORE_IMPORT: dict[str, Callable[[], None]] = {"flash_attn.cute": _keep_flash4_kernels}


@cache
def _module(name: str) -> ModuleType | None:
    """The optional kernel package, or None: one not installed, or installed but broken (a
    mismatched CUDA library, say), is passed over rather than failing the run."""
    if name in _BEFORE_IMPORT:
        _BEFORE_IMPORT[name]()
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 (any failure of an optional kernel's import)
        absent = isinstance(error, ModuleNotFoundError) and error.name is not None and name.startswith(error.name)
        if not absent:
            log.warning("`%s` is installed but does not import (%s): passed over", name, error)
        return None


def _check_flash(module: str, min_capability: tuple[int, int], max_capability: tuple[int, int] | None) -> Callable[[Tensor, Tensor, Tensor], str | None]:
    def check(q: Tensor, k: Tensor, v: Tensor) -> str | None:
        if not q.is_cuda:
            return f"needs CUDA tensors, got {q.device.type}"
        if q.dtype not in _HALF:
            return f"needs fp16/bf16, got {q.dtype}"
        if q.shape[-1] > 256 or q.shape[-1] % 8:
            return f"head dim {q.shape[-1]} is not a multiple of 8 up to 256"
        capability = torch.cuda.get_device_capability(q.device)
        if capability < min_capability or (max_capability and capability > max_capability):
            return f"GPU compute capability {capability} is not supported"
        if not hasattr(_module(module), "flash_attn_func"):  # flash-attn-4 alone leaves `flash_attn` a bare namespace
            return f"`{module}.flash_attn_func` is not importable"
        return None

    return check


def _run_flash3(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = _module("flash_attn_interface").flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the LSE


def _run_flash2(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _module("flash_attn").flash_attn_func(q, k, v)


def _run_flash4(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _module("flash_attn.cute").flash_attn_func(q, k, v)[0]  # (out, lse)


def _check_sdpa(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    return None if q.is_cuda else f"meant for CUDA, got {q.device.type} (use `math`)"


# cuDNN first: on Hopper it runs 585–621 TFLOP/s at Wan's shapes against ~400 for the FA2-class
# flash kernel torch prefers by default (attention is ~71% of a 720P forward's FLOPs). Exact
# attention either way; torch skips a kernel that cannot take the request.
SDPA_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, N, Lq, D)
    return out.transpose(1, 2)  # (B, Lq, N, D)


def _run_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if _outer_sdpa_choice():
        return _sdpa(q, k, v)
    with sdpa_kernel(SDPA_PRIORITY, set_priority=True):
        return _sdpa(q, k, v)


def _outer_sdpa_choice() -> bool:
    """Whether a caller narrowed SDPA's kernels (`with sdpa_kernel(...)`): then theirs rules."""
    b = torch.backends.cuda
    return not (b.cudnn_sdp_enabled() and b.flash_sdp_enabled() and b.mem_efficient_sdp_enabled() and b.math_sdp_enabled())


def _run_math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    with sdpa_kernel(SDPBackend.MATH):
        return _sdpa(q.float(), k.float(), v.float()).to(q.dtype)


# Up to this many keys (the cross-attention's 512 text tokens) cuDNN's kernel through SDPA beats
# FlashInfer's and FlashAttention-4's, which are tiled for long sequences: 1.49 against 2.06 ms at
# A14B 720P, 0.45 against 0.53 ms at TI2V-5B 720P on an H100, 1.60 / 2.06 / 1.89 ms (cuDNN /
# FlashInfer / FA4) on an H200 (BENCHMARKS.md); they win on the video's own tokens.
SHORT_KEYS = 512

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("flash3", _check_flash("flash_attn_interface", (9, 0), (9, 0)), _run_flash3),
        Backend("flash4", _check_flash("flash_attn.cute", (9, 0), None), _run_flash4, min_auto_keys=SHORT_KEYS + 1),
        Backend("flashinfer", flashinfer_attention.check, flashinfer_attention.run, min_auto_keys=SHORT_KEYS + 1),
        Backend("flash2", _check_flash("flash_attn", (8, 0), None), _run_flash2),
        Backend("sdpa", _check_sdpa, _run_sdpa),
        Backend("math", lambda q, k, v: None, _run_math),
        Backend("fp8", fp8_attention.check, fp8_attention.run, exact=False, shifted=fp8_attention.attend),
    )
}


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Force one backend inside the block (beats the environment variable)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def select_backend(q: Tensor, k: Tensor, v: Tensor, backend: str | None = None) -> Backend:
    """The backend that will run this request: forced (argument, context, env) or first able."""
    name = backend or (_forced[-1] if _forced else None) or os.environ.get(ENV_VAR) or None
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}")
        reason = BACKENDS[name].check(q, k, v)
        if reason:
            raise RuntimeError(f"attention backend {name!r} cannot run this request: {reason}")
        return BACKENDS[name]
    return next(b for b in BACKENDS.values() if b.exact and k.shape[1] >= b.min_auto_keys and b.check(q, k, v) is None)


def attention(q: Tensor, k: Tensor, v: Tensor, *, k_lens: Tensor | None = None, backend: str | None = None) -> Tensor:
    """softmax(q·kᵀ/√D)·v on (B, L, N, D) tensors; keys ≥ k_lens[b] of sample b are ignored.

    `k_lens` should live on the CPU (it is read on the host; a CUDA tensor costs a sync). Returns
    a contiguous (B, Lq, N, D) tensor in q's dtype, or autocast's where autocast is on.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention wants (B, L, N, D) q/k/v with matching B, N, D; got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    q, k, v = _autocast(q, k, v)
    return _attention_op(q, k, v, k_lens, backend)


def attention_with_shift(q: Tensor, k: Tensor, v: Tensor, *, k_lens: Tensor | None = None,
                         backend: str | None = None) -> tuple[Tensor, Tensor | None]:
    """`attention` as (out, shift) with the attention = out + shift, for a caller that reads out
    anyway and can add shift there (the DiT's o projection, in the kernel quantizing its rows).

    Only a backend with a `shifted` entry, passed here by name and with no key padding, returns a
    shift: the `fp8` one, V's per-channel mean (B, 1, N, D, fp32), which its kernel attends
    without (`fp8_attention.attend`). Everything else is `attention` with shift None.
    """
    shifted = BACKENDS[backend].shifted if backend in BACKENDS else None
    if shifted is not None and k_lens is None:
        return shifted(*_autocast(q, k, v))
    return attention(q, k, v, k_lens=k_lens, backend=backend), None


def _autocast(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Autocast does not look inside a custom operator (and a compiled graph runs without it):
    q, k, v cast as it casts SDPA, to its lower-precision dtype, in eager and compiled code."""
    if not torch.is_autocast_enabled(q.device.type):
        return q, k, v
    dtype = torch.get_autocast_dtype(q.device.type)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# One opaque operator for the compiler: the kernel is chosen when it runs (the environment, a
# forced backend, what imports), as eager code does, and a compiled block traces through the
# call as one graph; as a `torch.compiler.disable`d function it split each DiT block into three
# graphs and two resume functions, all traced again by every process.
@torch.library.custom_op("wanops::attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None, backend: str | None) -> Tensor:
    return _attend(q, k, v, k_lens, backend).contiguous()


@_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None, backend: str | None) -> Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


_announced: set[str] = set()


def _announce(name: str, keys: int) -> None:
    """Log each kernel once, at its first use: which one ran is decided by what imports, and a
    user (or a benchmark) reading the log should not have to guess."""
    if name not in _announced:
        _announced.add(name)
        log.info("attention kernel %s (first used for %d keys)", name, keys)


def _attend(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None, backend: str | None) -> Tensor:
    chosen = select_backend(q, k, v, backend)
    _announce(chosen.name, k.shape[1])
    run = chosen.run
    if k_lens is None:
        return run(q, k, v)
    lens = [int(n) for n in k_lens.tolist()]
    if len(lens) != q.shape[0] or not all(0 < n <= k.shape[1] for n in lens):
        raise ValueError(f"k_lens {lens} must give 1..{k.shape[1]} keys for each of {q.shape[0]} samples")
    if len(set(lens)) == 1:
        n = lens[0]
        return run(q, k[:, :n], v[:, :n])
    return torch.cat([run(q[b : b + 1], k[b : b + 1, :n], v[b : b + 1, :n]) for b, n in enumerate(lens)])

"""FP8 self-attention on Hopper (lossy, opt-in): FlashInfer's FA3 FP8 kernel or cuDNN's.

Attention is ~74% of a 720P A14B forward; FP8 runs it ≈1.5× faster than the bf16 kernels
(BENCHMARKS.md). Two kernels take the same quantized inputs: FlashInfer's FA3-class FP8 prefill
(`wan_core.ops.flashinfer_attention`, the `flashinfer` extra; ≈900 TFLOP/s at A14B 720P) where it
loads, else cuDNN's FP8 flash forward through the cuDNN frontend's graph API
(`nvidia-cudnn-frontend`, the `fp8` extra; ≈850). We call kernels rather than write one: no FP8
attention for sm90 installs from PyPI otherwise (FA3 and SageAttention 2 need source builds).

Numerics: Q, K and V are cast to e4m3 with one scale per tensor (largest magnitude → 448), K and
V after subtracting their per-channel means over the tokens (SageAttention's smoothing; exact in
real arithmetic, see `_quantize`); the softmax probabilities P (≤ 1 after the online softmax's
running max) go to e4m3 inside the kernel; products accumulate in fp32. FlashInfer writes O in
the model's dtype; cuDNN on Hopper writes O in e4m3 (its rows are convex combinations of V's, so
|O| ≤ max|V| and O reuses V's scale). The cost against exact attention is measured in
BENCHMARKS.md, never assumed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor

from wan_core.ops import flashinfer_attention

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


@cache
def _frontend() -> Any | None:
    try:
        return importlib.import_module("cudnn")
    except (ImportError, OSError):  # OSError: the frontend found no libcudnn
        return None


def _flashinfer_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when FlashInfer's FP8 kernel (O in `dtype`) runs here: then it is the one used."""
    return flashinfer_attention.fp8_problem(device, 128, dtype)


def device_problem(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """None when one of the FP8 attention kernels can run on `device` for a `dtype` model, else why not."""
    if problem := flashinfer_attention.device_problem(device):  # both kernels: CUDA, Hopper only
        return problem
    if _frontend() is None and (why := _flashinfer_problem(device, dtype)):
        return f"has no kernel: the cuDNN frontend is not importable (pip install 'wanops[fp8]') and {why}"
    return None


def check(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """None when an FP8 attention kernel can run (B, L, N, D) q/k/v, else why not."""
    if not q.is_cuda:
        return device_problem(q.device)
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"takes fp16/bf16 inputs (it quantizes them), got {q.dtype}"
    if q.shape[-1] != 128:
        return f"head dim {q.shape[-1]} is not 128 (every Wan2.2 DiT's; the only one measured)"
    return device_problem(q.device, q.dtype)


@cache
def _compiled(fn: Callable) -> Callable:
    """`fn` under torch.compile, made on first use: compiled, the statistics below are column
    reductions Inductor fuses into one pass and the cast a second (eager: several kernels and
    full-size temporaries). Not at import: that would load Dynamo into every process."""
    return torch.compile(fn, dynamic=False)


def _quantize(x: Tensor, smooth: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """x (B, L, N, D) in e4m3 with its largest magnitude at E4M3_MAX: (x8, scale, descale, mean).

    `smooth` first subtracts each channel's mean over the L tokens (returned as `mean`), which
    e4m3's 3-bit mantissa then spends on what varies between tokens. For K it changes every
    logit of a query by the same amount, which the softmax cancels; for V the output is shifted
    by exactly that mean (the softmax weights sum to 1), which the caller adds back. max|x − mean|
    comes from each channel's max and min, so no pass reads x − mean before the cast.
    """
    x = x.float()
    if smooth:
        mean = x.mean(dim=1, keepdim=True)
        high, low = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
        amax = torch.maximum(high - mean, mean - low).amax()
        x = x - mean
    else:
        mean, amax = None, x.abs().amax(dim=(2, 3)).amax()
    scale = E4M3_MAX / amax.clamp(min=1e-12).reshape(1, 1, 1, 1)
    return (x * scale).to(E4M3), scale, 1 / scale, mean


def _dequantize(x: Tensor, descale: Tensor, dtype: torch.dtype) -> Tensor:
    """cuDNN's e4m3 O in `dtype`, its scale undone (V's mean is still the caller's to add)."""
    return (x.float() * descale.reshape(())).to(dtype)


def add_shift(out: Tensor, shift: Tensor) -> Tensor:
    """out + shift in fp32, rounded to out's dtype: `attend`'s output with V's mean added back is
    the attention itself (see `_quantize`)."""
    return (out.float() + shift).to(out.dtype)


@dataclass
class _Plan:
    """A built cuDNN graph for one shape, with its tensor handles and workspace."""

    graph: Any
    ports: dict[str, Any]
    workspace: Tensor


_plans: dict[tuple, _Plan] = {}
_handles: dict[int, Any] = {}
_p_scales: dict[int, tuple[Tensor, Tensor]] = {}  # per device: P's (scale, descale)


def _bhsd(t: Tensor) -> tuple[list[int], list[int]]:
    """cuDNN's (B, N, L, D) view of a (B, L, N, D) tensor: dims and strides, no copy."""
    b, s, h, d = t.shape
    sb, ss, sh, sd = t.stride()
    return [b, h, s, d], [sb, sh, ss, sd]


def _plan(q: Tensor, k: Tensor, v: Tensor, o: Tensor) -> _Plan:
    key = (q.device.index, q.shape, q.stride(), k.shape, k.stride(), v.stride(), o.stride())
    if key in _plans:
        return _plans[key]
    cudnn = _frontend()
    fp8, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=fp32, compute_data_type=fp32, handle=_handle(q.device))
    ports = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        dim, stride = _bhsd(t)
        ports[name] = graph.tensor(name=name, dim=dim, stride=stride, data_type=fp8)
    for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
        ports[name] = graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
    out, _stats, amax_s, amax_o = graph.sdpa_fp8(
        q=ports["q"], k=ports["k"], v=ports["v"],
        descale_q=ports["descale_q"], descale_k=ports["descale_k"], descale_v=ports["descale_v"],
        descale_s=ports["descale_s"], scale_s=ports["scale_s"], scale_o=ports["scale_o"],
        generate_stats=False, attn_scale=q.shape[-1] ** -0.5, use_causal_mask=False, name="wan_self_attention",
    )
    dim, stride = _bhsd(o)
    out.set_output(True).set_dim(dim).set_stride(stride).set_data_type(fp8)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
    ports.update(o=out, amax_s=amax_s, amax_o=amax_o)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=q.device)
    _plans[key] = _Plan(graph, ports, workspace)
    return _plans[key]


def _handle(device: torch.device) -> Any:
    if device.index not in _handles:
        _handles[device.index] = _frontend().create_handle()
    return _handles[device.index]


KERNELS = ("flashinfer", "cudnn")


def attend(q: Tensor, k: Tensor, v: Tensor, kernel: str | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q·kᵀ/√D)·v for (B, L, N, D) q/k/v as (out, v_mean), the attention being
    out + v_mean: out (B, Lq, N, D) in q's dtype, V's per-channel mean (B, 1, N, D) in fp32.

    Leaving the add to the caller saves a pass over O (read and written, 1.5 GB at 720P A14B):
    the DiT adds it in the kernel that quantizes O's rows for the o projection anyway
    (`WanSelfAttention.project_out`). `kernel` forces one of KERNELS (benchmarks, tests); by
    default FlashInfer's where it loads.
    """
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"unknown FP8 attention kernel {kernel!r}; known: {', '.join(KERNELS)}")
    return _attend_op(q, k, v, kernel)


def run(q: Tensor, k: Tensor, v: Tensor, kernel: str | None = None) -> Tensor:
    """softmax(q·kᵀ/√D)·v for (B, L, N, D) q/k/v through an FP8 kernel; (B, Lq, N, D) in q's
    dtype (`attend` with V's mean added back: the `fp8` backend of `wan_core.ops.attention`)."""
    out, v_mean = attend(q, k, v, kernel)
    return _compiled(add_shift)(out, v_mean)


# One opaque operator, as `wanops::attention` is: the kernel is chosen where it runs (what loads
# on that machine) and a compiled block around it stays one graph.
@torch.library.custom_op("wanops::fp8_attention", mutates_args=())
def _attend_op(q: Tensor, k: Tensor, v: Tensor, kernel: str | None) -> tuple[Tensor, Tensor]:
    if reason := check(q, k, v):
        raise RuntimeError(f"attention backend 'fp8' cannot run this request: {reason}")
    if kernel is None:
        kernel = "flashinfer" if _flashinfer_problem(q.device, q.dtype) is None else "cudnn"
    quantize = _compiled(_quantize)
    (q8, _, dq, _), (k8, _, dk, _), (v8, sv, dv, v_mean) = quantize(q, False), quantize(k, True), quantize(v, True)
    if kernel == "flashinfer":
        return flashinfer_attention.run_fp8(q8, k8, v8, (dq, dk, dv), q.dtype).contiguous(), v_mean
    o8 = torch.empty(q.shape, dtype=E4M3, device=q.device)
    plan = _plan(q8, k8, v8, o8)
    if q.device.index not in _p_scales:
        one = torch.ones(1, 1, 1, 1, dtype=torch.float32, device=q.device)
        _p_scales[q.device.index] = (one * E4M3_MAX, one / E4M3_MAX)
    scale_s, descale_s = _p_scales[q.device.index]
    amax = torch.empty(2, 1, 1, 1, dtype=torch.float32, device=q.device)  # cuDNN reports max|P|, max|O|: unused
    tensors = {
        "q": q8, "k": k8, "v": v8, "descale_q": dq, "descale_k": dk, "descale_v": dv,
        "descale_s": descale_s, "scale_s": scale_s, "scale_o": sv,
        "o": o8, "amax_s": amax[0:1], "amax_o": amax[1:2],
    }
    handle = _handle(q.device)
    _frontend().set_stream(handle=handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
    plan.graph.execute({plan.ports[name]: t for name, t in tensors.items()}, plan.workspace, handle=handle)
    return _compiled(_dequantize)(o8, dv, q.dtype), v_mean


@_attend_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, kernel: str | None) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q, memory_format=torch.contiguous_format), v.new_empty((v.shape[0], 1, *v.shape[2:]), dtype=torch.float32)

"""The DiT block's residual add + LayerNorm + modulation as one Triton kernel per site (CUDA).

Each block normalises its fp32 residual stream three times (§3.5): modulated before the
self-attention, affine (`norm3`) after adding the self-attention's gated output, modulated
again after adding the cross-attention's. Inductor fuses each site into one reduction kernel,
which moved 2.0–2.6 TB/s on an H100 at the DiT's rows (3072 or 5120 fp32). Here one program
holds one row in registers: the stream is read once, written once when a residual is
added, and the normalised row is written once in the weights' dtype: 2.7–3.0 TB/s
(`bench/results/2026-11-26-h100-fused-norm-kernels.log`). Same fp32 math as the eager
expressions (two-pass mean and variance instead of Welford: both exact to fp32 rounding).
For the lossy FP8 precisions the row is written in e4m3 with its scale instead
(`wan_core.ops.fp8.quantize_rows` of the fp32 row), so the projections read 1 byte per value
and no separate pass quantizes their input.

Registered with `torch.library.triton_op`, so `torch.compile` sees the kernel (and its in-place
write into the stream) instead of an opaque call; only where CUDA is present, since that import
brings in Dynamo and Inductor (seconds per process for CPU runs and their torchrun workers). The
CPU and other devices keep the plain expressions in `wan_core.models.dit`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wan_core.ops.fp8 import E4M3, E4M3_MAX, MIN_AMAX, RowScaled

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch builds: the model keeps its eager expressions
    triton = None


def available(x: Tensor) -> bool:
    """Whether the fused kernels can run on x (CUDA, Triton importable, a contiguous fp32 stream)."""
    return _REGISTERED and x.is_cuda and x.dtype == torch.float32 and x.is_contiguous()


if triton is not None:
    _E4M3_MAX = tl.constexpr(E4M3_MAX)
    _MIN_AMAX = tl.constexpr(MIN_AMAX)

    @triton.jit
    def _residual_norm_kernel(
        x_ptr, y_ptr, gate_ptr, w_ptr, b_ptr, rows_ptr, out_ptr, scale_ptr,
        n_cols, seq_len, gate_stride, wb_stride, eps,
        HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, PER_TOKEN: tl.constexpr,
        MODULATE: tl.constexpr, OUT_FP8: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """One row: [x += y (· gate[r])]; out = LN(x)·(1 + w[r]) + b[r] (MODULATE) or LN(x)·w + b;
        with OUT_FP8, out in e4m3 scaled by its row's largest magnitude (`fp8.quantize_rows`)."""
        token = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        offs = token * n_cols + cols
        if PER_TOKEN:
            r = tl.load(rows_ptr + token)
        else:
            r = token // seq_len
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if HAS_Y:
            y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_GATE:
                y = y * tl.load(gate_ptr + r * gate_stride + cols, mask=mask, other=0.0)
            x = x + y
            tl.store(x_ptr + offs, x, mask=mask)
        mean = tl.sum(x, axis=0) / n_cols
        centred = tl.where(mask, x - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / n_cols
        # eps in fp32: Inductor passes a Python float as fp64, which would make the row fp64 from here
        normed = centred * tl.math.rsqrt(var + tl.cast(eps, tl.float32))
        w = tl.load(w_ptr + r * wb_stride + cols, mask=mask, other=0.0)
        b = tl.load(b_ptr + r * wb_stride + cols, mask=mask, other=0.0)
        out = normed * (1.0 + w) + b if MODULATE else normed * w + b
        if OUT_FP8:
            scale = tl.maximum(tl.max(tl.where(mask, tl.abs(out), 0.0), axis=0), _MIN_AMAX) / _E4M3_MAX
            tl.store(scale_ptr + token, scale)
            out = tl.clamp(out / scale, -_E4M3_MAX, _E4M3_MAX)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def launch(
    kernel,
    x: Tensor,
    y: Tensor | None,
    gate: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    rows: Tensor | None,
    modulate: bool,
    eps: float,
    out: Tensor,
    scale: Tensor | None = None,
) -> None:
    """Run `kernel` (the Triton kernel, or its `wrap_triton` wrapper) over every row of x.

    x [B, L, dim] fp32 contiguous, updated in place when y is given; y [B, L, dim] any float
    dtype; gate, weight, bias: [R, dim] row tables with a unit last stride ([dim] vectors for the
    affine norm); rows: [B, L] row index per token, or None for row b of sample b; out like x;
    scale [B, L, 1] fp32 for an e4m3 `out` (each row's scale), else None.
    """
    n_cols = x.shape[-1]
    block = triton.next_power_of_2(n_cols)
    table_stride = weight.stride(0) if weight.ndim == 2 else 0
    # Absent inputs are given as `weight` (never read): aliasing the written x, they would make
    # torch.compile copy the stream before the kernel instead of writing it in place.
    kernel[(x.numel() // n_cols,)](
        x, weight if y is None else y, weight if gate is None else gate, weight, bias,
        weight if rows is None else rows, out, weight if scale is None else scale,
        n_cols, x.shape[1], 0 if gate is None else gate.stride(0), table_stride, eps,
        HAS_Y=y is not None, HAS_GATE=gate is not None, PER_TOKEN=rows is not None,
        MODULATE=modulate, OUT_FP8=scale is not None, BLOCK=block, num_warps=8 if block <= 4096 else 16,
    )


_REGISTERED = triton is not None and torch.cuda.is_available()
if _REGISTERED:
    from torch.library import triton_op, wrap_triton

    @triton_op("wanops::add_norm_", mutates_args={"x"})
    def _add_norm_(x: Tensor, y: Tensor, gate: Tensor | None, weight: Tensor, bias: Tensor,
                   rows: Tensor | None, modulate: bool, eps: float, out_dtype: torch.dtype) -> Tensor:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        launch(wrap_triton(_residual_norm_kernel), x, y, gate, weight, bias, rows, modulate, eps, out)
        return out

    @triton_op("wanops::norm", mutates_args={})
    def _norm(x: Tensor, weight: Tensor, bias: Tensor, rows: Tensor | None, modulate: bool, eps: float,
              out_dtype: torch.dtype) -> Tensor:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        launch(wrap_triton(_residual_norm_kernel), x, None, None, weight, bias, rows, modulate, eps, out)
        return out

    # The same with e4m3 rows and their scales out (the lossy precisions' FP8 projections take them).
    @triton_op("wanops::add_norm_fp8_", mutates_args={"x"})
    def _add_norm_fp8_(x: Tensor, y: Tensor, gate: Tensor | None, weight: Tensor, bias: Tensor,
                       rows: Tensor | None, modulate: bool, eps: float) -> tuple[Tensor, Tensor]:
        out, scale = _fp8_outputs(x)
        launch(wrap_triton(_residual_norm_kernel), x, y, gate, weight, bias, rows, modulate, eps, out, scale)
        return out, scale

    @triton_op("wanops::norm_fp8", mutates_args={})
    def _norm_fp8(x: Tensor, weight: Tensor, bias: Tensor, rows: Tensor | None, modulate: bool,
                  eps: float) -> tuple[Tensor, Tensor]:
        out, scale = _fp8_outputs(x)
        launch(wrap_triton(_residual_norm_kernel), x, None, None, weight, bias, rows, modulate, eps, out, scale)
        return out, scale


def _fp8_outputs(x: Tensor) -> tuple[Tensor, Tensor]:
    return (torch.empty(x.shape, dtype=E4M3, device=x.device),
            torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device))


def add_norm_(x: Tensor, y: Tensor, gate: Tensor | None, weight: Tensor, bias: Tensor, rows: Tensor | None,
              *, modulate: bool, eps: float, out_dtype: torch.dtype) -> Tensor | RowScaled:
    """x += y (· gate[row]) in place, then the row's LayerNorm: ·(1 + weight[row]) + bias[row] when
    `modulate`, else the affine ·weight + bias; returned in out_dtype (e4m3: as `RowScaled` rows).
    CUDA only (see `available`)."""
    if out_dtype == E4M3:
        return RowScaled(*torch.ops.wanops.add_norm_fp8_(x, y.contiguous(), gate, weight, bias, rows, modulate, eps))
    return torch.ops.wanops.add_norm_(x, y.contiguous(), gate, weight, bias, rows, modulate, eps, out_dtype)


def norm(x: Tensor, weight: Tensor, bias: Tensor, rows: Tensor | None, *, modulate: bool, eps: float,
         out_dtype: torch.dtype) -> Tensor | RowScaled:
    """`add_norm_` without the residual add: x is only read."""
    if out_dtype == E4M3:
        return RowScaled(*torch.ops.wanops.norm_fp8(x, weight, bias, rows, modulate, eps))
    return torch.ops.wanops.norm(x, weight, bias, rows, modulate, eps, out_dtype)

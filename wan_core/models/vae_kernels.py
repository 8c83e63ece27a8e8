"""Fused RMS-norm (+ SiLU) for the VAE's fast path: one read and one write of a channels-last tensor.

Eagerly, `SiLU(F.normalize(x.float()) · √C · γ)` in bf16 is six passes over the activation with two
fp32 copies of it; at the decoder's last stage (96–256 channels at full resolution) those passes
cost about as much time as the convolutions around them. In channels-last layout (B, T, H, W, C in
memory) the channels of a position are contiguous, so the norm is a row reduction: each Triton
program loads a tile of rows once, reduces and scales in fp32, applies SiLU and stores the rounded
result — into a slice of the next convolution's padded input buffer, so no copy follows either.

The arithmetic is the official one done in fp32 and rounded once: x / max(‖x‖₂, 1e-12) · √C · γ,
then SiLU. Without CUDA or Triton the same formula runs eagerly (CPU tests, tiny models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # platforms without Triton: the eager formula below
    triton = None

CL3D = torch.channels_last_3d
_TILE = 8192  # elements per program: 16 KB of bf16, enough in flight to stream at full bandwidth


if triton is not None:

    @triton.jit
    def _rms_act_kernel(
        x_ptr, out_ptr, gamma_ptr, rows, x_batch_stride, out_batch_stride, scale,
        C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, SILU: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        col = tl.arange(0, BLOCK_C)
        mask = (row < rows)[:, None] & (col < C)[None, :]
        offsets = row.to(tl.int64)[:, None] * C + col[None, :]
        batch = tl.program_id(1).to(tl.int64)
        x = tl.load(x_ptr + batch * x_batch_stride + offsets, mask=mask, other=0.0).to(tl.float32)
        inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)
        gamma = tl.load(gamma_ptr + col, mask=col < C, other=0.0).to(tl.float32)
        y = x * inv[:, None] * gamma[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + batch * out_batch_stride + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def _eager(x: Tensor, gamma: Tensor, scale: float, silu: bool) -> Tensor:
    y = F.normalize(x.float(), dim=1) * (scale * gamma.float())
    return F.silu(y) if silu else y


def rms_norm_act(x: Tensor, gamma: Tensor, scale: float, out: Tensor, *, silu: bool = True) -> Tensor:
    """out ← SiLU(x / max(‖x‖₂ over channels, 1e-12) · scale · γ), computed in fp32, stored in out's dtype.

    x and out are (B, C, T, H, W) in channels-last layout (out may be a frame slice of a larger
    channels-last buffer); γ holds C values (any shape of C elements). Returns out.
    """
    if x.shape != out.shape:
        raise ValueError(f"x {tuple(x.shape)} and out {tuple(out.shape)} differ")
    if triton is None or not x.is_cuda or not _rows(out):
        return out.copy_(_eager(x, gamma.reshape(1, -1, 1, 1, 1), scale, silu))
    return _launch(x if _rows(x) else x.contiguous(memory_format=CL3D), gamma, scale, out, silu)


def _rows(t: Tensor) -> bool:
    """Each batch item is T·H·W rows of C contiguous values (channels-last; the batch stride is free)."""
    return t[:1].is_contiguous(memory_format=CL3D)


def _launch(x: Tensor, gamma: Tensor, scale: float, out: Tensor, silu: bool) -> Tensor:
    b, c = x.shape[:2]
    rows = x[0, 0].numel()  # T·H·W positions per batch item, each a row of C contiguous values
    block_c = triton.next_power_of_2(c)
    block_r = max(1, _TILE // block_c)
    grid = (triton.cdiv(rows, block_r), b)
    _rms_act_kernel[grid](
        x, out, gamma.reshape(-1).contiguous(), rows, x.stride(0), out.stride(0), float(scale),
        C=c, BLOCK_C=block_c, BLOCK_R=block_r, SILU=silu, num_warps=8,
    )  # fmt: skip
    return out

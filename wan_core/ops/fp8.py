"""FP8 (e4m3) Linear layers: one scale per activation row and per weight output channel.

The lossy `fp8` and `fp8-full` precisions run the DiT blocks' projections and FFN through
these (`wan_core.ops.quant.quantize_dit`). Ours rather than torchao's Float8 tensors, for one
reason: a layer here also takes rows that are already quantized (`RowScaled`). The block's
norm kernel (`wan_core.ops.fused_norm`) writes its rows straight to e4m3 with their scales, and
q, k and v share those rows. torchao's Linear quantizes its own bf16 input in every call, so it
pays one more read and write per projection (0.23 s of a 7.7 s 720P A14B forward, BENCHMARKS.md).
The GEMM is the same one torchao calls: `torch._scaled_mm` (cuBLASLt) with row-wise scales and
fast accumulation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# The smallest row maximum a scale is taken from: an all-zero row quantizes to zeros, not 0/0.
MIN_AMAX = 1e-12


class RowScaled(NamedTuple):
    """Rows in e4m3 with one fp32 scale each: the rows ≈ data · scale."""

    data: Tensor  # [..., K] e4m3
    scale: Tensor  # [..., 1] fp32


def quantize_rows(x: Tensor) -> RowScaled:
    """x's rows in e4m3, each scaled so its largest magnitude lands on E4M3_MAX (rounded to nearest).

    Written as plain tensor expressions, so that under torch.compile Inductor fuses the
    reduction and the cast into the kernel that produces x, e.g. the GELU before the FFN's second GEMM.
    """
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=MIN_AMAX) / E4M3_MAX
    return RowScaled((x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale)


def split_rows(rows: RowScaled, size: int, dim: int) -> list[RowScaled]:
    """`Tensor.split` for quantized rows (dim must not be the last: rows keep their scale)."""
    return [RowScaled(d, s) for d, s in zip(rows.data.split(size, dim), rows.scale.split(size, dim), strict=True)]


class Fp8Linear(nn.Module):
    """An `nn.Linear` with its weight in e4m3 (one scale per output channel); output in the
    original weight's dtype. Takes a float tensor (quantized here, row by row) or `RowScaled` rows.

    The weight and its scales are buffers, so `.to()` and the pipeline's offloading move them.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = linear.weight.dtype
        weight = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight.data)  # [out, in]; `.t()` is the column-major operand
        self.register_buffer("weight_scale", weight.scale.reshape(1, -1).contiguous())  # [1, out]
        self.bias = linear.bias  # kept in the output dtype: cuBLASLt adds it in the epilogue

    def forward(self, x: Tensor | RowScaled) -> Tensor:
        rows = x if isinstance(x, RowScaled) else quantize_rows(x)
        lead = rows.data.shape[:-1]
        out = torch._scaled_mm(
            rows.data.reshape(-1, self.in_features), self.weight.t(),
            scale_a=rows.scale.reshape(-1, 1), scale_b=self.weight_scale,
            bias=self.bias, out_dtype=self.out_dtype, use_fast_accum=True,
        )
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, out_dtype={self.out_dtype}"

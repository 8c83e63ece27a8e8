"""FP8 layers (wan_core.ops.fp8): row-wise e4m3 quantization and the Linear that takes its rows.

The quantization is checked against e4m3's own rounding bound; the Linear against the same
product computed from the dequantized operands in fp32, on the CPU where torch's `_scaled_mm`
runs there, and on an FP8 GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wan_core.ops.fp8 import E4M3, E4M3_MAX, Fp8Linear, quantize_rows, split_rows

HALF_STEP = 2.0**-4  # e4m3 keeps 3 mantissa bits: rounding to nearest errs by ≤ 2⁻⁴ relative
SUBNORMAL_STEP = 2.0**-9  # below 2⁻⁶ the spacing is fixed at 2⁻⁹ (in units of the scaled value)


def test_rows_keep_their_largest_magnitude_and_round_to_nearest() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 64) * torch.logspace(-3, 3, 5)[None, :, None]  # rows of very different size
    rows = quantize_rows(x.bfloat16())
    assert rows.data.dtype == E4M3 and rows.scale.dtype == torch.float32 and rows.scale.shape == (3, 5, 1)
    xf = x.bfloat16().float()
    torch.testing.assert_close(rows.scale, xf.abs().amax(-1, keepdim=True) / E4M3_MAX, rtol=0, atol=0)
    scaled = rows.data.float()
    assert torch.equal(scaled.abs().amax(-1), torch.full((3, 5), E4M3_MAX))  # each row's maximum is exact
    error = (scaled - xf / rows.scale).abs()
    assert bool((error <= HALF_STEP * (xf / rows.scale).abs() + SUBNORMAL_STEP / 2).all())


def test_a_zero_row_stays_zero() -> None:
    rows = quantize_rows(torch.zeros(2, 8))
    assert not rows.data.float().isnan().any() and not rows.data.float().any()
    assert bool((rows.scale > 0).all())


def test_split_rows_keeps_each_row_with_its_scale() -> None:
    rows = quantize_rows(torch.randn(1, 10, 16))
    parts = split_rows(rows, 4, 1)
    assert [p.data.shape[1] for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p.data.float() for p in parts], 1), rows.data.float())
    assert torch.equal(torch.cat([p.scale for p in parts], 1), rows.scale)


def _scaled_mm_runs(device: str) -> bool:
    try:
        a = torch.ones(16, 16, device=device).to(E4M3)
        scale = torch.ones(16, 1, device=device)
        torch._scaled_mm(a, a.t(), scale_a=scale, scale_b=scale.t().contiguous(), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs an FP8 GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_linear_is_the_product_of_its_dequantized_operands(device: str) -> None:
    if not _scaled_mm_runs(device):
        pytest.skip(f"torch._scaled_mm with row-wise scales does not run on {device} in this torch")
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(device, torch.bfloat16)
    layer = Fp8Linear(linear)
    assert layer.weight.dtype == E4M3 and layer.weight_scale.shape == (1, 48) and layer.out_dtype == torch.bfloat16
    x = torch.randn(2, 7, 64, device=device, dtype=torch.bfloat16)
    got = layer(x)
    rows = quantize_rows(x)
    want = (rows.data.float() * rows.scale) @ (layer.weight.float() * layer.weight_scale.t()).t() + linear.bias.float()
    assert got.dtype == torch.bfloat16 and got.shape == (2, 7, 48)
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)  # bf16 output rounding
    assert torch.equal(layer(rows), got)  # rows quantized beforehand: the same product
    # and close to the bf16 layer it replaces (e4m3's 3-bit mantissa on both operands)
    exact = linear(x).float()
    assert float((got.float() - exact).norm() / exact.norm()) < 0.05


def test_linear_without_bias() -> None:
    if not _scaled_mm_runs("cpu"):
        pytest.skip("torch._scaled_mm with row-wise scales does not run on the CPU in this torch")
    layer = Fp8Linear(nn.Linear(32, 16, bias=False).bfloat16())
    assert layer.bias is None and layer(torch.randn(3, 32, dtype=torch.bfloat16)).shape == (3, 16)


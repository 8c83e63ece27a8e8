"""Fused residual add + LayerNorm + modulation (wan_core.ops.fused_norm) against the eager expressions.

The Triton kernel itself runs on the CPU through Triton's interpreter (`TRITON_INTERPRET=1`, read
when triton is imported, hence a subprocess); on a GPU the compiled DiT block with the fused
kernels is checked against the same block with the eager expressions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[3]


def draw_case(case: tuple[bool, bool, bool, bool], B: int, L: int, D: int, R: int, device: str = "cpu") -> tuple:
    """Random inputs of one CASES entry: (x, y, gate, weight, bias, rows)."""
    has_y, has_gate, per_token, modulate = case
    x = torch.randn(B, L, D, device=device) * 3 + 1
    y = torch.randn(B, L, D, device=device).bfloat16() if has_y else None
    mod = torch.randn(R if per_token else B, 6, D, device=device)
    rows = torch.randint(0, R, (B, L), device=device) if per_token else None
    gate = mod[:, 2] if has_gate else None
    weight, bias = (mod[:, 1], mod[:, 0]) if modulate else (torch.randn(D, device=device), torch.randn(D, device=device))
    return x, y, gate, weight, bias, rows


def reference(x, y, gate, weight, bias, rows, modulate: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager expressions, x left as it is: (the updated stream, the fp32 LayerNorm rows)."""
    import torch.nn.functional as F

    pick = (lambda t: t[rows]) if rows is not None else (lambda t: t[:, None])
    stream = x.clone()
    if y is not None:
        stream += y.float() * pick(gate) if gate is not None else y.float()
    if modulate:
        return stream, F.layer_norm(stream, (x.shape[-1],), eps=eps) * (1 + pick(weight)) + pick(bias)
    return stream, F.layer_norm(stream, (x.shape[-1],), weight, bias, eps)


# Each case: (y given, gate given, per-token rows, modulate); every block site and both row layouts.
_INTERPRETED = r"""
import json, sys, torch
from tests.wan_core.ops.test_fused_norm import draw_case, reference
from wan_core.ops import fused_norm
from wan_core.ops.fp8 import E4M3, quantize_rows
torch.manual_seed(0)
B, L, D, R, EPS = 2, 21, 40, 3, 1e-6  # D not a power of two: masked lanes
results = []
for case in json.loads(sys.argv[1]):
    modulate = case[3]
    x, y, gate, weight, bias, rows = draw_case(case, B, L, D, R)
    x0 = x.clone()
    expected, ref = reference(x, y, gate, weight, bias, rows, modulate, EPS)
    out = torch.empty(B, L, D, dtype=torch.bfloat16)
    fused_norm.launch(fused_norm._residual_norm_kernel, x, y, gate, weight, bias, rows, modulate, EPS, out)
    # the same rows in e4m3 with their scales: the stream and the scales (the interpreter's own
    # e4m3 cast drops the carry when rounding up crosses a power of two, so the e4m3 values
    # themselves are checked on the GPU, below)
    x8 = x0.clone()
    out8, scale = torch.empty(B, L, D, dtype=E4M3), torch.empty(B, L, 1)
    fused_norm.launch(fused_norm._residual_norm_kernel, x8, y, gate, weight, bias, rows, modulate, EPS, out8, scale)
    want = quantize_rows(ref)
    results.append({
        "stream": (x - expected).abs().max().item(),
        "out_ulps": ((out.float() - ref.bfloat16().float()).abs() / ref.float().abs().clamp_min(1e-3)).max().item() * 128,
        "out_rel": ((out.float() - ref).norm() / ref.norm()).item(),
        "fp8_stream": (x8 - expected).abs().max().item(),
        "fp8_scale_rel": ((scale - want.scale).abs() / want.scale).max().item(),
    })
print(json.dumps(results))
"""

CASES = [
    (False, False, False, True),  # block start: modulated norm only
    (True, True, False, False),  # after self-attention: gated residual, affine norm3
    (True, False, True, True),  # after cross-attention, TI2V per-token rows
    (True, True, True, True),
]


def test_kernel_matches_the_eager_expressions() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED, json.dumps(CASES)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for case, result in zip(CASES, json.loads(done.stdout.strip().splitlines()[-1]), strict=True):
        assert result["stream"] <= 1e-6, (case, result)  # x += y·gate: the same fp32 arithmetic
        assert result["out_ulps"] <= 1.01, (case, result)  # at most one bf16 rounding step apart
        assert result["out_rel"] < 4e-3, (case, result)  # bf16 rounding of the output, nothing more
        assert result["fp8_stream"] <= 1e-6, (case, result)
        assert result["fp8_scale_rel"] < 1e-6, (case, result)  # the row's largest magnitude / 448


def test_unavailable_off_cuda() -> None:
    from wan_core.ops import fused_norm

    assert not fused_norm.available(torch.zeros(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_cuda_fp8_rows_are_torchs_quantization_of_the_fp32_rows(case: tuple[bool, bool, bool, bool]) -> None:
    """The kernel's e4m3 rows and scales are `quantize_rows` of the fp32 LayerNorm rows."""
    from wan_core.ops import fused_norm
    from wan_core.ops.fp8 import E4M3, RowScaled, quantize_rows

    has_y, modulate = case[0], case[3]
    torch.manual_seed(0)
    B, L, D, R, eps = 2, 333, 5120, 3, 1e-6  # the A14B's width
    x, y, gate, weight, bias, rows = draw_case(case, B, L, D, R, "cuda")
    stream, ref = reference(x, y, gate, weight, bias, rows, modulate, eps)
    if has_y:
        got = fused_norm.add_norm_(x, y, gate, weight, bias, rows, modulate=modulate, eps=eps, out_dtype=E4M3)
    else:
        got = fused_norm.norm(x, weight, bias, rows, modulate=modulate, eps=eps, out_dtype=E4M3)
    want = quantize_rows(ref)
    assert isinstance(got, RowScaled) and got.data.dtype == E4M3 and got.scale.shape == (B, L, 1)
    torch.testing.assert_close(x, stream, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.scale, want.scale, rtol=1e-6, atol=0)
    apart = got.data.float() != want.data.float()
    # fp32 rounding of the mean and variance may move a value across a rounding tie: rare, one step
    assert float(apart.float().mean()) < 1e-3
    step = torch.where(want.data.float().abs() < 2**-6, 2.0**-9, want.data.float().abs() * 2.0**-3)
    assert bool(((got.data.float() - want.data.float()).abs() <= step * 1.01).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flavor", ["tiny-t2v", "tiny-ti2v"])
@pytest.mark.parametrize("precision", ["exact", "fp8"])
@torch.no_grad()
def test_cuda_compiled_block_matches_the_eager_expressions(flavor: str, precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled bf16 block with the fused kernels updates the stream as the eager one does;
    with FP8 layers, the kernels' e4m3 rows feed them as the eager quantization does."""
    import dataclasses

    from wan_core.models import dit
    from wan_core.ops import fused_norm
    from wan_core.ops.quant import quantize_dit

    if precision == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 layers need compute capability 8.9 or newer")
    torch.manual_seed(0)
    cfg = dataclasses.replace(dit.DiTConfig.flavor(flavor), dim=256, num_heads=2, ffn_dim=512, text_len=16)
    block = dit.WanAttentionBlock(cfg).cuda().to(torch.bfloat16)
    block.modulation.data = block.modulation.float()
    if precision == "fp8":
        holder = torch.nn.Module()
        holder.blocks = torch.nn.ModuleList([block])
        quantize_dit(holder, "fp8")
    L, R = 300, 2
    x = torch.randn(1, L, cfg.dim, device="cuda") * 2
    e0 = torch.randn(R, 6, cfg.dim, device="cuda") * 0.1
    context = torch.randn(1, cfg.text_len, cfg.dim, device="cuda", dtype=torch.bfloat16)
    freqs = dit.rope_freqs(dit.grid_positions((3, 10, 10), "cuda"), cfg.head_dim)
    rows = torch.randint(0, R, (1, L), device="cuda") if cfg.model_type == "ti2v" else None
    e0 = e0 if rows is not None else e0[:1]

    fused = torch.compile(block, dynamic=False)(x.clone(), e0, context, freqs, rows)
    monkeypatch.setattr(fused_norm, "available", lambda x: False)
    eager = block(x.clone(), e0, context, freqs, rows)
    cos = torch.nn.functional.cosine_similarity(fused.flatten(), eager.flatten(), dim=0)
    # FP8: the same rows and GEMMs; only a value on a rounding tie may land one e4m3 step apart
    assert cos > (0.99999 if precision == "exact" else 0.9999), cos
    assert float((fused - eager).norm() / eager.norm()) < (2e-3 if precision == "exact" else 1e-2)

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

# Each case: (y given, gate given, per-token rows, modulate); every block site and both row layouts.
_INTERPRETED = r"""
import json, sys, torch, torch.nn.functional as F
from wan_core.ops import fused_norm
torch.manual_seed(0)
B, L, D, R, EPS = 2, 21, 40, 3, 1e-6  # D not a power of two: masked lanes
results = []
for has_y, has_gate, per_token, modulate in json.loads(sys.argv[1]):
    x = torch.randn(B, L, D) * 3 + 1
    y = torch.randn(B, L, D).bfloat16() if has_y else None
    mod = torch.randn(R if per_token else B, 6, D)
    rows = torch.randint(0, R, (B, L)) if per_token else None
    gate = mod[:, 2] if has_gate else None
    if modulate:
        weight, bias = mod[:, 1], mod[:, 0]
    else:
        weight, bias = torch.randn(D), torch.randn(D)
    pick = (lambda t: t[rows]) if per_token else (lambda t: t[:, None])
    expected = x.clone()
    if has_y:
        expected += y.float() * pick(gate) if has_gate else y.float()
    if modulate:
        ref = F.layer_norm(expected, (D,), eps=EPS) * (1 + pick(weight)) + pick(bias)
    else:
        ref = F.layer_norm(expected, (D,), weight, bias, EPS)
    out = torch.empty(B, L, D, dtype=torch.bfloat16)
    fused_norm.launch(fused_norm._residual_norm_kernel, x, y, gate, weight, bias, rows, modulate, EPS, out)
    results.append({
        "stream": (x - expected).abs().max().item(),
        "out_ulps": ((out.float() - ref.bfloat16().float()).abs() / ref.float().abs().clamp_min(1e-3)).max().item() * 128,
        "out_rel": ((out.float() - ref).norm() / ref.norm()).item(),
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


def test_unavailable_off_cuda() -> None:
    from wan_core.ops import fused_norm

    assert not fused_norm.available(torch.zeros(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flavor", ["tiny-t2v", "tiny-ti2v"])
@torch.no_grad()
def test_cuda_compiled_block_matches_the_eager_expressions(flavor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled bf16 block with the fused kernels updates the stream as the eager one does."""
    import dataclasses

    from wan_core.models import dit
    from wan_core.ops import fused_norm

    torch.manual_seed(0)
    cfg = dataclasses.replace(dit.DiTConfig.flavor(flavor), dim=256, num_heads=2, ffn_dim=512, text_len=16)
    block = dit.WanAttentionBlock(cfg).cuda().to(torch.bfloat16)
    block.modulation.data = block.modulation.float()
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
    assert cos > 0.99999, cos
    assert float((fused - eager).norm() / eager.norm()) < 2e-3

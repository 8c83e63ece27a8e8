"""Opt-in lossy precision (wan_core.ops.quant): refused up front where it cannot run, and on an
FP8 GPU close to exact mode and movable between CPU and GPU (the pipeline's offload)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from wan_core.models.dit import DiTConfig, WanModel
from wan_core.ops.fp8 import Fp8Linear
from wan_core.ops.quant import QUANT_MODES, check_quantization, quantize_dit
from wanspec.tasks import PRECISIONS

CPU = torch.device("cpu")


def test_modes_are_the_spec_precisions_but_exact() -> None:
    assert ("exact", *QUANT_MODES) == PRECISIONS


def test_exact_is_always_allowed() -> None:
    check_quantization("exact", CPU, dit_fsdp=True)


@pytest.mark.parametrize(
    ("mode", "dit_fsdp", "message"),
    [
        ("int4", False, "unknown precision 'int4'; choose one of exact, fp8, fp8-full"),
        ("fp8", False, "needs a GPU with FP8 tensor cores .* this run is on cpu: use precision 'exact'"),
        ("fp8-full", False, "precision 'fp8-full' needs a GPU with FP8 tensor cores"),
    ],
)
def test_what_cannot_run_is_refused_with_the_fix(mode: str, dit_fsdp: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_quantization(mode, CPU, dit_fsdp)


def test_quantize_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown DiT quantization 'exact'"):
        quantize_dit(WanModel(DiTConfig.flavor("tiny-t2v")), "exact")


def test_fp8_layers_follow_exact_mode_on_the_cpu() -> None:
    """Every block Linear becomes an FP8 layer, fed e4m3 rows by the norms (the eager path)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(DiTConfig.flavor("tiny-ti2v"), dim=256, ffn_dim=512, num_heads=2, text_len=16)
    exact = WanModel(cfg).eval().to(torch.bfloat16)
    fp8 = WanModel(cfg).eval().to(torch.bfloat16)
    fp8.load_state_dict(exact.state_dict())
    linears = sum(isinstance(m, torch.nn.Linear) for m in exact.blocks.modules())
    quantize_dit(fp8, "fp8")
    assert sum(isinstance(m, Fp8Linear) for m in fp8.blocks.modules()) == linears
    assert not any(isinstance(m, torch.nn.Linear) for m in fp8.blocks.modules())
    x = torch.randn(1, cfg.in_dim, 3, 16, 16)
    context = torch.randn(1, cfg.text_len, cfg.text_dim)
    t = torch.tensor([700.0])
    try:
        with torch.inference_mode():
            got = fp8(x, t, context)
    except (RuntimeError, NotImplementedError) as e:  # torch builds without CPU FP8 GEMMs
        pytest.skip(f"torch._scaled_mm does not run on the CPU here: {e}")
    with torch.inference_mode():
        want = exact(x, t, context)
    cosine = torch.nn.functional.cosine_similarity(got.flatten().double(), want.flatten().double(), dim=0)
    assert cosine > 0.99


def _runnable(mode: str) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        check_quantization(mode, torch.device("cuda"), dit_fsdp=False)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_lossy_modes_follow_exact_mode_and_move_between_devices(mode: str) -> None:
    if not _runnable(mode):
        pytest.skip(f"{mode} cannot run here (fp8: compute capability ≥ 8.9; fp8-full: Hopper and flashinfer or the cuDNN frontend)")
    torch.manual_seed(0)
    cfg = dataclasses.replace(DiTConfig.flavor("tiny-t2v"), dim=256, ffn_dim=512, num_heads=2, text_len=16)
    exact = WanModel(cfg).eval().to(torch.bfloat16)
    fp8 = WanModel(cfg).eval().to(torch.bfloat16)
    fp8.load_state_dict(exact.state_dict())
    quantize_dit(fp8, mode)  # on the CPU, as the pipeline does before its first move
    backends = {block.self_attn.attention_backend for block in fp8.blocks}
    assert backends == ({"fp8"} if mode == "fp8-full" else {None})
    x = torch.randn(1, cfg.in_dim, 3, 16, 16, device="cuda")
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device="cuda")
    t = torch.tensor([700.0], device="cuda")
    exact.cuda()
    fp8.cuda()
    with torch.inference_mode():
        want = exact(x, t, context)
        got = fp8(x, t, context)
    fp8.cpu().cuda()  # offloaded and back (between sampling runs, as the pipeline does)
    with torch.inference_mode():
        again = fp8(x, t, context)
    cosine = torch.nn.functional.cosine_similarity(got.flatten().double(), want.flatten().double(), dim=0)
    assert cosine > 0.99
    torch.testing.assert_close(again, got, rtol=0, atol=0)

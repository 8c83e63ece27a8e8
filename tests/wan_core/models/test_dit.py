"""Our Wan2.2 DiT against diffusers' `WanTransformer3DModel` with the same tiny random weights.

Relative error is max|ours − ref| / max|ref|, fp32 on CPU. Tiny configs use head dim 16 so the
RoPE split is uneven (8/4/4 real dims, like 44/42/42 at full size), an odd token count (3·3·5)
and zero-padded text. Diffusers computes the timestep sinusoid in fp32 while upstream uses
float64 (spec §3.3); the reference gets the spec's float64 sinusoid, written out here, so the
comparison measures the rest of the network; the fp32 gap is checked separately.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

from wan_core.models.dit import DiTConfig, WanModel, apply_rope, grid_positions, rope_freqs, sinusoidal_embedding
from wan_core.testing.diffusers_wan import diffusers_wan

TOL = 1e-5
GRID = (3, 6, 10)  # latent F, H, W → 3·3·5 = 45 tokens
TEXT_LEN = 24  # enough for a padded context; the official 512 only costs time here


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def tiny(flavor: str) -> DiTConfig:
    return dataclasses.replace(DiTConfig.flavor(flavor), text_len=TEXT_LEN)


def random_model(cfg: DiTConfig, seed: int = 0) -> WanModel:
    """Weights drawn so every path matters: norm gains near 1, everything else N(0, 0.2²)."""
    gen = torch.Generator().manual_seed(seed)
    model = WanModel(cfg).eval().requires_grad_(False)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(1 + 0.1 * noise if "norm" in name else 0.2 * noise)
    return model


class Float64Sinusoid(nn.Module):
    """Spec §3.3 verbatim: ω_j = 10000^(−j/128) and [cos(tω), sin(tω)] in float64 → fp32."""

    def forward(self, t: Tensor) -> Tensor:
        omega = torch.pow(10000.0, -torch.arange(128, dtype=torch.float64) / 128)
        phase = torch.outer(t.double(), omega)
        return torch.cat([phase.cos(), phase.sin()], dim=1).float()


def reference(model: WanModel) -> nn.Module:
    ref = diffusers_wan(model.cfg, model.state_dict(), "cpu")
    ref.condition_embedder.timesteps_proj = Float64Sinusoid()
    return ref


def inputs(cfg: DiTConfig, batch: int = 2, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Latents and a context whose prompts are 5 and 11 tokens long, zero-padded."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16 if cfg.model_type == "i2v" else cfg.in_dim, *GRID, generator=gen)
    context = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=gen)
    for b, n in enumerate([5, 11][:batch]):
        context[b, n:] = 0
    return x, context


@torch.no_grad()
def test_t2v_matches_diffusers() -> None:
    model = random_model(tiny("tiny-t2v"))
    x, context = inputs(model.cfg)
    t = torch.tensor([999, 417])
    err = rel_err(model(x, t, context), reference(model)(x, t, context, return_dict=False)[0])
    assert err <= TOL, err


@torch.no_grad()
def test_i2v_matches_diffusers() -> None:
    model = random_model(tiny("tiny-i2v"))
    x, context = inputs(model.cfg)
    gen = torch.Generator().manual_seed(2)
    mask = torch.zeros(2, 4, *GRID)
    mask[:, :, 0] = 1  # first latent frame is the given image
    y = torch.cat([mask, torch.randn(2, 16, *GRID, generator=gen)], dim=1)  # (B, 20, F, H, W)
    t = torch.tensor([900, 3])
    ours = model(x, t, context, y=y)
    ref = reference(model)(torch.cat([x, y], dim=1), t, context, return_dict=False)[0]
    assert ours.shape == (2, 16, *GRID)
    err = rel_err(ours, ref)
    assert err <= TOL, err


@torch.no_grad()
def test_ti2v_per_token_timesteps_match_diffusers() -> None:
    model = random_model(tiny("tiny-ti2v"))
    x, context = inputs(model.cfg)
    tokens = math.prod(GRID) // 4
    t = torch.tensor([[750.0], [250.0]]).expand(2, tokens).clone()
    t[:, : tokens // GRID[0]] = 0  # first-frame tokens hold the clean image latent
    ours = model(x, t, context)
    ref = reference(model)(x, t, context, return_dict=False)[0]
    assert ours.shape == (2, 48, *GRID)
    err = rel_err(ours, ref)
    assert err <= TOL, err


@torch.no_grad()
def test_scalar_and_uniform_per_token_timesteps_agree() -> None:
    model = random_model(tiny("tiny-ti2v"))
    x, context = inputs(model.cfg)
    t = torch.tensor([600, 20])
    per_token = t[:, None].expand(2, math.prod(GRID) // 4).float()
    err = rel_err(model(x, per_token, context), model(x, t, context))
    assert err <= TOL, err  # only the matmul shapes differ


@torch.no_grad()
def test_official_list_interface() -> None:
    """List form with seq_len padding and per-token t over seq_len equals the batched form."""
    model = random_model(tiny("tiny-ti2v"))
    x, context = inputs(model.cfg)
    tokens = math.prod(GRID) // 4
    t = torch.full((2, tokens + 3), 500.0)
    t[:, :15] = 0
    out = model.forward_official(list(x), t, [context[0, :5], context[1, :11]], seq_len=tokens + 3)
    assert rel_err(torch.stack(out), model(x, t[:, :tokens], context)) == 0


def test_sinusoid_is_float64_exact_and_diffusers_fp32_differs_slightly() -> None:
    t = torch.tensor([0, 1, 417, 999])
    ours = sinusoidal_embedding(t, 256)
    assert torch.equal(ours, Float64Sinusoid()(t))
    from diffusers.models.embeddings import Timesteps

    fp32 = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    assert 0 < (fp32 - ours).abs().max() < 1e-4  # why the reference gets the float64 one


def test_rope_matches_official_complex_float64_table() -> None:
    """Spec §3.4: per-axis θ = 10000^(−2k/d_a), complex128 multipliers, interleaved pairs."""
    head_dim, grid = 16, (3, 4, 5)
    c = head_dim // 2
    splits = [c - 2 * (c // 3), c // 3, c // 3]  # 4, 2, 2 pairs
    tables = [
        torch.polar(torch.ones(1024, n, dtype=torch.float64), torch.outer(torch.arange(1024.0, dtype=torch.float64), 10000.0 ** -(torch.arange(n, dtype=torch.float64) * 2 / (2 * n))))
        for n in splits
    ]
    f, h, w = grid
    mult = torch.cat(
        [
            tables[0][:f, None, None].expand(f, h, w, -1),
            tables[1][None, :h, None].expand(f, h, w, -1),
            tables[2][None, None, :w].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(-1, 1, c)  # (L, 1, c)
    q = torch.randn(2, f * h * w, 3, head_dim, generator=torch.Generator().manual_seed(0))
    official = torch.view_as_real(torch.view_as_complex(q.double().unflatten(-1, (-1, 2))) * mult).flatten(-2).float()
    ours = apply_rope(q, rope_freqs(grid_positions(grid), head_dim))
    err = rel_err(ours, official)
    assert err <= 1e-6, err


def test_rope_of_a_sequence_shard_uses_its_true_positions() -> None:
    """What a sequence-parallel wrapper relies on: rows of a shard = rows of the full table."""
    positions = grid_positions((5, 7, 9))
    shard = slice(100, 163)
    assert torch.equal(rope_freqs(positions, 128)[shard], rope_freqs(positions[shard], 128))


@torch.no_grad()
def test_bf16_weights_keep_fp32_islands() -> None:
    model = random_model(tiny("tiny-t2v"))
    x, context = inputs(model.cfg)
    t = torch.tensor([999, 417])
    ref = model(x, t, context)
    model = model.to(torch.bfloat16)
    e, e0, _ = model.embed_time(t)
    out = model(x, t, context)
    assert e.dtype == e0.dtype == out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999


def test_parameter_names_shapes_and_counts_match_spec() -> None:
    """Spec §1.2 / §2.2: per-model parameter and key counts, a few shapes, no buffers."""
    expected = {"t2v-A14B": (14_288_491_584, 1095), "i2v-A14B": (14_288_901_184, 1095), "ti2v-5B": (4_999_787_712, 825)}
    for flavor, (params, keys) in expected.items():
        with torch.device("meta"):
            model = WanModel(DiTConfig.flavor(flavor))
        sd = model.state_dict()
        assert (sum(p.numel() for p in sd.values()), len(sd)) == (params, keys)
        assert not list(model.buffers())
    dim, in_dim = 5120, 36
    assert sd["patch_embedding.weight"].shape == (3072, 48, 1, 2, 2)
    with torch.device("meta"):
        sd = WanModel(DiTConfig.flavor("i2v-A14B")).state_dict()
    shapes = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2),
        "text_embedding.0.weight": (dim, 4096),
        "time_projection.1.weight": (6 * dim, dim),
        "blocks.39.modulation": (1, 6, dim),
        "blocks.39.self_attn.norm_q.weight": (dim,),
        "blocks.39.norm3.bias": (dim,),
        "blocks.39.cross_attn.o.weight": (dim, dim),
        "blocks.39.ffn.0.weight": (13824, dim),
        "head.modulation": (1, 2, dim),
        "head.head.weight": (64, dim),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes


def test_forward_refuses_wrong_conditioning() -> None:
    model = random_model(tiny("tiny-i2v"))
    x, context = inputs(model.cfg)
    with pytest.raises(ValueError, match="y .* must be given exactly for i2v"):
        model(x, torch.tensor([1, 2]), context)
    with pytest.raises(ValueError, match="zero-padded"):
        model(x, torch.tensor([1, 2]), context[:, :5], y=torch.zeros(2, 20, *GRID))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_matches_cpu() -> None:
    """fp32 on the GPU (TF32 off) through SDPA = CPU math; bf16 on the GPU stays close."""
    from wan_core.ops.attention import attention_backend

    model = random_model(tiny("tiny-ti2v"))
    x, context = inputs(model.cfg)
    tokens = math.prod(GRID) // 4
    t = torch.full((2, tokens), 700.0)
    t[:, :15] = 0
    cpu = model(x, t, context)
    gpu_model, args = model.cuda(), (x.cuda(), t.cuda(), context.cuda())
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with attention_backend("sdpa"):
            err = rel_err(gpu_model(*args).cpu(), cpu)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert err <= TOL, err
    bf16 = gpu_model.to(torch.bfloat16)(*args).cpu()
    assert torch.nn.functional.cosine_similarity(bf16.flatten(), cpu.flatten(), dim=0) > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_ffn_with_gelu_in_the_gemm_epilogue() -> None:
    """bf16 FFN with the GELU fused into the first GEMM is as close to fp32 as the unfused one;
    fp32 weights, with or without autocast, keep the modules' path."""
    from wan_core.models.dit import _ffn

    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(256, 1024), nn.GELU(approximate="tanh"), nn.Linear(1024, 256)).cuda()
    x = torch.randn(2, 1000, 256, device="cuda")
    ref = ffn(x).double()
    bf16 = ffn.to(torch.bfloat16)
    fused = _ffn(bf16, x.bfloat16()).double()
    unfused = bf16(x.bfloat16()).double()
    assert fused.shape == ref.shape

    def err(y: Tensor) -> float:
        return float((y - ref).norm() / ref.norm())

    assert err(fused) <= 1.2 * err(unfused) and err(fused) < 1e-2, (err(fused), err(unfused))
    assert torch.nn.functional.cosine_similarity(fused.flatten(), ref.flatten(), dim=0) > 0.9999
    fp32 = ffn.float()  # fp32 weights (exact mode, or under autocast): the modules
    assert torch.equal(_ffn(fp32, x), fp32(x))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.equal(_ffn(fp32, x), fp32(x))


@torch.no_grad()
def test_fp32_islands_survive_an_outer_bf16_autocast() -> None:
    """Pipelines may run fp32 weights under autocast(bf16), as upstream does (§3.8)."""
    model = random_model(tiny("tiny-t2v"))
    x, context = inputs(model.cfg)
    t = torch.tensor([999, 417])
    e, e0, _ = model.embed_time(t)
    ref = model(x, t, context)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e_auto, e0_auto, _ = model.embed_time(t)
        out = model(x, t, context)
    assert torch.equal(e, e_auto) and torch.equal(e0, e0_auto)
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999

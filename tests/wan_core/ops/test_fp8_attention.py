"""FP8 attention (wan_core.ops.fp8_attention): never chosen unless forced, refused with the reason
where it cannot run, its quantization exact in the ways the docstring claims, and on a Hopper GPU
close to exact attention with either kernel, even where keys and values carry large channel offsets."""

from __future__ import annotations

import operator

import pytest
import torch

from wan_core.models.dit import (
    DiTConfig,
    WanModel,
    WanSelfAttention,
    grid_positions,
    rope_freqs,
)
from wan_core.ops import fp8_attention
from wan_core.ops.attention import (
    BACKENDS,
    attention,
    attention_with_shift,
    select_backend,
)

quantize = fp8_attention._quantize  # eager here (`run` compiles it): same math, no CPU compile in tests


def _inputs(offset: float, n: int = 96, heads: int = 2, dim: int = 128) -> tuple[torch.Tensor, ...]:
    """q (scaled so the softmax is peaked), k and v; k and v plus per-channel offsets of scale `offset`."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, dim, generator=gen) for _ in range(3))
    bias = offset * torch.randn(2, 1, 1, heads, dim, generator=gen)
    return 2 * q, k + bias[0], v + bias[1]


def test_lossy_backends_are_never_picked_unless_forced() -> None:
    assert [b.name for b in BACKENDS.values() if not b.exact] == ["fp8"]
    q = torch.randn(1, 4, 2, 128, dtype=torch.bfloat16)
    assert select_backend(q, q, q).exact
    with pytest.raises(RuntimeError, match="'fp8' cannot run this request: needs CUDA tensors, got cpu"):
        attention(q, q, q, backend="fp8")


def test_self_attention_takes_the_backend_set_on_it() -> None:
    """The model's one hook for precision modes: `attention_backend` on each self-attention."""
    model = WanModel(DiTConfig.flavor("tiny-t2v")).eval()
    cfg = model.cfg
    x = torch.randn(1, cfg.in_dim, 1, 4, 4)
    t, context = torch.tensor([500.0]), torch.randn(1, cfg.text_len, cfg.text_dim)
    with torch.no_grad():
        exact = model(x, t, context)
        for block in model.blocks:
            block.self_attn.attention_backend = "math"
        assert torch.equal(model(x, t, context), exact)  # math is what the CPU picks anyway
        model.blocks[1].self_attn.attention_backend = "fp8"
        with pytest.raises(RuntimeError, match="'fp8' cannot run this request"):
            model(x, t, context)


def test_only_fp8_by_name_hands_back_a_shift() -> None:
    q, k, v = (x.bfloat16() for x in _inputs(0.0, n=16))
    out, shift = attention_with_shift(q, k, v, backend="math")
    assert shift is None and torch.equal(out, attention(q, k, v, backend="math"))
    with pytest.raises(RuntimeError, match="'fp8' cannot run this request: needs CUDA tensors, got cpu"):
        attention_with_shift(q, k, v, backend="fp8")


def test_compiled_self_attention_adds_v_mean_on_the_way_to_o() -> None:
    """fp8-full's self-attention traces as one graph around one opaque kernel operator, and the
    add of V's mean sits between it and the o projection (Inductor fuses it into the kernel that
    quantizes o's rows). On the CPU the operator then refuses, with the reason."""
    graphs = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    attn = WanSelfAttention(256, 2, 1e-6).to(torch.bfloat16)
    attn.attention_backend = "fp8"
    x = torch.randn(1, 12, 256, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="'fp8' cannot run this request: needs CUDA tensors, got cpu"):
        torch.compile(attn, backend=capture, fullgraph=True)(x, rope_freqs(grid_positions((1, 3, 4), x.device), 128))
    (graph,) = graphs
    targets = [n.target for n in graph.graph.nodes]
    assert targets.count(torch.ops.wanops.fp8_attention.default) == 1
    after = targets[targets.index(torch.ops.wanops.fp8_attention.default) + 1 :]
    assert after.index(operator.add) < after.index(torch._C._nn.linear)  # O + V's mean, then o


@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_quantization_uses_the_whole_e4m3_range_after_smoothing(offset: float) -> None:
    _, k, _ = _inputs(offset)
    k8, scale, descale, mean = quantize(k, True)
    assert k8.dtype == torch.float8_e4m3fn and mean.shape == (1, 1, 2, 128)
    assert torch.allclose(mean, k.mean(1, keepdim=True))
    assert k8.float().abs().max() == fp8_attention.E4M3_MAX  # the largest |k − mean| maps to 448 exactly
    assert torch.allclose(scale * descale, torch.ones(()))
    back = k8.float() * descale + mean
    # e4m3 keeps 3 mantissa bits: each element within 1/16 of its magnitude (or a subnormal step)
    assert ((back - k).abs() <= (k - mean).abs() / 16 + descale * 2**-9).all()


def test_quantization_without_smoothing_keeps_zero_as_the_centre() -> None:
    q, _, _ = _inputs(0.0)
    q8, _, descale, mean = quantize(q, False)
    assert mean is None
    assert torch.allclose(q8.float().abs().max() * descale, q.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available() or fp8_attention.device_problem(torch.device("cuda")) is not None, reason="needs a Hopper GPU and flashinfer or the cuDNN frontend")
@pytest.mark.parametrize("kernel", ["flashinfer", "cudnn"])
@pytest.mark.parametrize("offset", [0.0, 4.0])
def test_fp8_attention_follows_exact_attention_on_hopper(offset: float, kernel: str) -> None:
    """Both kernels take the same quantized inputs and must meet the same bar."""
    if kernel == "flashinfer" and (why := fp8_attention._flashinfer_problem(torch.device("cuda"), torch.bfloat16)):
        pytest.skip(why)
    if kernel == "cudnn" and fp8_attention._frontend() is None:
        pytest.skip("the cuDNN frontend is not importable")
    q, k, v = (x.cuda().bfloat16() for x in _inputs(offset, n=1000, heads=4))
    exact = attention(q, k, v, backend="sdpa").float()
    fp8 = fp8_attention.run(q, k, v, kernel=kernel).float()
    assert fp8.shape == exact.shape and fp8.dtype == torch.float32
    # Error against what varies between queries; an emulation of these numerics gives 0.08 / 0.09,
    # and without smoothing offsets of 4 would leave e4m3 a quarter of its precision for it.
    assert (fp8 - exact).norm() / (exact - exact.mean(1, keepdim=True)).norm() < 0.15
    assert torch.nn.functional.cosine_similarity(fp8.flatten(), exact.flatten(), dim=0) > 0.99

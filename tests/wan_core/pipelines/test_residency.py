"""Residency: experts move to the device and back without copying their weights back.

The device here is `meta` on the CPU (a move there keeps shapes, drops data), so what comes back
on release can only be the kept host copy; the CUDA tests check the background prefetch and the
pinned staging of the copies.
"""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from torch import nn

from wan_core.pipelines import residency
from wan_core.pipelines.residency import PinnedStager, Residency

META = torch.device("meta")


def experts() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"high": nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4)), "low": nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))}


def test_release_points_back_at_the_host_copy() -> None:
    models = experts()
    before = {name: [(p.data_ptr(), p.clone()) for p in m.parameters()] for name, m in models.items()}
    res = Residency(models, META)
    res.activate("high")
    assert res.on_device("high") and not res.on_device("low")
    res.activate("low")  # releases "high" first
    assert res.on_device("low") and not res.on_device("high")
    for p, (ptr, value) in zip(models["high"].parameters(), before["high"]):
        assert p.device.type == "cpu" and p.data_ptr() == ptr and torch.equal(p, value)
    res.release_all()
    for p, (ptr, value) in zip(models["low"].parameters(), before["low"]):
        assert p.data_ptr() == ptr and torch.equal(p, value)


def test_keep_others_and_release_all_but_one() -> None:
    models = experts()
    res = Residency(models, META)
    res.activate("high", keep_others=True)
    res.activate("low", keep_others=True)
    assert res.on_device("high") and res.on_device("low")
    res.release_all(except_="low")
    assert not res.on_device("high") and res.on_device("low")
    assert res.nbytes("high") == sum(p.numel() * 4 for p in models["high"].parameters())


def test_buffer_weights_come_back_and_count_too() -> None:
    """The FP8 layers of the lossy precisions keep their weights as buffers."""
    from wan_core.ops.fp8 import Fp8Linear

    layer = Fp8Linear(nn.Linear(16, 32).bfloat16())
    host = {n: t.data_ptr() for n, t in layer.named_buffers()}
    res = Residency({"q": layer}, META)
    res.activate("q")
    assert layer.weight.device == META and layer.weight_scale.device == META and layer.bias.device == META
    res.release("q")
    assert {n: t.data_ptr() for n, t in layer.named_buffers()} == host  # re-pointed, not copied back
    assert res.nbytes("q") == 32 * 16 * 1 + 32 * 4 + 32 * 2  # e4m3 weight, fp32 scales, bf16 bias


def test_prefetch_is_a_no_op_off_cuda() -> None:
    res = Residency(experts(), torch.device("cpu"))
    res.prefetch("low")
    assert res.on_device("low") and res.activate("low") is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_prefetch_then_switch_without_copy_back() -> None:
    models = experts()
    x = torch.randn(3, 8)
    ref = {name: m(x) for name, m in models.items()}
    host_ptrs = [p.data_ptr() for p in models["high"].parameters()]
    res = Residency(models, torch.device("cuda", torch.cuda.current_device()))
    high = res.activate("high", keep_others=True)
    res.prefetch("low")
    torch.testing.assert_close(high(x.cuda()).cpu(), ref["high"])
    low = res.activate("low", keep_others=True)
    assert res.on_device("high") and res.on_device("low")
    torch.testing.assert_close(low(x.cuda()).cpu(), ref["low"])
    res.release("high")
    assert [p.data_ptr() for p in models["high"].parameters()] == host_ptrs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_staging_copies_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors larger than a staging buffer, several per buffer cycle, odd sizes, dtypes and
    layouts: each arrives whole (small buffers, so every buffer is refilled many times)."""
    monkeypatch.setattr(residency, "STAGING_BYTES", 1000)
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(123, 45, generator=g),  # 22,140 bytes: 23 chunks
        torch.randn(7, generator=g).to(torch.bfloat16),
        torch.randint(0, 1 << 40, (301,), generator=g),
        torch.randn(40, 30, generator=g).t(),  # not contiguous
        torch.tensor(3.5),
        torch.empty(0, 5),
        torch.rand(999, generator=g) > 0.5,
    ]
    device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device)
    copies = PinnedStager(device).copy(tensors, stream)
    for host, copy in zip(tensors, copies, strict=True):
        assert copy.device == device and copy.dtype == host.dtype and copy.shape == host.shape
        assert torch.equal(copy.cpu(), host)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def test_cast_weights_on_the_device_keep_their_host_copy() -> None:
    """`cast` (convert_model_dtype done on the GPU): bf16 on the device, the fp32 host copy untouched."""
    models = experts()
    host = [(p.data_ptr(), p.dtype) for p in models["high"].parameters()]
    res = Residency(models, META, cast=torch.bfloat16)
    assert res.nbytes("high") == sum(p.numel() * 2 for p in models["high"].parameters())
    res.activate("high")
    assert {p.dtype for p in models["high"].parameters()} == {torch.bfloat16}
    res.release("high")
    assert [(p.data_ptr(), p.dtype) for p in models["high"].parameters()] == host


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_staging_casts_as_the_cpu_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cast on the way in gives the bits of the CPU's `.to(bf16)` (both round to nearest even),
    chunk boundaries included; integer and bool tensors keep their dtype."""
    monkeypatch.setattr(residency, "STAGING_BYTES", 1000)
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(123, 45, generator=g) * 1e3,  # 23 chunks, values needing rounding
        torch.randn(40, 30, generator=g).t(),  # not contiguous
        # ties, a subnormal, inf (not NaN: CUDA writes 0x7FFF where the CPU writes 0x7FC0; weights hold none)
        torch.tensor([1 + 2**-8, 1 + 3 * 2**-9, -(2**-130), float("inf")]),
        torch.randint(0, 1 << 40, (301,), generator=g),
        torch.rand(999, generator=g) > 0.5,
    ]
    dtypes = [torch.bfloat16 if t.is_floating_point() else t.dtype for t in tensors]
    device = torch.device("cuda", torch.cuda.current_device())
    copies = PinnedStager(device).copy(tensors, torch.cuda.Stream(device), dtypes)
    for host, copy, dtype in zip(tensors, copies, dtypes, strict=True):
        assert copy.device == device and copy.dtype == dtype and copy.shape == host.shape
        assert same_bits(copy.cpu(), host.to(dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cast_activate_matches_a_converted_model() -> None:
    """The same forward as a model converted to bf16 on the CPU first, then moved; release keeps fp32."""
    models = experts()
    x = torch.randn(3, 8, device="cuda", dtype=torch.bfloat16)
    converted = {n: deepcopy(m).to(torch.bfloat16) for n, m in models.items()}  # upstream's order
    device = torch.device("cuda", torch.cuda.current_device())
    res = Residency(models, device, cast=torch.bfloat16)
    for name in models:
        ours = res.activate(name)
        assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
        assert torch.equal(ours(x), converted[name].to(device)(x))
    res.release_all()
    assert {p.dtype for m in models.values() for p in m.parameters()} == {torch.float32}

"""FlashInfer's FA3 backend (wan_core.ops.flashinfer_attention): refused with the reason where it
cannot run, a failed build falls back instead of failing the run, and on a Hopper GPU with
FlashInfer installed it is exact attention, key padding included."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tests.wan_core.ops.test_attention import masked_reference
from wan_core.ops import flashinfer_attention
from wan_core.ops.attention import BACKENDS, attention, select_backend

HOPPER_WITH_FLASHINFER = (
    torch.cuda.is_available()
    and flashinfer_attention.device_problem(torch.device("cuda")) is None
    and flashinfer_attention._flashinfer() is not None
)


def test_it_is_exact_and_tried_before_flash2_and_cudnn() -> None:
    names = [b.name for b in BACKENDS.values() if b.exact]
    assert BACKENDS["flashinfer"].exact
    assert names.index("flash3") < names.index("flashinfer") < names.index("flash2") < names.index("sdpa")


def test_cpu_tensors_are_refused_with_the_reason() -> None:
    q = torch.randn(1, 4, 2, 128, dtype=torch.bfloat16)
    assert select_backend(q, q, q).name == "math"
    with pytest.raises(RuntimeError, match="'flashinfer' cannot run this request: needs CUDA tensors, got cpu"):
        attention(q, q, q, backend="flashinfer")


@pytest.fixture
def fresh_load_cache():
    cached = (flashinfer_attention._load, flashinfer_attention._import)  # the originals, before any monkeypatch
    for fn in cached:
        fn.cache_clear()
    yield
    for fn in cached:
        fn.cache_clear()


def test_missing_flashinfer_says_how_to_install(monkeypatch: pytest.MonkeyPatch, fresh_load_cache: None) -> None:
    monkeypatch.setitem(sys.modules, "flashinfer.prefill", None)  # the import raises ImportError
    assert flashinfer_attention._load(torch.bfloat16, 128) == (
        "flashinfer is not importable: pip install 'wanops[flashinfer]' (flashinfer-python)")


def test_a_failed_build_is_a_reason_tried_once(monkeypatch: pytest.MonkeyPatch, fresh_load_cache: None) -> None:
    """No nvcc, a compile error: the backend reports why and automatic selection moves on."""
    calls = []

    def build(*args: object) -> None:
        calls.append(args)
        raise RuntimeError("\nNinja build failed: nvcc not found\nmore detail")

    stand_in = types.SimpleNamespace(get_single_prefill_uri=lambda *a: "uri", get_single_prefill_module=build)
    monkeypatch.setattr(flashinfer_attention, "_import", lambda: (stand_in, None))
    reason = flashinfer_attention._load(torch.bfloat16, 128)
    assert reason == "FlashInfer could not build or load its FA3 kernel (RuntimeError: Ninja build failed: nvcc not found)"
    assert flashinfer_attention._load(torch.bfloat16, 128) == reason and len(calls) == 1
    assert calls[0] == ("fa3", torch.bfloat16, torch.bfloat16, torch.bfloat16, 128, 128, 0, False, False, False)


@pytest.mark.skipif(not HOPPER_WITH_FLASHINFER, reason="needs a Hopper GPU and flashinfer (wanops[flashinfer])")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k_lens", [None, [300, 77]])
def test_fa3_is_exact_attention_on_hopper(dtype: torch.dtype, k_lens: list[int] | None) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, 128, generator=gen) for n in (1001, 300, 300))
    ref = masked_reference(q, k, v, k_lens or [300, 300])
    args = [x.cuda().to(dtype) for x in (q, k, v)]
    lens = torch.tensor(k_lens) if k_lens else None
    out = attention(*args, k_lens=lens, backend="flashinfer")
    assert out.shape == q.shape and out.dtype == dtype
    assert (out.float().cpu() - ref).abs().max() < 1e-2
    cudnn = attention(*args, k_lens=lens, backend="sdpa")
    assert torch.nn.functional.cosine_similarity(out.double().flatten(), cudnn.double().flatten(), dim=0) > 0.99999
    if select_backend(*args).name != "flash3":  # automatic selection takes it when FA3 itself is absent
        assert select_backend(*args).name == "flashinfer"

"""FlashInfer's FA3 backend (wan_core.ops.flashinfer_attention): refused with the reason where it
cannot run, a failed build falls back instead of failing the run, and on a Hopper GPU with
FlashInfer installed it is exact attention, key padding included."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from tests.wan_core.ops.test_attention import masked_reference
from wan_core.ops import flashinfer_attention
from wan_core.ops.attention import BACKENDS, SHORT_KEYS, attention, select_backend

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


BF16 = flashinfer_attention._module_args(torch.bfloat16, 128)


def test_missing_flashinfer_says_how_to_install(monkeypatch: pytest.MonkeyPatch, fresh_load_cache: None) -> None:
    monkeypatch.setattr(flashinfer_attention, "_installed_path", lambda args: None)
    monkeypatch.setitem(sys.modules, "flashinfer.prefill", None)  # the import raises ImportError
    assert flashinfer_attention._load(BF16) == (
        None, "flashinfer is not importable: pip install 'wanops[flashinfer]' (flashinfer-python)")


def test_a_failed_build_is_a_reason_tried_once(monkeypatch: pytest.MonkeyPatch, fresh_load_cache: None) -> None:
    """No nvcc, a compile error: the backend reports why and automatic selection moves on."""
    calls = []

    def build(*args: object) -> None:
        calls.append(args)
        raise RuntimeError("\nNinja build failed: nvcc not found\nmore detail")

    stand_in = types.SimpleNamespace(get_single_prefill_module=build)
    monkeypatch.setattr(flashinfer_attention, "_installed_path", lambda args: None)
    monkeypatch.setattr(flashinfer_attention, "_import", lambda: (stand_in, None))
    kernel, reason = flashinfer_attention._load(BF16)
    assert kernel is None
    assert reason == "FlashInfer could not build or load its FA3 kernel (RuntimeError: Ninja build failed: nvcc not found)"
    assert flashinfer_attention._load(BF16) == (None, reason) and len(calls) == 1
    assert calls[0] == ("fa3", torch.bfloat16, torch.bfloat16, torch.bfloat16, 128, 128, 0, False, False, False)


def _site(root: Path, version: str, modules: list[str]) -> Path:
    """A site folder with a `flashinfer` package of `version` (its `__init__` raises, as a reminder
    that finding a module must not import it) and `modules` in its AOT folder."""
    package = root / "flashinfer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise AssertionError('flashinfer imported')\n")
    dist = root / f"flashinfer_python-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flashinfer-python\nVersion: {version}\n")
    for uri in modules:
        (package / "data" / "aot" / uri).mkdir(parents=True)
        (package / "data" / "aot" / uri / f"{uri}.so").write_bytes(b"")
    return root


@pytest.mark.parametrize(("version", "installed", "found"), [
    ("0.7.2.post1", True, True),   # the image's: loaded by path
    ("0.7.2", True, True),
    ("0.7.3", True, False),        # another version's module interface may differ: the package loads it
    ("0.7.2.post1", False, False), # not built into the image: the package builds it
])
def test_an_installed_module_is_found_without_importing_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, installed: bool, found: bool) -> None:
    uri = flashinfer_attention._uri(BF16)
    site = _site(tmp_path, version, [uri] if installed else [])
    for name in [m for m in sys.modules if m == "flashinfer" or m.startswith("flashinfer.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(site))
    expected = site / "flashinfer" / "data" / "aot" / uri / f"{uri}.so"
    assert flashinfer_attention._installed_path(BF16) == (expected if found else None)
    assert "flashinfer" not in sys.modules


def test_module_names_are_flashinfers() -> None:
    """The names FlashInfer 0.7.2 gives the modules the image builds (`get_single_prefill_uri`)."""
    e4m3 = flashinfer_attention._module_args(torch.float8_e4m3fn, 128, torch.bfloat16)
    tail = "head_dim_qk_128_head_dim_vo_128_posenc_0_use_swa_False_use_logits_cap_False_f16qk_False_sm90"
    assert flashinfer_attention._uri(BF16) == f"single_prefill_with_kv_cache_dtype_q_bf16_dtype_kv_bf16_dtype_o_bf16_{tail}"
    assert flashinfer_attention._uri(e4m3) == f"single_prefill_with_kv_cache_dtype_q_e4m3_dtype_kv_e4m3_dtype_o_bf16_{tail}"
    if (prefill := flashinfer_attention._flashinfer()) is not None:
        for dtype, out_dtype in [m for ms in flashinfer_attention.PREBUILT.values() for m in ms]:
            args = flashinfer_attention._module_args(dtype, 128, out_dtype)
            assert flashinfer_attention._uri(args) == prefill.get_single_prefill_uri(*args)


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
    # Automatic selection takes it for more than SHORT_KEYS keys (the video's tokens) when FA3 and
    # FA4 are absent; these 300 keys, like the text's 512, go to cuDNN.
    many = torch.randn(1, SHORT_KEYS + 1, 4, 128, device="cuda", dtype=dtype)
    if select_backend(many, many, many).name not in ("flash3", "flash4"):
        assert select_backend(many, many, many).name == "flashinfer"
    assert select_backend(*args).name == "sdpa"


@pytest.mark.skipif(not HOPPER_WITH_FLASHINFER, reason="needs a Hopper GPU and flashinfer (wanops[flashinfer])")
@pytest.mark.parametrize("fp8", [False, True])
def test_a_module_loaded_by_path_computes_what_the_package_does(fp8: bool) -> None:
    """The same kernel both ways, so bitwise the same output (the image's modules load by path)."""
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    args = flashinfer_attention._module_args(dtype, 128, torch.bfloat16)
    path = flashinfer_attention._installed_path(args)
    if path is None:
        pytest.skip(f"{flashinfer_attention._uri(args)} is not installed in FlashInfer's AOT folder")
    import tvm_ffi

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 4, 128, generator=gen).cuda().to(dtype) for n in (1001, 777, 777))
    scales = tuple(torch.full((4,), s, device="cuda") for s in (0.5, 0.25, 2.0)) if fp8 else None
    direct = flashinfer_attention._run_module(tvm_ffi.load_module(str(path)).run, q, k, v, torch.bfloat16, scales)
    package = flashinfer_attention._run_package(flashinfer_attention._flashinfer(), q, k, v, torch.bfloat16, scales)
    assert direct.dtype == torch.bfloat16 and torch.equal(direct, package)

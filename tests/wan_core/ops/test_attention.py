"""The attention entry point: key padding, backend choice and refusal messages (CPU)."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch
from torch import Tensor

from wan_core.ops import attention as attention_module
from wan_core.ops.attention import (
    BACKENDS,
    ENV_VAR,
    SHORT_KEYS,
    Backend,
    attention,
    attention_backend,
    select_backend,
)


def masked_reference(q: Tensor, k: Tensor, v: Tensor, k_lens: list[int]) -> Tensor:
    """softmax(q·kᵀ/√D + mask)·v in float64, keys ≥ k_lens[b] masked out; (B, L, N, D)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))  # (B, N, L, D)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    valid = torch.arange(k.shape[2])[None, :] < torch.tensor(k_lens)[:, None]  # (B, Lk)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).float()


@pytest.mark.parametrize("k_lens", [[13, 13], [13, 6], None])
def test_key_padding_equals_a_key_mask(k_lens: list[int] | None) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, generator=gen) for n in (11, 13, 13))
    out = attention(q, k, v, k_lens=torch.tensor(k_lens) if k_lens else None)
    ref = masked_reference(q, k, v, k_lens or [13, 13])
    assert out.shape == q.shape and (out - ref).abs().max() < 1e-6


def test_cpu_picks_math_and_forced_backends_say_why_not() -> None:
    q = torch.randn(1, 4, 2, 8)
    assert select_backend(q, q, q).name == "math"
    with attention_backend("sdpa"), pytest.raises(RuntimeError, match="'sdpa' cannot run this request: meant for CUDA"):
        attention(q, q, q)
    with pytest.raises(RuntimeError, match="'flash2' cannot run this request: needs CUDA tensors"):
        attention(q, q, q, backend="flash2")
    with pytest.raises(RuntimeError, match="'flash4' cannot run this request: needs CUDA tensors"):
        attention(q, q, q, backend="flash4")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, q, q, backend="nope")


def test_environment_variable_forces_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    monkeypatch.setenv(ENV_VAR, "flash3")
    with pytest.raises(RuntimeError, match="'flash3' cannot run"):
        attention(q, q, q)
    with attention_backend("math"):  # the context manager wins over the environment
        assert attention(q, q, q).dtype == torch.bfloat16


def test_automatic_choice_passes_over_a_kernel_below_its_key_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """FlashInfer's kernel loses to cuDNN's on the 512 text keys: picked for the video's own
    tokens only, unless forced."""
    kernels = {
        "long": Backend("long", lambda q, k, v: None, lambda q, k, v: q, min_auto_keys=SHORT_KEYS + 1),
        "any": Backend("any", lambda q, k, v: None, lambda q, k, v: q),
    }
    monkeypatch.setattr(attention_module, "BACKENDS", kernels)
    q = torch.randn(1, 4, 2, 8)
    text, video = (torch.randn(1, n, 2, 8) for n in (SHORT_KEYS, SHORT_KEYS + 1))
    assert select_backend(q, text, text).name == "any"
    assert select_backend(q, video, video).name == "long"
    assert select_backend(q, text, text, backend="long").name == "long"


def test_flash4_first_on_the_videos_tokens_cudnn_on_the_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where FlashAttention-4 and FlashInfer both run, FA4 takes the video's own tokens (≈1% faster
    per A14B forward) and SDPA (cuDNN) the 512 text keys, in the order and limits of BACKENDS."""
    able = {"flash4", "flashinfer", "sdpa"}
    kernels = {name: dataclasses.replace(b, check=lambda q, k, v: None) for name, b in BACKENDS.items() if name in able}
    monkeypatch.setattr(attention_module, "BACKENDS", kernels)
    q = torch.randn(1, 4, 2, 8)
    text, video = (torch.randn(1, n, 2, 8) for n in (SHORT_KEYS, 75_600))
    assert select_backend(q, video, video).name == "flash4"
    assert select_backend(q, text, text).name == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_takes_cudnn_for_the_text_keys() -> None:
    q = torch.randn(1, 2048, 4, 128, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, SHORT_KEYS, 4, 128, device="cuda", dtype=torch.bfloat16)
    assert select_backend(q, q, q).name in ("flash3", "flash4", "flashinfer", "flash2", "sdpa")
    assert select_backend(q, text, text).name in ("flash3", "flash2", "sdpa")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_picks_a_kernel_and_honours_key_padding(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, 64, generator=gen) for n in (37, 50, 50))
    ref = masked_reference(q, k, v, [50, 21])
    args = [x.cuda().to(dtype) for x in (q, k, v)]
    assert select_backend(*args).name in ("flash3", "flash4", "flashinfer", "flash2", "sdpa")
    out = attention(*args, k_lens=torch.tensor([50, 21])).float().cpu()
    assert (out - ref).abs().max() < (2e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash4_agrees_with_the_reference_and_honours_key_padding() -> None:
    probe = torch.zeros(1, 1, 1, 128, device="cuda", dtype=torch.bfloat16)
    if reason := BACKENDS["flash4"].check(probe, probe, probe):
        pytest.skip(f"flash4: {reason}")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, 128, generator=gen) for n in (600, 700, 700))
    ref = masked_reference(q, k, v, [700, 530])
    args = [x.cuda().bfloat16() for x in (q, k, v)]
    out = attention(*args, k_lens=torch.tensor([700, 530]), backend="flash4").float().cpu()
    assert (out - ref).abs().max() < 2e-2


def test_compiled_code_chooses_the_kernel_when_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiler sees one opaque operator: its output shape and dtype, not the kernel choice,
    which reads the forced backend and the environment at each call, as in eager code."""
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))

    def block(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q * 2, k, v, k_lens=torch.tensor([4])) + 1

    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: no break at attention
    torch.testing.assert_close(compiled(q, k, v), block(q, k, v), rtol=0, atol=0)
    out = compiled(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    with attention_backend("sdpa"), pytest.raises(RuntimeError, match="'sdpa' cannot run this request: meant for CUDA"):
        compiled(q, k, v)
    monkeypatch.setenv(ENV_VAR, "sdpa")
    with pytest.raises(RuntimeError, match="'sdpa' cannot run this request"):
        compiled(q, k, v)


def test_autocast_casts_the_inputs_as_it_casts_sdpa() -> None:
    """Autocast cannot see inside the operator, nor does a compiled graph run under it: fp32 q/k
    (after fp32 norms) meet a bf16 v from an autocast matmul, and all three must reach the kernel
    in autocast's dtype, in eager and compiled code alike."""
    q, k = (torch.randn(1, 6, 2, 8) for _ in range(2))
    v = torch.randn(1, 6, 2, 8, dtype=torch.bfloat16)
    want = attention(q.bfloat16(), k.bfloat16(), v)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: attention(q, k, v), backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for out in (attention(q, k, v), compiled(q, k, v)):
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.fixture
def kernel_packages(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A folder on sys.path for stand-in kernel packages; `_module`'s cache and the modules the
    test imported are dropped after it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]:
        monkeypatch.delitem(sys.modules, name)  # a real one imported earlier; put back after
    before = set(sys.modules)
    attention_module._module.cache_clear()
    yield tmp_path
    attention_module._module.cache_clear()
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_broken_kernel_package_is_passed_over_with_a_warning(kernel_packages, caplog: pytest.LogCaptureFixture) -> None:
    (kernel_packages / "wanops_broken_kernel").mkdir()
    (kernel_packages / "wanops_broken_kernel" / "__init__.py").write_text("raise OSError('libcuda.so.1: cannot open')\n")
    (kernel_packages / "wanops_needy_kernel.py").write_text("import wanops_missing_dependency\n")
    assert attention_module._module("wanops_absent_kernel") is None
    assert not caplog.records  # simply not installed: nothing to say
    assert attention_module._module("wanops_broken_kernel") is None
    assert attention_module._module("wanops_needy_kernel") is None
    assert [r.getMessage() for r in caplog.records] == [
        "`wanops_broken_kernel` is installed but does not import (libcuda.so.1: cannot open): passed over",
        "`wanops_needy_kernel` is installed but does not import (No module named 'wanops_missing_dependency'): passed over",
    ]


def test_flash4_keeps_its_compiled_kernels_beside_inductors_cache(kernel_packages, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its cache switch is read at its import, so it is set before: by default on, under Inductor's
    cache folder; a user's own setting stands."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", raising=False)
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", "/mine")
    (kernel_packages / "flash_attn" / "cute").mkdir(parents=True)  # a namespace package, as flash-attn-4's
    (kernel_packages / "flash_attn" / "cute" / "__init__.py").write_text(
        "import os\nSEEN = os.environ['FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED'], os.environ['FLASH_ATTENTION_CUTE_DSL_CACHE_DIR']\n")
    assert attention_module._module("flash_attn.cute").SEEN == ("1", "/mine")
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")
    attention_module._keep_flash4_kernels()
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == os.path.join(cache_dir(), "flash-attn-cute")
    # flash-attn-4 alone leaves `flash_attn` a bare namespace, which imports: no FlashAttention-2 in it
    (kernel_packages / "wanops_bare_namespace").mkdir()
    assert attention_module._module("wanops_bare_namespace") is not None
    assert not hasattr(attention_module._module("wanops_bare_namespace"), "flash_attn_func")


def test_each_kernel_is_named_in_the_log_once_at_its_first_use(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Which kernel runs depends on what imports: the log says it, once per kernel."""
    monkeypatch.setattr(attention_module, "_announced", set())
    q = torch.randn(1, 4, 2, 8)
    caplog.set_level("INFO", logger=attention_module.__name__)
    attention(q, q, q)
    attention(q, q, q)
    attention(q, q, q, backend="math")
    assert [r.getMessage() for r in caplog.records] == ["attention kernel math (first used for 4 keys)"]

"""Per-block torch.compile (wan_core.ops.compile): traced blocks compute what eager blocks do.

The "aot_eager" backend runs Dynamo and AOTAutograd on the real blocks (hooks, the per-token
modulation gather, the opaque attention call, the chunked FFN) without generating kernels, so
the check is fast on the CPU; Inductor's kernels are measured by bench/dit_forward.py on GPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch

from wan_core.models import dit
from wan_core.models.dit import DiTConfig, WanModel
from wan_core.ops import compile as compile_mod
from wan_core.ops.compile import compile_blocks, compile_wanted


def _model(flavor: str) -> WanModel:
    torch.manual_seed(0)
    cfg = dataclasses.replace(DiTConfig.flavor(flavor), text_len=16)
    return WanModel(cfg).eval()


@pytest.mark.parametrize("flavor", ["tiny-t2v", "tiny-ti2v"])
def test_compiled_blocks_match_eager(flavor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dit, "FFN_CHUNK_TOKENS", 20)  # 48 tokens → three FFN chunks
    model = _model(flavor)
    cfg = model.cfg
    x = torch.randn(2, cfg.in_dim, 3, 8, 8)
    context = torch.randn(2, cfg.text_len, cfg.text_dim)
    tokens = 3 * 4 * 4
    t = torch.tensor([900.0, 310.0])
    if cfg.model_type == "ti2v":  # per-token: the first latent frame is clean
        t = t[:, None].repeat(1, tokens)
        t[:, :16] = 0
    with torch.inference_mode():
        eager = model(x, t, context)
        torch._dynamo.reset()
        compile_blocks(model, backend="aot_eager")
        compiled = model(x, t, context)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_a_block_traces_as_one_graph() -> None:
    """Attention is one opaque operator, not a graph break: each process traces a block once,
    without the two resume functions a break after each attention call would add."""
    model = _model("tiny-ti2v")
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda _, args: seen.setdefault("args", args))
    t = torch.full((1, 48), 900.0)
    with torch.inference_mode():
        model(torch.randn(1, model.cfg.in_dim, 3, 8, 8), t, torch.randn(1, model.cfg.text_len, model.cfg.text_dim))
        hook.remove()
        explained = torch._dynamo.explain(model.blocks[0])(*(a.clone() if torch.is_tensor(a) else a for a in seen["args"]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_per_token_time_embedding_keeps_one_row_per_distinct_timestep() -> None:
    model = _model("tiny-ti2v")
    t = torch.tensor([[0.0] * 5 + [700.0] * 11, [0.0] * 5 + [300.0] * 11])
    e, e0, rows = model.embed_time(t)
    assert e.shape == (3, model.cfg.dim) and e0.shape == (3, 6, model.cfg.dim)
    assert rows.shape == (2, 16)
    e_scalar, e0_scalar, none = model.embed_time(torch.tensor([700.0]))
    assert none is None
    torch.testing.assert_close(e0[rows[0, -1]], e0_scalar[0], rtol=1e-6, atol=1e-6)


def test_compile_is_on_for_cuda_only_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANOPS_COMPILE", raising=False)
    assert compile_wanted(torch.device("cuda")) and not compile_wanted(torch.device("cpu"))
    monkeypatch.setenv("WANOPS_COMPILE", "0")
    assert not compile_wanted(torch.device("cuda"))
    monkeypatch.setenv("WANOPS_COMPILE", "1")
    assert compile_wanted(torch.device("cpu"))


def _block_inputs(model: WanModel, frames: int = 3) -> list[tuple]:
    """Each block's inputs in one eager forward of the tiny 5B model (per-token timesteps)."""
    seen: list[tuple] = []
    hooks = [b.register_forward_pre_hook(lambda _, args: seen.append(tuple(a.clone() if torch.is_tensor(a) else a for a in args)))
             for b in model.blocks]
    with torch.inference_mode():
        model(torch.randn(1, model.cfg.in_dim, frames, 8, 8), torch.full((1, frames * 16), 900.0),
              torch.randn(1, model.cfg.text_len, model.cfg.text_dim))
    for hook in hooks:
        hook.remove()
    return seen


def _run_blocks(model: WanModel, inputs: list[tuple]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [block(*(a.clone() if torch.is_tensor(a) else a for a in args)) for block, args in zip(model.blocks, inputs)]


def test_a_saved_block_is_loaded_by_the_next_process_without_tracing(tmp_path, monkeypatch, caplog) -> None:
    """One file serves every block; a later process (a new SavedForward) loads it and never
    calls torch.compile; it runs the same kernels, so the same bits. A damaged file is compiled
    again. Inductor, as in production: torch saves only Inductor's output (2.11 refuses aot_eager's)."""
    caplog.set_level(logging.INFO, logger="wan_core.ops.compile")
    model = _model("tiny-ti2v")
    inputs = _block_inputs(model)
    eager = _run_blocks(model, inputs)
    compile_blocks(model, backend="inductor", saved=tmp_path)
    first = _run_blocks(model, inputs)
    files = list(tmp_path.glob("*.bin"))
    assert len(files) == 1
    for a, b in zip(first, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    assert "kept in" in caplog.text and "loaded from" not in caplog.text

    later = _model("tiny-ti2v")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("traced again"))
    compile_blocks(later, backend="inductor", saved=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(_run_blocks(later, inputs), first))
    assert "loaded from" in caplog.text
    monkeypatch.undo()

    files[0].write_bytes(b"damaged")
    again = _model("tiny-ti2v")
    compile_blocks(again, backend="inductor", saved=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(_run_blocks(again, inputs), first))
    assert "cannot be loaded" in caplog.text and files[0].read_bytes() != b"damaged"


def test_triton_is_hashed_on_a_thread_before_a_saved_block_loads(tmp_path, monkeypatch) -> None:
    """`triton_key()` (≈0.4 s, GIL released) starts when the blocks are set up, once per process,
    and its cached value is what a load then uses."""
    triton_key = pytest.importorskip("triton.runtime.cache").triton_key
    monkeypatch.setattr(compile_mod, "_triton_key_thread", None)
    triton_key.cache_clear()
    compile_blocks(_model("tiny-ti2v"), backend="aot_eager", saved=tmp_path)
    thread = compile_mod._triton_key_thread
    assert thread is not None and thread.name == "triton-key"
    compile_blocks(_model("tiny-ti2v"), backend="aot_eager", saved=tmp_path)  # a second expert
    assert compile_mod._triton_key_thread is thread
    compile_mod._triton_key_hashed()
    assert not thread.is_alive()
    assert triton_key.cache_info().currsize == 1 and triton_key.cache_info().misses == 1
    triton_key()
    assert triton_key.cache_info().hits == 1


def test_a_block_that_cannot_be_kept_still_runs(tmp_path, caplog) -> None:
    """Keeping the compiled block is only an optimisation: an unwritable folder costs the next
    process a compile, never this run."""
    model = _model("tiny-ti2v")
    inputs = _block_inputs(model)
    eager = _run_blocks(model, inputs)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    compile_blocks(model, backend="aot_eager", saved=blocked)
    for a, b in zip(_run_blocks(model, inputs), eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert "cannot keep the compiled block" in caplog.text


def test_a_block_this_torch_cannot_compile_ahead_of_time_is_compiled_as_usual(tmp_path, caplog, monkeypatch) -> None:
    """torch 2.11 cannot `aot_compile` with every backend (aot_eager: "expected OutputCode"): the
    block is then compiled in the process as plain torch.compile does, and nothing is kept."""
    compile_plain = torch.compile

    def without_aot(*args, **kwargs):
        compiled = compile_plain(*args, **kwargs)

        def call(*a, **k):
            return compiled(*a, **k)

        def refuse(*a, **k):
            raise AssertionError("expected OutputCode, got <class 'function'>")

        call.aot_compile = refuse
        return call

    monkeypatch.setattr(torch, "compile", without_aot)
    model = _model("tiny-ti2v")
    inputs = _block_inputs(model)
    eager = _run_blocks(model, inputs)
    compile_blocks(model, backend="aot_eager", saved=tmp_path)
    for a, b in zip(_run_blocks(model, inputs), eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert "cannot keep the compiled block" in caplog.text and not list(tmp_path.iterdir())


def test_the_least_recently_used_saved_blocks_go_beyond_the_limit(tmp_path, monkeypatch) -> None:
    """Files of other torch versions, GPUs, sizes or code stay until a save passes MAX_SAVED; then
    the least recently used go, and a block loaded lately counts as used however old its file."""
    monkeypatch.setattr(compile_mod, "MAX_SAVED", 2)
    compile_blocks(first := _model("tiny-ti2v"), backend="inductor", saved=tmp_path)
    _run_blocks(first, _block_inputs(first))
    (block,) = tmp_path.glob("*.bin")
    other = tmp_path / "other.bin"
    other.write_bytes(b"another torch's block")
    for age, path in ((500, block), (300, other)):
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    compile_blocks(later := _model("tiny-ti2v"), backend="inductor", saved=tmp_path)
    _run_blocks(later, _block_inputs(later))  # loads the oldest file: now the most recently used
    assert block.exists() and other.exists()
    _run_blocks(later, _block_inputs(later, frames=5))  # a new size, saved by this process too: one too many
    assert block.exists() and not other.exists() and len(list(tmp_path.glob("*.bin"))) == 2

"""Loading official-layout DiT folders: exact round trip, experts, and one clear error per bad input."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_core.checkpoint.dit import INDEX_NAME, SINGLE_NAME, expert_folders, load_dit, load_dit_experts
from wan_core.checkpoint.errors import CheckpointError
from wan_core.models.dit import DiTConfig, WanModel, is_fp32_island

TINY = dataclasses.replace(DiTConfig.flavor("tiny-t2v"), text_len=16)


def random_state(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in WanModel(cfg).state_dict().items()}


def write_folder(folder: Path, cfg: DiTConfig, state: dict[str, torch.Tensor], shards: int = 3) -> list[Path]:
    """The published layout: config.json, index.json and `shards` files, keys split round-robin."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg.to_json(folder / "config.json")
    if shards == 0:
        save_file(state, folder / SINGLE_NAME)
        return [folder / SINGLE_NAME]
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {key: names[i % shards] for i, key in enumerate(sorted(state))}
    for name in names:
        save_file({k: state[k] for k, n in weight_map.items() if n == name}, folder / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return [folder / n for n in names]


@pytest.mark.parametrize("shards", [3, 0])
def test_round_trip_is_exact(tmp_path: Path, shards: int) -> None:
    state = random_state(TINY)
    write_folder(tmp_path, TINY, state, shards)
    model = load_dit(tmp_path, device="cpu")
    assert model.cfg == TINY and not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_dtype_conversion_and_fp32_islands(tmp_path: Path) -> None:
    write_folder(tmp_path, TINY, random_state(TINY))
    bf16 = load_dit(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    mixed = load_dit(tmp_path, device="cpu", dtype=torch.bfloat16, keep_fp32_islands=True)
    dtypes = {name: p.dtype for name, p in mixed.named_parameters()}
    assert dtypes["blocks.1.modulation"] == dtypes["time_projection.1.weight"] == dtypes["head.head.bias"] == torch.float32
    assert dtypes["blocks.1.self_attn.q.weight"] == dtypes["blocks.0.ffn.0.weight"] == torch.bfloat16
    assert all((dtype == torch.float32) == is_fp32_island(name) for name, dtype in dtypes.items())


def test_experts_a14b_and_5b_layouts(tmp_path: Path) -> None:
    write_folder(tmp_path / "a14b" / "high_noise_model", TINY, random_state(TINY, 1))
    write_folder(tmp_path / "a14b" / "low_noise_model", TINY, random_state(TINY, 2))
    experts = load_dit_experts(tmp_path / "a14b", device="cpu", model_type="t2v")
    assert list(experts) == ["high_noise_model", "low_noise_model"]
    high, low = (e.state_dict()["head.head.weight"] for e in experts.values())
    assert not torch.equal(high, low)
    ti2v = dataclasses.replace(TINY, model_type="ti2v", in_dim=48, out_dim=48)
    write_folder(tmp_path / "5b", ti2v, random_state(ti2v), shards=2)
    assert expert_folders(tmp_path / "5b") == {"": tmp_path / "5b"}
    assert load_dit_experts(tmp_path / "5b", device="cpu")[""].cfg == ti2v


def test_config_json_matches_the_official_5b_file(tmp_path: Path) -> None:
    """The 5B config.json as published (spec §2.1) reads into the spec's numbers and back."""
    official = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "ti2v", "dim": 3072, "ffn_dim": 14336, "freq_dim": 256, "in_dim": 48, "out_dim": 48, "num_heads": 24, "num_layers": 30, "eps": 1e-06, "text_len": 512}
    (tmp_path / "config.json").write_text(json.dumps(official))
    cfg = DiTConfig.from_json(tmp_path / "config.json")
    assert cfg == DiTConfig.flavor("ti2v-5B")
    assert json.loads(cfg.to_json()) == official
    (tmp_path / "config.json").write_text(json.dumps({**official, "window_size": [-1, -1], "qk_norm": True}))
    assert DiTConfig.from_json(tmp_path / "config.json") == cfg  # upstream defaults may be spelled out
    for extra, problem in (({"window_size": [4, 4]}, "unsupported {'window_size': [4, 4]}"), ({"dim_head": 3}, "unknown keys ['dim_head']")):
        (tmp_path / "config.json").write_text(json.dumps({**official, **extra}))
        with pytest.raises(CheckpointError, match=re.escape(f"config.json: {problem}")):
            DiTConfig.from_json(tmp_path / "config.json")


def _error(folder: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as info:
        load_dit(folder, device="cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_config_index_and_shard(tmp_path: Path) -> None:
    shards = write_folder(tmp_path, TINY, random_state(TINY))
    shards[1].unlink()
    assert shards[1].name in _error(tmp_path) and "listed in" in _error(tmp_path)
    (tmp_path / INDEX_NAME).unlink()
    assert INDEX_NAME in _error(tmp_path)
    (tmp_path / "config.json").unlink()
    assert "config.json: file not found" in _error(tmp_path)


def test_truncated_and_corrupt_shards(tmp_path: Path) -> None:
    shards = write_folder(tmp_path, TINY, random_state(TINY))
    shards[2].write_bytes(shards[2].read_bytes()[:-100])
    message = _error(tmp_path)
    assert shards[2].name in message and "truncated or corrupt" in message
    shards[2].write_bytes(b"not a safetensors file")
    assert shards[2].name in _error(tmp_path)
    (tmp_path / INDEX_NAME).write_text("{ no json")
    assert INDEX_NAME in _error(tmp_path)


def test_checkpoint_of_another_task(tmp_path: Path) -> None:
    i2v = dataclasses.replace(TINY, model_type="i2v", in_dim=36)
    write_folder(tmp_path, TINY, random_state(i2v))  # i2v weights under a t2v config.json
    message = _error(tmp_path)
    assert "this looks like an i2v checkpoint" in message and "config.json says t2v" in message
    write_folder(tmp_path, i2v, random_state(i2v))
    message = _error(tmp_path, model_type="t2v")
    assert "this looks like an i2v checkpoint" in message and "expected a t2v DiT" in message


def test_shape_and_key_mismatches(tmp_path: Path) -> None:
    state = random_state(TINY)
    state["blocks.1.ffn.0.weight"] = torch.zeros(7, TINY.dim)
    write_folder(tmp_path / "shape", TINY, state)
    assert "blocks.1.ffn.0.weight has shape (7, 48)" in _error(tmp_path / "shape")
    state = random_state(TINY)
    del state["blocks.1.norm3.bias"]
    state["blocks.1.norm2.weight"] = torch.ones(TINY.dim)
    write_folder(tmp_path / "keys", TINY, state)
    message = _error(tmp_path / "keys")
    assert "missing keys: blocks.1.norm3.bias" in message and "unexpected keys: blocks.1.norm2.weight" in message
    assert str(tmp_path / "keys") in message


def test_diffusers_layout_is_named(tmp_path: Path) -> None:
    from wan_core.testing.diffusers_wan import to_diffusers_state_dict

    write_folder(tmp_path, TINY, to_diffusers_state_dict(random_state(TINY)))
    assert "diffusers-format" in _error(tmp_path)


def test_expert_folder_missing(tmp_path: Path) -> None:
    write_folder(tmp_path / "high_noise_model", TINY, random_state(TINY))
    with pytest.raises(CheckpointError, match="low_noise_model: expert folder missing"):
        expert_folders(tmp_path)
    with pytest.raises(CheckpointError, match="no DiT here"):
        expert_folders(tmp_path / "high_noise_model" / "nothing")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loads_straight_to_cuda_in_bf16(tmp_path: Path) -> None:
    state = random_state(TINY)
    write_folder(tmp_path, TINY, state)
    model = load_dit(tmp_path, device="cuda", dtype=torch.bfloat16)
    loaded = model.state_dict()
    assert all(t.is_cuda and t.dtype == torch.bfloat16 for t in loaded.values())
    assert all(torch.equal(loaded[k].cpu(), state[k].to(torch.bfloat16)) for k in state)

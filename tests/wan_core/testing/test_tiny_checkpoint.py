"""The random-checkpoint writer: official file names and layout, real loaders, determinism."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from wan_core.checkpoint.dit import load_dit_experts
from wan_core.checkpoint.folder import inspect_folder
from wan_core.checkpoint.t5 import load_t5
from wan_core.checkpoint.vae import load_vae
from wan_core.models.dit import DiTConfig
from wan_core.testing import tiny_checkpoint
from wan_core.testing.tiny_checkpoint import (
    TINY_T5,
    main,
    random_state_dict,
    tiny_dit_config,
    write_pth,
    write_tiny_checkpoint,
)
from wanspec.tasks import T5_CHECKPOINT, TASKS

TOKENIZER_FILES = {f"google/umt5-xxl/{n}" for n in
                   ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}
DIT_FILES = {"config.json", "diffusion_pytorch_model.safetensors.index.json",
             "diffusion_pytorch_model-00001-of-00002.safetensors",
             "diffusion_pytorch_model-00002-of-00002.safetensors"}
# spec §2.1, the published folders minus README/assets (never read by the code)
LAYOUT = {
    "t2v-A14B": {f"{e}/{f}" for e in ("high_noise_model", "low_noise_model") for f in DIT_FILES}
    | {T5_CHECKPOINT, "Wan2.1_VAE.pth"} | TOKENIZER_FILES,
    "i2v-A14B": {f"{e}/{f}" for e in ("high_noise_model", "low_noise_model") for f in DIT_FILES}
    | {T5_CHECKPOINT, "Wan2.1_VAE.pth"} | TOKENIZER_FILES,
    "ti2v-5B": DIT_FILES | {T5_CHECKPOINT, "Wan2.2_VAE.pth"} | TOKENIZER_FILES,
}
OFFICIAL_CONFIG_KEYS = {"_class_name", "_diffusers_version", "model_type", "dim", "ffn_dim", "freq_dim",
                        "in_dim", "out_dim", "num_heads", "num_layers", "eps", "text_len"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    main(["--task", "all", "--out", str(root)])  # the CLI, one subfolder per task
    return {task: root / task for task in TASKS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _safetensors_header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


@pytest.mark.parametrize("task", list(TASKS))
def test_official_layout(written: dict[str, Path], task: str) -> None:
    root = written[task]
    assert set(_files(root)) == LAYOUT[task]
    for expert in TASKS[task].experts:
        folder = root / expert
        config = json.loads((folder / "config.json").read_text())
        assert OFFICIAL_CONFIG_KEYS <= set(config) <= OFFICIAL_CONFIG_KEYS | {"text_dim"}
        assert (config["model_type"], config["in_dim"]) == (TASKS[task].model_type, TASKS[task].dit_in_dim)
        assert config["text_dim"] == TINY_T5.dim  # the DiT reads the tiny encoder's width
        index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
        headers = {name: _safetensors_header(folder / name) for name in set(index["weight_map"].values())}
        assert len(headers) == 2
        total = 0
        for name, header in headers.items():
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            assert {k for k, v in index["weight_map"].items() if v == name} == set(tensors)
            assert {v["dtype"] for v in tensors.values()} == {"F32"}  # published DiTs are fp32
            total += max(v["data_offsets"][1] for v in tensors.values())
        assert index["metadata"]["total_size"] == total
    t5 = torch.load(root / T5_CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(t5) == set(TINY_T5.official_shapes()) and {v.dtype for v in t5.values()} == {torch.bfloat16}
    vae = torch.load(root / TASKS[task].vae_checkpoint, map_location="cpu", weights_only=True)
    assert {v.dtype for v in vae.values()} == {torch.float32}


@pytest.mark.parametrize("task", list(TASKS))
def test_loads_through_the_real_loaders(written: dict[str, Path], task: str) -> None:
    spec, root = TASKS[task], written[task]
    checked = inspect_folder(root, task)
    dits = load_dit_experts(root, device="cpu", model_type=spec.model_type)
    assert list(dits) == list(spec.experts)
    cfg = next(iter(dits.values())).cfg
    assert cfg == tiny_dit_config(spec)
    assert cfg.num_heads % 4 == 0 and cfg.head_dim == 16  # Ulysses over 2 and 4 ranks; uneven RoPE split
    vae = load_vae(checked.vae, kind="2.1" if spec.vae_checkpoint == "Wan2.1_VAE.pth" else "2.2", device="cpu")
    assert vae.z_dim == spec.z_dim
    encoder = load_t5(root, device="cpu")
    (context,) = encoder.encode(["a red fox in the snow"], "cpu")
    assert context.shape[1] == cfg.text_dim and context.isfinite().all()
    # weights are well scaled: one DiT forward gives O(1) outputs
    x = torch.randn(1, spec.z_dim, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(1, spec.dit_in_dim - spec.z_dim, 2, 4, 4) if spec.model_type == "i2v" else None
    padded = torch.zeros(1, cfg.text_len, cfg.text_dim)
    padded[0, : len(context)] = context.float()
    out = next(iter(dits.values()))(x, torch.tensor([900.0]), padded, y=y)
    assert 0.05 < out.std() < 5


def test_deterministic_per_seed(written: dict[str, Path], tmp_path: Path) -> None:
    again = write_tiny_checkpoint("t2v-A14B", tmp_path / "same", seed=0)
    assert _files(again) == _files(written["t2v-A14B"])
    other = _files(write_tiny_checkpoint("t2v-A14B", tmp_path / "other", seed=1))
    first = "high_noise_model/diffusion_pytorch_model-00001-of-00002.safetensors"
    assert other[first] != _files(again)[first]
    # the two experts of one folder are different random models
    assert other[first] != other[first.replace("high", "low")]


def test_streamed_pth_equals_torch_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-size path (records filled in place) gives the same tensors as a plain save."""
    shapes = TINY_T5.official_shapes()
    expected = dict(random_state_dict(shapes, torch.Generator().manual_seed(3)))
    monkeypatch.setattr(tiny_checkpoint, "_STREAM_PTH_BYTES", 0)
    write_pth(tmp_path / "t5.pth", shapes, random_state_dict(shapes, torch.Generator().manual_seed(3)),
              torch.bfloat16)
    for mmap in (True, False):
        loaded = torch.load(tmp_path / "t5.pth", map_location="cpu", weights_only=True, mmap=mmap)
        assert list(loaded) == list(shapes)
        assert all(torch.equal(loaded[k], v.bfloat16()) for k, v in expected.items())


def test_full_size_configs_are_the_published_ones() -> None:
    assert DiTConfig.flavor("ti2v-5B").text_dim == 4096 == tiny_checkpoint.T5Config().dim
    assert tiny_checkpoint.FULL_DIT_SHARDS == {"t2v-A14B": 6, "i2v-A14B": 6, "ti2v-5B": 3}


def test_bf16_dit_shards_hold_the_same_draws_at_half_the_size(written: dict[str, Path], tmp_path: Path) -> None:
    """`--dit-dtype bfloat16` (full-size A14B on a small disk): same keys and draws, bf16 on disk,
    and the loader gives the fp32 folder's weights rounded to bf16."""
    main(["--task", "ti2v-5B", "--out", str(tmp_path), "--dit-dtype", "bfloat16"])
    fp32 = written["ti2v-5B"]
    for shard in sorted(fp32.glob("*.safetensors")):
        half, full = _safetensors_header(tmp_path / shard.name), _safetensors_header(shard)
        assert half.keys() == full.keys()
        assert {v["dtype"] for k, v in half.items() if k != "__metadata__"} == {"BF16"}
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert 2 * index["metadata"]["total_size"] == json.loads(
        (fp32 / "diffusion_pytorch_model.safetensors.index.json").read_text())["metadata"]["total_size"]
    (half,), (full,) = (load_dit_experts(d, device="cpu", model_type="ti2v").values() for d in (tmp_path, fp32))
    for (name, a), b in zip(half.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b.bfloat16().float()), name

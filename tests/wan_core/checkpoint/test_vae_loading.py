"""`load_vae` on tiny files in the official layout: the same module back, and one CheckpointError
naming the file for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wan_core.checkpoint.errors import CheckpointError
from wan_core.checkpoint.vae import load_vae
from wan_core.models.vae2_1 import Wan21VAE, Wan21VAEConfig
from wan_core.models.vae2_2 import Wan22VAE, Wan22VAEConfig
from wan_core.testing.diffusers_vae import random_vae


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Wan21VAE | Wan22VAE]]:
    """A tiny `Wan2.1_VAE.pth` and `Wan2.2_VAE.pth`: plain torch.save'd state dicts, like upstream."""
    folder = tmp_path_factory.mktemp("vae")
    out = {}
    for kind, cls, cfg in (("2.1", Wan21VAE, Wan21VAEConfig.tiny()), ("2.2", Wan22VAE, Wan22VAEConfig.tiny())):
        model = random_vae(cls, cfg, seed=5)
        path = folder / f"Wan{kind}_VAE.pth"
        torch.save(model.state_dict(), path)
        out[kind] = (path, model)
    return out


def _assert_same(loaded: torch.nn.Module, model: torch.nn.Module) -> None:
    assert type(loaded) is type(model) and loaded.config == model.config
    ours, theirs = loaded.state_dict(), model.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("kind", ["2.1", "2.2"])
def test_loads_the_same_module(files: dict, kind: str) -> None:
    path, model = files[kind]
    loaded = load_vae(path, kind=kind, device="cpu")
    _assert_same(loaded, model)
    assert not any(p.requires_grad or p.is_meta for p in loaded.parameters())
    latents = torch.randn(1, model.z_dim, 2, 2, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(latents), model.decode(latents))


def test_kind_is_detected_and_dtype_applied(files: dict) -> None:
    path, model = files["2.2"]
    loaded = load_vae(path, device="cpu", dtype=torch.bfloat16)
    assert isinstance(loaded, Wan22VAE) and loaded.config == model.config
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())


def test_legacy_format_loads_without_mmap(files: dict, tmp_path: Path) -> None:
    path, model = files["2.1"]
    legacy = tmp_path / "Wan2.1_VAE.pth"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    _assert_same(load_vae(legacy, device="cpu"), model)


def test_wrong_kind_is_refused(files: dict) -> None:
    path, _ = files["2.1"]
    with pytest.raises(CheckpointError, match="is a Wan2.1 VAE.*expected the Wan2.2 VAE, Wan2.2_VAE.pth") as err:
        load_vae(path, kind="2.2", device="cpu")
    assert err.value.path == path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file") as err:
        load_vae(tmp_path / "Wan2.1_VAE.pth", device="cpu")
    assert err.value.path == tmp_path / "Wan2.1_VAE.pth"


def test_truncated_file(files: dict, tmp_path: Path) -> None:
    path, _ = files["2.1"]
    cut = tmp_path / "Wan2.1_VAE.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot be read by torch.load") as err:
        load_vae(cut, device="cpu")
    assert err.value.path == cut


def test_other_state_dict_is_not_a_vae(tmp_path: Path) -> None:
    """E.g. the T5 file passed by mistake (its keys, tiny tensors)."""
    t5 = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"token_embedding.weight": torch.zeros(8, 4), "blocks.0.attn.q.weight": torch.zeros(4, 4)}, t5)
    with pytest.raises(CheckpointError, match="not a Wan VAE state dict.*token_embedding"):
        load_vae(t5, device="cpu")


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_vae(path, device="cpu")


def test_wrong_shape_and_missing_key_are_listed(files: dict, tmp_path: Path) -> None:
    path, model = files["2.1"]
    state = dict(model.state_dict())
    state["decoder.upsamples.3.time_conv.weight"] = torch.zeros(1, 1, 3, 1, 1)
    bad = tmp_path / "shape.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"decoder\.upsamples\.3\.time_conv\.weight has shape \(1, 1, 3, 1, 1\)"):
        load_vae(bad, device="cpu")
    del state["decoder.upsamples.3.time_conv.weight"]
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.upsamples\.3\.time_conv\.weight"):
        load_vae(bad, device="cpu")


def test_unknown_architecture_is_refused(files: dict, tmp_path: Path) -> None:
    """A 2.2-looking file whose z_dim has no published latent constants (§2.5)."""
    path, model = files["2.2"]
    state = dict(model.state_dict())
    state["conv2.weight"] = torch.zeros(16, 16, 1, 1, 1)
    bad = tmp_path / "z16.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="not a Wan2.2 VAE layout: z_dim 16"):
        load_vae(bad, device="cpu")

"""Our Wan2.2 VAE against diffusers' `AutoencoderKLWan(is_residual=True, patch_size=2, …)` with the
same tiny random weights.

Relative error is max|ours − ref| / max|ref|, fp32 on CPU; the reference side gets the spec §2.5
normalisation applied by hand (diffusers works on raw latents). Non-square video, 9 frames = 3
latent frames (first chunk, second chunk, steady state of §5.4; DupUp3D's first-chunk drop).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from wan_core.models.vae2_2 import AvgDown3D, DupUp3D, Wan22VAE, Wan22VAEConfig, patchify, unpatchify
from wan_core.testing.diffusers_vae import diffusers_vae, random_vae

TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 9, 48, 32  # latent 3 × 3 × 2


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def models() -> tuple[Wan22VAE, torch.nn.Module]:
    ours = random_vae(Wan22VAE, Wan22VAEConfig.tiny())
    return ours, diffusers_vae(ours)


def test_published_layout() -> None:
    """The default config builds exactly the published file's tensors (spec §2.4) and reads back."""
    with torch.device("meta"):
        model = Wan22VAE()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 196
    assert sum(v.numel() for v in model.state_dict().values()) == 704_688_668
    assert shapes["encoder.conv1.weight"] == (160, 12, 3, 3, 3)
    assert shapes["encoder.downsamples.1.downsamples.0.shortcut.weight"] == (320, 160, 1, 1, 1)
    assert shapes["encoder.downsamples.2.downsamples.2.time_conv.weight"] == (640, 640, 3, 1, 1)
    assert shapes["decoder.upsamples.0.upsamples.3.time_conv.weight"] == (2048, 1024, 3, 1, 1)
    assert shapes["decoder.upsamples.2.upsamples.3.resample.1.weight"] == (512, 512, 3, 3)
    assert "decoder.upsamples.2.upsamples.3.time_conv.weight" not in shapes  # upsample2d stage
    assert shapes["decoder.head.2.weight"] == (12, 256, 3, 3, 3)
    assert Wan22VAEConfig.from_state_dict(shapes) == Wan22VAEConfig()
    assert model.stride == (4, 16, 16) and model.z_dim == 48


def test_tiny_has_the_published_key_pattern() -> None:
    with torch.device("meta"):
        real, tiny = Wan22VAE(), Wan22VAE(Wan22VAEConfig.tiny())
    assert list(real.state_dict()) == list(tiny.state_dict())
    shapes = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    assert Wan22VAEConfig.from_state_dict(shapes) == Wan22VAEConfig.tiny()


def test_encode_matches_diffusers(models: tuple[Wan22VAE, torch.nn.Module]) -> None:
    ours, ref = models
    video = torch.rand(1, 3, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = ours.encode(video)
    with torch.no_grad():
        mu = ref.encode(video).latent_dist.mode()
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    assert latents.shape == (1, 48, 3, HEIGHT // 16, WIDTH // 16) and latents.dtype == torch.float32
    assert rel_err(latents, (mu - mean) * inv_std) <= TOL


def test_decode_matches_diffusers(models: tuple[Wan22VAE, torch.nn.Module]) -> None:
    ours, ref = models
    latents = torch.randn(1, 48, 3, HEIGHT // 16, WIDTH // 16, generator=torch.Generator().manual_seed(2))
    video = ours.decode(latents)
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    with torch.no_grad():
        expected = ref.decode(latents / inv_std + mean).sample
    assert video.shape == (1, 3, FRAMES, HEIGHT, WIDTH) and video.dtype == torch.float32
    assert video.abs().max() <= 1.0
    assert rel_err(video, expected) <= TOL


def test_round_trip_shapes(models: tuple[Wan22VAE, torch.nn.Module]) -> None:
    """F = 4n+1 → n+1 latent frames → F, for n = 0 (image) and 1; sizes must be multiples of 16."""
    ours, _ = models
    for frames in (1, 5):
        latents = ours.encode(torch.zeros(1, 3, frames, 32, 16))
        assert latents.shape == (1, 48, (frames - 1) // 4 + 1, 2, 1)
        assert ours.decode(latents).shape == (1, 3, frames, 32, 16)
    with pytest.raises(ValueError, match="multiples of 16"):
        ours.encode(torch.zeros(1, 3, 5, 24, 16))


def test_patchify_is_the_spec_formula() -> None:
    """§5.3: out[c·4 + r·2 + q, f, h, w] = x[c, f, 2h+q, 2w+r] (column offset r is the slower index)."""
    x = torch.randn(2, 3, 2, 6, 4)
    y = patchify(x)
    assert y.shape == (2, 12, 2, 3, 2)
    for c in range(3):
        for r in range(2):
            for q in range(2):
                assert torch.equal(y[:, c * 4 + r * 2 + q], x[:, c, :, q::2, r::2])
    assert torch.equal(unpatchify(y), x)


def test_avgdown_and_dupup_are_the_spec_formulas() -> None:
    """§5.3 channel orders: AvgDown3D folds to c·8 + (i_t·2 + i_h)·2 + i_w and averages groups;
    DupUp3D repeats channels and unfolds ((o·2 + i_t)·2 + i_h)·2 + i_w; first chunk drops 1 frame."""
    x = torch.randn(1, 4, 3, 4, 6)  # 3 frames: one zero frame is prepended to make 4
    down = AvgDown3D(4, 8, factor_t=2, factor_s=2)(x)
    padded = torch.cat([torch.zeros(1, 4, 1, 4, 6), x], dim=2)
    folded = torch.stack([
        padded[:, c, i_t::2, i_h::2, i_w::2]
        for c in range(4) for i_t in range(2) for i_h in range(2) for i_w in range(2)
    ], dim=1)  # fmt: skip
    torch.testing.assert_close(down, folded.reshape(1, 8, 4, 2, 2, 3).mean(dim=2))

    z = torch.randn(1, 8, 2, 2, 3)
    up = DupUp3D(8, 4, factor_t=2, factor_s=2)
    full = up(z, first_chunk=False)
    assert full.shape == (1, 4, 4, 4, 6)
    repeated = z.repeat_interleave(4, dim=1)  # 8 · 4 = 4 · 2·2·2 channels
    for o in range(4):
        for i_t in range(2):
            for i_h in range(2):
                for i_w in range(2):
                    channel = ((o * 2 + i_t) * 2 + i_h) * 2 + i_w
                    assert torch.equal(full[:, o, i_t::2, i_h::2, i_w::2], repeated[:, channel])
    assert torch.equal(up(z, first_chunk=True), full[:, :, 1:])

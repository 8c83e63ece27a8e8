"""Our Wan2.1 VAE against diffusers' `AutoencoderKLWan` with the same tiny random weights.

Relative error is max|ours − ref| / max|ref|, fp32 on CPU. diffusers returns raw μ and decodes raw
latents, so the reference side gets the spec §2.5 normalisation applied by hand. The video is not
square (H ≠ W) so a transposed axis cannot pass, and has 9 frames = 3 latent frames, so every
cache rule of §5.4 (first chunk, second chunk, steady state) is exercised.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from wan_core.models.vae2_1 import LATENT_MEAN, LATENT_STD, Wan21VAE, Wan21VAEConfig
from wan_core.models.vae_blocks import RMS_norm, Resample
from wan_core.testing.diffusers_vae import diffusers_vae, random_vae

TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 9, 24, 16  # latent 3 × 3 × 2


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def models() -> tuple[Wan21VAE, torch.nn.Module]:
    ours = random_vae(Wan21VAE, Wan21VAEConfig.tiny())
    return ours, diffusers_vae(ours)


def test_published_layout() -> None:
    """The default config builds exactly the published file's tensors (spec §2.4) and reads back."""
    with torch.device("meta"):
        model = Wan21VAE()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 194
    assert sum(v.numel() for v in model.state_dict().values()) == 126_892_531
    assert shapes["encoder.downsamples.5.time_conv.weight"] == (192, 192, 3, 1, 1)
    assert shapes["decoder.upsamples.3.resample.1.weight"] == (192, 384, 3, 3)
    assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["decoder.upsamples.4.shortcut.weight"] == (384, 192, 1, 1, 1)
    assert shapes["decoder.upsamples.11.resample.1.weight"] == (96, 192, 3, 3)
    assert shapes["encoder.middle.1.norm.gamma"] == (384, 1, 1)
    assert Wan21VAEConfig.from_state_dict(shapes) == Wan21VAEConfig()
    assert model.stride == (4, 8, 8) and model.z_dim == 16


def test_tiny_has_the_published_key_pattern() -> None:
    with torch.device("meta"):
        real, tiny = Wan21VAE(), Wan21VAE(Wan21VAEConfig.tiny())
    assert list(real.state_dict()) == list(tiny.state_dict())
    shapes = {k: tuple(v.shape) for k, v in tiny.state_dict().items()}
    assert Wan21VAEConfig.from_state_dict(shapes) == Wan21VAEConfig.tiny()


def test_latent_constants_match_diffusers() -> None:
    """diffusers' Wan2.1 defaults hold the same §2.5 constants (copied independently)."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        config = AutoencoderKLWan().config
    assert tuple(config.latents_mean) == LATENT_MEAN
    assert tuple(config.latents_std) == LATENT_STD


def test_encode_matches_diffusers(models: tuple[Wan21VAE, torch.nn.Module]) -> None:
    ours, ref = models
    video = torch.rand(1, 3, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = ours.encode(video)
    with torch.no_grad():
        mu = ref.encode(video).latent_dist.mode()
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    assert latents.shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8) and latents.dtype == torch.float32
    assert rel_err(latents, (mu - mean) * inv_std) <= TOL


def test_decode_matches_diffusers(models: tuple[Wan21VAE, torch.nn.Module]) -> None:
    ours, ref = models
    latents = torch.randn(1, 16, 3, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(2))
    video = ours.decode(latents)
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    with torch.no_grad():
        expected = ref.decode(latents / inv_std + mean).sample
    assert video.shape == (1, 3, FRAMES, HEIGHT, WIDTH) and video.dtype == torch.float32
    assert video.abs().max() <= 1.0
    assert rel_err(video, expected) <= TOL


def test_single_frame_round_trip(models: tuple[Wan21VAE, torch.nn.Module]) -> None:
    """F = 1 (an image, as i2v encodes) → 1 latent frame → 1 frame; F must be 4n+1."""
    ours, _ = models
    image = torch.zeros(2, 3, 1, 16, 8)
    latents = ours.encode(image)
    assert latents.shape == (2, 16, 1, 2, 1)
    assert ours.decode(latents).shape == (2, 3, 1, 16, 8)
    with pytest.raises(ValueError, match="4n\\+1"):
        ours.encode(torch.zeros(1, 3, 8, 16, 8))


def test_bf16_opt_in_tracks_fp32(models: tuple[Wan21VAE, torch.nn.Module]) -> None:
    ours, _ = models
    bf16 = random_vae(Wan21VAE, Wan21VAEConfig.tiny()).to(torch.bfloat16)
    latents = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    out16, out32 = bf16.decode(latents), ours.decode(latents)
    assert out16.dtype == torch.float32
    assert F.cosine_similarity(out16.flatten(), out32.flatten(), dim=0) > 0.999


def test_rms_norm_is_the_spec_formula() -> None:
    """§5.1: x / max(‖x‖₂ over channels, 1e-12) · √C · γ."""
    norm = RMS_norm(6, images=False)
    with torch.no_grad():
        norm.gamma.copy_(torch.linspace(0.5, 1.5, 6).view(6, 1, 1, 1))
    x = torch.randn(2, 6, 3, 4, 5)
    x[0, :, 0, 0, 0] = 0  # the 1e-12 floor: a zero vector stays zero
    expected = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * 6**0.5 * norm.gamma
    torch.testing.assert_close(norm(x), expected, rtol=1e-6, atol=1e-6)


def test_nearest_upsample_in_bf16_equals_the_official_fp32_round_trip() -> None:
    """We skip the official fp32 cast around nearest-exact (§5.1): a copy is exact in any dtype."""
    up = Resample(4, "upsample2d").resample[0]
    x = torch.randn(3, 4, 5, 7).to(torch.bfloat16)
    assert torch.equal(up(x), up(x.float()).to(torch.bfloat16))

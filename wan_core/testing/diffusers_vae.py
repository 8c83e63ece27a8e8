"""diffusers' `AutoencoderKLWan` as an independent reference for our VAEs, with our weights.

Used by the parity tests and `bench/vae_decode.py` only. The rename table below maps the official
names (ours, spec §2.4) onto diffusers' module tree; it was derived from the two modules' key lists
and agrees with diffusers' own `convert_wan_vae_to_diffusers` (loaders/single_file_utils.py, Wan2.1
only). The renamed tensors are ours, not copies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from wan_core.models.vae2_1 import Wan21VAE, Wan21VAEConfig
from wan_core.models.vae2_2 import Wan22VAE, Wan22VAEConfig

# Whole-prefix renames (first match wins): official prefix → diffusers prefix.
_PREFIXES: tuple[tuple[str, str], ...] = (
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(en|de)coder\.conv1\.", r"\1coder.conv_in."),
    (r"^(en|de)coder\.head\.0\.", r"\1coder.norm_out."),
    (r"^(en|de)coder\.head\.2\.", r"\1coder.conv_out."),
    (r"^(en|de)coder\.middle\.0\.", r"\1coder.mid_block.resnets.0."),
    (r"^(en|de)coder\.middle\.1\.", r"\1coder.mid_block.attentions.0."),
    (r"^(en|de)coder\.middle\.2\.", r"\1coder.mid_block.resnets.1."),
    # Wan2.2 stages: inner `downsamples.j` / `upsamples.j` → `resnets.j`, or the stage's resampler.
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(?=resample\.|time_conv\.)",
     r"encoder.down_blocks.\1.downsampler."),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(?=resample\.|time_conv\.)", r"decoder.up_blocks.\1.upsampler."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    # Wan2.1: the encoder list stays flat; the flat decoder list is regrouped by `_decoder21`.
    (r"^encoder\.downsamples\.", "encoder.down_blocks."),
)

# Inside a ResidualBlock: official `residual.i` / `shortcut` → diffusers names.
_RESIDUAL: tuple[tuple[str, str], ...] = (
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.shortcut\.", ".conv_shortcut."),
)


def _decoder21(key: str, per_stage: int) -> str:
    """Wan2.1 `decoder.upsamples.N` (flat, `per_stage` = blocks + resample) → `up_blocks.i.…`."""
    m = re.match(r"^decoder\.upsamples\.(\d+)\.(.*)$", key)
    if m is None:
        return key
    stage, j = divmod(int(m[1]), per_stage)
    inner = "upsamplers.0" if m[2].startswith(("resample.", "time_conv.")) else f"resnets.{j}"
    return f"decoder.up_blocks.{stage}.{inner}.{m[2]}"


def random_vae(
    model_cls: type[Wan21VAE] | type[Wan22VAE], config: Wan21VAEConfig | Wan22VAEConfig, seed: int = 0
) -> Wan21VAE | Wan22VAE:
    """A VAE with seeded weights where every path matters: torch's default conv init, norm gains
    drawn near 1 (all-ones gains would hide a γ applied on the wrong axis)."""
    torch.manual_seed(seed)
    model = model_cls(config).eval().requires_grad_(False)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(1 + 0.1 * torch.randn(p.shape))
    return model


def to_diffusers_state_dict(model: Wan21VAE | Wan22VAE) -> dict[str, Tensor]:
    """Our (official) parameter names → diffusers `AutoencoderKLWan` names, same tensors."""
    per_stage = model.config.num_res_blocks + 2
    out = {}
    for key, value in model.state_dict().items():
        if isinstance(model, Wan21VAE):
            key = _decoder21(key, per_stage)
        for pattern, replacement in _PREFIXES:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        for pattern, replacement in _RESIDUAL:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def diffusers_config(model: Wan21VAE | Wan22VAE) -> dict[str, object]:
    """`AutoencoderKLWan` constructor arguments equivalent to our model's config."""
    cfg = model.config
    args: dict[str, object] = dict(
        base_dim=cfg.dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        temperal_downsample=list(cfg.temporal_downsample),
        latents_mean=list(model.latent_mean),
        latents_std=list(model.latent_std),
        scale_factor_temporal=model.stride[0],
        scale_factor_spatial=model.stride[1],
    )
    if isinstance(model, Wan22VAE):
        args.update(decoder_base_dim=cfg.dec_dim, is_residual=True, in_channels=12, out_channels=12, patch_size=2)
    return args


def diffusers_vae(model: Wan21VAE | Wan22VAE, state_dict: Mapping[str, Tensor] | None = None):
    """An `AutoencoderKLWan` holding `model`'s weights (built on meta, tensors assigned, no copy)."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        ref = AutoencoderKLWan(**diffusers_config(model))
    weights = state_dict if state_dict is not None else to_diffusers_state_dict(model)
    ref.load_state_dict(weights, strict=True, assign=True)
    return ref.eval().requires_grad_(False)

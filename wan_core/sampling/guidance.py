"""Classifier-free guidance and the A14B expert choice, as the official sampling loops do them.

Matches the sampling loops of `wan/text2video.py`, `wan/image2video.py` and
`wan/textimage2video.py` of Wan-Video/Wan2.2@42bf4cf (`_prepare_model_for_timestep`, the line
`sample_guide_scale = guide_scale[1] if t.item() >= boundary else guide_scale[0]` and the CFG line);
`shared/wan22-spec.md` §6.4–6.5.
"""

from __future__ import annotations

import torch

from wanspec.tasks import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT

GuideScale = float | tuple[float, float]  # a scalar, or (low-noise, high-noise) in upstream's order


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, guide_scale: float) -> torch.Tensor:
    """v = v_u + g·(v_c − v_u), in fp32 and in upstream's operation order (spec §6.4)."""
    v_uncond = v_uncond.float()
    return v_uncond + guide_scale * (v_cond.float() - v_uncond)


def guide_scales(guide_scale: GuideScale) -> tuple[float, float]:
    """(low-noise, high-noise) scales; a scalar (what the CLI passes) applies to both experts."""
    if isinstance(guide_scale, (int, float)):
        return float(guide_scale), float(guide_scale)
    if len(guide_scale) != 2:
        raise ValueError(
            f"guide scale must be a number or (low_noise, high_noise), got {guide_scale!r}"
        )
    low, high = guide_scale
    return float(low), float(high)


def select_expert(
    t: int | float | torch.Tensor, boundary_t: float, guide_scale: GuideScale
) -> tuple[str, float]:
    """The expert subfolder and guide scale for the integer timestep t (spec §6.5).

    t >= boundary_t (boundary·1000, `TaskSpec.boundary_timestep`: 875 for t2v, 900 for i2v) picks
    the high-noise expert with guide_scale[1], anything lower the low-noise one with guide_scale[0].
    Timesteps only decrease, so the switch happens once per video.
    """
    low, high = guide_scales(guide_scale)
    if float(t) >= boundary_t:
        return HIGH_NOISE_EXPERT, high
    return LOW_NOISE_EXPERT, low

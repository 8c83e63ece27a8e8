"""The whole-pipeline cases shared by the torchrun worker and the one-process reference.

Tiny sizes whose token counts (6 or 3 per latent frame) do not divide 4, so Ulysses pads; A14B
runs 4 steps so both experts are used (t = 999, 972, 923 high noise, then low), ti2v-5B runs
text and image mode (per-token timesteps, split by Ulysses).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from wan_core.pipelines import WanPipeline

FRAMES = 5  # 2 latent frames
STEPS = 4
SEED = 3
PROMPT = "a fox in the snow"
CASES = {
    "t2v-A14B": ("text",),
    "i2v-A14B": ("image",),
    "ti2v-5B": ("text", "image"),
}


def image(width: int, height: int) -> Image.Image:
    """A smooth RGB test image (deterministic)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    rgb = torch.stack([x, y, (x + y) / 2], dim=-1).mul(255).to(torch.uint8)
    return Image.fromarray(rgb.numpy())


def run_case(pipe: WanPipeline, mode: str) -> Tensor | None:
    """The video [3, F, H, W] of one case (None on ranks other than 0 under torchrun)."""
    opts = pipe.sampling_options(frame_num=FRAMES, sampling_steps=STEPS, seed=SEED)
    name = pipe.task.name
    if name == "t2v-A14B":
        return pipe.run(PROMPT, 48, 16, opts)  # latent 2 × 6 → 3 tokens per row… 6 per frame
    if name == "i2v-A14B":
        return pipe.run(PROMPT, image(48, 16), 48 * 16, opts)
    if mode == "text":
        return pipe.run(PROMPT, 96, 32, opts)
    return pipe.run_image(PROMPT, image(96, 32), 96 * 32, opts)

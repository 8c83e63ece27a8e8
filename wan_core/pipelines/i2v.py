"""Image-to-video with the two-expert A14B DiT (`i2v-A14B`).

Matches `WanI2V.generate` in `wan/image2video.py` of Wan-Video/Wan2.2@42bf4cf; implements
`shared/wan22-spec.md` §7.2 (image resize, mask, VAE-latent conditioning) with the sampling of §6.
The image sets the aspect ratio; `max_area` (the area of a supported size) sets the pixel budget.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wan_core.pipelines.common import (
    ProgressCallback,
    SamplingOptions,
    WanPipeline,
    check_image,
    check_max_area,
    initial_noise,
    to_tensor,
)
from wanspec.tasks import PATCH_SIZE, latent_frames


def i2v_latent_size(image_w: int, image_h: int, max_area: int, stride: int = 8) -> tuple[int, int]:
    """(lat_h, lat_w) = ⌊⌊√(area·ar)⌋/8⌋ rounded down to even, ar = h/w (§7.2 step 2).

    Upstream's `round(np.sqrt(max_area * ar) // 8 // 2 * 2)` in float64; the aspect is kept only
    approximately (the image is stretched to this size, never cropped).
    """
    ar = image_h / image_w
    lat_h = round(math.sqrt(max_area * ar) // stride // PATCH_SIZE[1] * PATCH_SIZE[1])
    lat_w = round(math.sqrt(max_area / ar) // stride // PATCH_SIZE[2] * PATCH_SIZE[2])
    if lat_h == 0 or lat_w == 0:
        raise ValueError(
            f"a {image_w}x{image_h} image in a {max_area}-pixel budget rounds to {lat_w * stride}x"
            f"{lat_h * stride} pixels; use an image of a less extreme aspect ratio"
        )
    return lat_h, lat_w


def first_frame_mask(frame_num: int, lat_h: int, lat_w: int) -> Tensor:
    """[4, F_lat, lat_h, lat_w]: ones at latent frame 0, zeros elsewhere (§7.2 step 5).

    Built as upstream does: a per-pixel-frame mask, frame 0 repeated 4×, folded 4 frames per latent frame.
    """
    mask = torch.ones(1, frame_num, lat_h, lat_w)
    mask[:, 1:] = 0
    mask = torch.cat([mask[:, :1].repeat_interleave(4, dim=1), mask[:, 1:]], dim=1)  # (1, F + 3, h, w)
    return mask.view(1, mask.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)[0]  # (4, F_lat, h, w)


def conditioning_video(image: Image.Image, frame_num: int, height: int, width: int) -> Tensor:
    """[3, F, h, w]: the image bicubic-resized to (h, w) as frame 0, then F − 1 zero frames.

    `F.interpolate(mode='bicubic')` on the CPU in fp32, no antialias, no crop, no clamp (§7.2 step 6).
    """
    img = to_tensor(image)  # (3, h0, w0)
    resized = F.interpolate(img[None], size=(height, width), mode="bicubic", align_corners=False)  # (1, 3, h, w)
    return torch.cat([resized.transpose(0, 1), torch.zeros(3, frame_num - 1, height, width)], dim=1)


class ImageToVideo(WanPipeline):
    """`generate(input_prompt, img, max_area=…, …)` → video [3, F, h, w] in [−1, 1]."""

    def generate(
        self,
        input_prompt: str,
        img: Image.Image,
        max_area: int | None = None,
        frame_num: int | None = None,
        shift: float | None = None,
        sample_solver: str = "unipc",
        sampling_steps: int | None = None,
        guide_scale: float | tuple[float, float] | None = None,
        n_prompt: str = "",
        seed: int = -1,
        offload_model: bool | None = None,
        callback: ProgressCallback | None = None,
        decode: bool = True,
    ) -> Tensor:
        """Upstream's keyword names; None takes the task's default (area of 1280*720, 81 frames, …).

        img: the first frame (PIL, required). max_area: the area of one of the task's sizes.
        """
        if img is None:
            raise ValueError("i2v-A14B needs an image (img=PIL.Image); for text only use t2v-A14B or ti2v-5B")
        image = check_image(img, self.task)
        max_area = check_max_area(self.task, self.task.default_size.area if max_area is None else max_area)
        opts = self.sampling_options(
            frame_num=frame_num, shift=shift, sample_solver=sample_solver,
            sampling_steps=sampling_steps, guide_scale=guide_scale, seed=seed,
            offload_model=offload_model,
        )
        return self.run(input_prompt, image, max_area, opts, n_prompt=n_prompt, callback=callback, decode=decode)

    @torch.no_grad()
    def run(
        self,
        prompt: str,
        image: Image.Image,
        max_area: int,
        opts: SamplingOptions,
        *,
        n_prompt: str = "",
        callback: ProgressCallback | None = None,
        decode: bool = True,
    ) -> Tensor:
        """The steps of `generate` for any pixel budget (tests use tiny ones); decode=False → latent."""
        # 1. output size from the image's aspect ratio and the pixel budget
        stride = self.task.vae_stride[1]
        lat_h, lat_w = i2v_latent_size(image.width, image.height, max_area, stride)
        height, width = lat_h * stride, lat_w * stride

        # 2. initial noise [16, F_lat, lat_h, lat_w]: one seeded randn on the device (§7)
        shape = (self.task.z_dim, latent_frames(opts.frame_num), lat_h, lat_w)
        noise = initial_noise(shape, opts.seed, self.device)

        # 3. prompt and negative prompt → padded umT5 contexts
        context, context_null = self.encode_prompts(prompt, n_prompt, opts.offload_model)

        # 4. conditioning y = [mask (4), VAE latent of image + zero frames (16)]
        video = conditioning_video(image, opts.frame_num, height, width).to(self.device)
        latent_cond = self.vae.encode(video[None])[0]  # (16, F_lat, lat_h, lat_w)
        mask = first_frame_mask(opts.frame_num, lat_h, lat_w).to(self.device)
        y = torch.cat([mask, latent_cond])  # (20, F_lat, lat_h, lat_w)

        # 5. sampling loop with y in both CFG branches
        latent = self.denoise(noise, context, context_null, opts, y=y, callback=callback)

        # 6. decode all frames (frame 0 is not replaced: the image conditions only through y)
        return self.decode(latent) if decode else latent

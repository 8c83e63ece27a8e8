"""Text-(image-)to-video with the dense 5B DiT (`ti2v-5B`): text only, or an image as frame 0.

Matches `WanTI2V.generate` (`t2v` and `i2v` paths) in `wan/textimage2video.py` and
`best_output_size` in `wan/utils/utils.py` of Wan-Video/Wan2.2@42bf4cf; implements
`shared/wan22-spec.md` §7.3.

Text mode is `TextToVideo.run` with the 5B's latent (48 channels, stride 16). Upstream feeds it
per-token timesteps that are all equal to t; a scalar t gives the same embedding for every token
(the DiT broadcasts it), so the scalar is passed and the [L, 6·dim] per-token table is not built.
Image mode pins latent frame 0 to the image latent, gives its tokens timestep 0 and re-pins after
every solver step.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

from wan_core.pipelines.common import (
    FirstFrame,
    ProgressCallback,
    SamplingOptions,
    check_image,
    check_max_area,
    check_size,
    initial_noise,
    to_tensor,
)
from wan_core.pipelines.t2v import TextToVideo
from wanspec.tasks import PATCH_SIZE, Size, latent_frames


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """(ow, oh): multiples of (dw, dh) with ow·oh ≤ area whose ratio is closest to w/h (§7.3 step 1).

    Two candidates, width rounded first or height first; ties go to the height-first one, as upstream.
    """
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh2 = int(oh // dh * dh)
    if ow1 == 0 or oh2 == 0:
        raise ValueError(
            f"a {w}x{h} image is too elongated for a {expected_area}-pixel budget in steps of "
            f"{dw}x{dh}; use an image of a less extreme aspect ratio"
        )
    oh1 = int(expected_area / ow1 // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    if oh1 == 0 or ow2 == 0:
        raise ValueError(f"a {w}x{h} image is too elongated for a {expected_area}-pixel budget")
    ratio1, ratio2 = ow1 / oh1, ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def resize_and_crop(image: Image.Image, ow: int, oh: int) -> Image.Image:
    """LANCZOS-resize to cover (ow, oh), aspect kept, then centre-crop to it (§7.3 step 2)."""
    iw, ih = image.size
    scale = max(ow / iw, oh / ih)
    image = image.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (image.width - ow) // 2, (image.height - oh) // 2
    return image.crop((x1, y1, x1 + ow, y1 + oh))


class TextImageToVideo(TextToVideo):
    """`generate(input_prompt, img=None, size=…, max_area=…, …)` → video [3, F, H, W] in [−1, 1]."""

    def generate(  # type: ignore[override]  # adds img and max_area, as upstream's WanTI2V
        self,
        input_prompt: str,
        img: Image.Image | None = None,
        size: str | tuple[int, int] | Size | None = None,
        max_area: int | None = None,
        frame_num: int | None = None,
        shift: float | None = None,
        sample_solver: str = "unipc",
        sampling_steps: int | None = None,
        guide_scale: float | None = None,
        n_prompt: str = "",
        seed: int = -1,
        offload_model: bool | None = None,
        callback: ProgressCallback | None = None,
        decode: bool = True,
    ) -> Tensor:
        """Without img: text mode at exactly `size`. With img: image mode within `max_area` pixels
        (default: the area of `size`), the aspect ratio following the image."""
        size = check_size(self.task, self.task.default_size if size is None else size)
        image = None if img is None else check_image(img, self.task)
        if image is not None:
            max_area = check_max_area(self.task, size.area if max_area is None else max_area)
        opts = self.sampling_options(
            frame_num=frame_num, shift=shift, sample_solver=sample_solver,
            sampling_steps=sampling_steps, guide_scale=guide_scale, seed=seed,
            offload_model=offload_model,
        )
        if image is None:
            return self.run(input_prompt, size.width, size.height, opts, n_prompt=n_prompt, callback=callback,
                            decode=decode)
        return self.run_image(input_prompt, image, max_area, opts, n_prompt=n_prompt, callback=callback, decode=decode)

    @torch.no_grad()
    def run_image(
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
        """Image mode of `generate` for any pixel budget (tests use tiny ones); decode=False → latent."""
        # 1. output size (multiples of stride × patch = 32) and the resized, cropped image
        _, stride_h, stride_w = self.task.vae_stride
        ow, oh = best_output_size(
            image.width, image.height, stride_w * PATCH_SIZE[2], stride_h * PATCH_SIZE[1], max_area
        )
        pixels = to_tensor(resize_and_crop(image, ow, oh)).to(self.device)[:, None]  # (3, 1, oh, ow)

        # 2. initial noise [48, F_lat, oh/16, ow/16]: one seeded randn on the device (§7)
        shape = (self.task.z_dim, latent_frames(opts.frame_num), oh // stride_h, ow // stride_w)
        noise = initial_noise(shape, opts.seed, self.device)

        # 3. prompt and negative prompt → padded umT5 contexts
        context, context_null = self.encode_prompts(prompt, n_prompt, opts.offload_model)

        # 4. image latent as frame 0: x = (1 − M)·z + M·noise, M = 0 on latent frame 0
        z = self.vae.encode(pixels[None])[0]  # (48, 1, oh/16, ow/16)
        mask = torch.ones_like(noise)
        mask[:, 0] = 0
        first = FirstFrame(z=z, mask=mask)

        # 5. sampling loop: frame-0 tokens at timestep 0, frame 0 re-pinned after every step
        latent = self.denoise(first.pin(noise), context, context_null, opts, first_frame=first, callback=callback)

        # 6. decode
        return self.decode(latent) if decode else latent

"""Text-to-video with the two-expert A14B DiT (`t2v-A14B`).

Matches `WanT2V.generate` in `wan/text2video.py` of Wan-Video/Wan2.2@42bf4cf; implements
`shared/wan22-spec.md` §7.1 with the sampling of §6 and the memory modes of §11.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wan_core.pipelines.common import (
    ProgressCallback,
    SamplingOptions,
    WanPipeline,
    check_multiple,
    check_size,
    initial_noise,
)
from wanspec.tasks import Size, latent_frames


class TextToVideo(WanPipeline):
    """`generate(input_prompt, size=…, …)` → video [3, F, H, W] in [−1, 1]."""

    def generate(
        self,
        input_prompt: str,
        size: str | tuple[int, int] | Size | None = None,
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
        """Upstream's keyword names; None takes the task's default (size 1280*720, 81 frames, …).

        guide_scale: one number for both experts or (low-noise, high-noise). seed < 0: random.
        callback(step, total, expert) runs after every step. decode=False: the final latent instead
        of the video (to decode it with `decode_stream`, as the generate command does).
        """
        size = check_size(self.task, self.task.default_size if size is None else size)
        opts = self.sampling_options(
            frame_num=frame_num, shift=shift, sample_solver=sample_solver,
            sampling_steps=sampling_steps, guide_scale=guide_scale, seed=seed,
            offload_model=offload_model,
        )
        return self.run(input_prompt, size.width, size.height, opts, n_prompt=n_prompt, callback=callback,
                        decode=decode)

    @torch.no_grad()
    def run(
        self,
        prompt: str,
        width: int,
        height: int,
        opts: SamplingOptions,
        *,
        n_prompt: str = "",
        callback: ProgressCallback | None = None,
        decode: bool = True,
    ) -> Tensor:
        """The steps of `generate` at any size that fills whole DiT patches.

        `generate` is the strict entry (only the task's trained sizes); this one also serves tests
        at tiny sizes. decode=False returns the final latent [z, F_lat, H/s, W/s] instead of the
        video, to compare runs latent by latent (spec §12).
        """
        check_multiple(self.task, width, height)
        _, stride_h, stride_w = self.task.vae_stride

        # 1. initial noise [z, F_lat, H/s, W/s]: one seeded randn on the device (§7)
        shape = (self.task.z_dim, latent_frames(opts.frame_num), height // stride_h, width // stride_w)
        noise = initial_noise(shape, opts.seed, self.device)

        # 2. prompt and negative prompt (the task's default when empty) → padded umT5 contexts
        context, context_null = self.encode_prompts(prompt, n_prompt, opts.offload_model)

        # 3. sampling loop: expert per step, CFG, solver step
        latent = self.denoise(noise, context, context_null, opts, callback=callback)

        # 4. decode with the VAE
        return self.decode(latent) if decode else latent

"""Wan2.2 pipelines: prompt (+ image) → latents → video, one per task (spec §7).

    pipe = load_pipeline(task="ti2v-5B", ckpt_dir="./Wan2.2-TI2V-5B")
    video = pipe.generate("a red fox in the snow", size="1280*704", seed=42)  # (3, F, H, W) in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import torch

from wan_core.pipelines.common import ProgressCallback, SamplingOptions, WanPipeline, initial_noise, resolve_seed
from wan_core.pipelines.i2v import ImageToVideo
from wan_core.pipelines.t2v import TextToVideo
from wan_core.pipelines.ti2v import TextImageToVideo
from wan_core.prompt_cache import PromptCache
from wanspec.tasks import get_task

if TYPE_CHECKING:
    from wan_core.parallel import ParallelLayout

PIPELINES: dict[str, type[WanPipeline]] = {
    "t2v-A14B": TextToVideo,
    "i2v-A14B": ImageToVideo,
    "ti2v-5B": TextImageToVideo,
}


def load_pipeline(
    task: str,
    ckpt_dir: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    offload_model: bool | None = None,
    convert_model_dtype: bool = False,
    t5_cpu: bool = False,
    parallel: ParallelLayout | None = None,
    precision: str = "exact",
    prompt_cache: PromptCache | None = None,
) -> WanPipeline:
    """Load the official checkpoint folder of `task` into its pipeline.

    device: default CUDA when available, else CPU. dtype: compute dtype, default bf16 on CUDA
    (the official precision map) and fp32 on CPU; fp32 runs every component in fp32.
    offload_model: default for each `generate` (None → True in one process, as upstream).
    convert_model_dtype: store the DiT weights in bf16. t5_cpu: encode prompts on the CPU.
    parallel: the torchrun layout (`wan_core.parallel.init_distributed`); None runs on one device.
    precision: "exact" (the official numbers) or an opt-in lossy mode ("fp8", `wan_core.ops.quant`).
    prompt_cache: encoded prompts on disk (`wan_core.prompt_cache`); umT5 is then loaded only if
    a prompt misses (under torchrun: on any rank, and then on every rank).
    """
    spec = get_task(task)
    return PIPELINES[spec.name](
        spec.name, ckpt_dir, device=device, dtype=dtype, offload_model=offload_model,
        convert_model_dtype=convert_model_dtype, t5_cpu=t5_cpu, parallel=parallel, precision=precision,
        prompt_cache=prompt_cache,
    )


__all__ = [
    "PIPELINES",
    "ImageToVideo",
    "ProgressCallback",
    "SamplingOptions",
    "TextImageToVideo",
    "TextToVideo",
    "WanPipeline",
    "initial_noise",
    "load_pipeline",
    "resolve_seed",
]

"""The peer's end to end: diffusers' `WanPipeline` from its own folder layout, prompt → MP4.

Two steps, so that the timed run loads what diffusers users load:

    python bench/diffusers_e2e.py convert --ckpt_dir /root/ck5 --task ti2v-5B --out /dev/shm/ck5-diffusers
    python bench/diffusers_e2e.py run --model_dir /dev/shm/ck5-diffusers --task ti2v-5B --size 1280*704 --out x.mp4

`convert` (not timed) reads the official folder with our loaders and writes the same weights in
diffusers' layout with `save_pretrained`: `WanTransformer3DModel` (T2V-A14B: `transformer` the
high-noise expert, `transformer_2` the low-noise one, `boundary_ratio`; TI2V-5B:
`expand_timesteps`), transformers' `UMT5EncoderModel`, `AutoencoderKLWan`, the checkpoint's
tokenizer, and diffusers' stock `UniPCMultistepScheduler` in flow mode with upstream's shift
(diffusers' Wan2.2 folders ship that scheduler). Weights are written in bf16: what
`from_pretrained(torch_dtype=torch.bfloat16)` gives anyway, at half the bytes to read.

`run` is one fresh process, as a diffusers user runs it: `from_pretrained` in bf16 (its VAE too:
diffusers' fastest decode, BENCHMARKS.md "VAE"; its model cards load the VAE in fp32), everything
on the GPU, its attention held to cuDNN SDPA (`set_attention_backend("_native_cudnn")`, the
fastest exact kernel it runs here), the task's upstream defaults (steps, guidance, negative
prompt, fps), then `export_to_video` at imageio quality 8 (crf 10, the file our runs and upstream
write; diffusers' default is quality 5). It logs the moments `bench/end_to_end.py` reads, in our
log format: loaded, first step, sampled (the last step done), saved.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, EXAMPLE_PROMPT_T2V, Size, get_task  # noqa: E402

log = logging.getLogger("diffusers_e2e")
QUALITY = 8  # imageio quality as `wan_core.video` writes (crf 10)
TEXT_TASKS = ("ti2v-5B", "t2v-A14B")  # text to video: diffusers' `WanPipeline` (TI2V-5B in text mode)


def convert(ckpt_dir: Path, task_name: str, out: Path) -> None:
    """The official folder → diffusers' pipeline folder; our loaders give every tensor in bf16."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from wan_core.pipelines import load_pipeline
    from wan_core.testing.diffusers_pipelines import unipc_settings
    from wan_core.testing.diffusers_vae import diffusers_vae
    from wan_core.testing.diffusers_wan import diffusers_wan
    from wan_core.testing.hf_umt5 import auto_tokenizer, hf_umt5
    from wanspec.tasks import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT

    task = get_task(task_name)
    pipe = load_pipeline(task.name, ckpt_dir, device="cpu", dtype=torch.bfloat16, convert_model_dtype=True)

    def transformer(name: str) -> torch.nn.Module:
        model = pipe.experts[name]
        return diffusers_wan(model.cfg, model.state_dict(), "cpu")

    if task.is_moe:
        dits = dict(transformer=transformer(HIGH_NOISE_EXPERT), transformer_2=transformer(LOW_NOISE_EXPERT),
                    boundary_ratio=task.boundary)
    else:
        dits = dict(transformer=transformer(""), expand_timesteps=True)
    t5 = pipe.text_encoder.model
    peer = WanPipeline(tokenizer=auto_tokenizer(pipe.folder.tokenizer),
                       text_encoder=hf_umt5(t5.config, t5.state_dict(), attention="sdpa"),
                       vae=diffusers_vae(pipe.vae), scheduler=UniPCMultistepScheduler(**unipc_settings(task.sample_shift)),
                       **dits)
    peer.save_pretrained(out, safe_serialization=True)


def run(args: argparse.Namespace) -> None:
    """One generation as a diffusers user runs it, with the moments logged."""
    from diffusers import WanPipeline
    from diffusers.utils import export_to_video

    task = get_task(args.task)
    size = Size.parse(args.size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = WanPipeline.from_pretrained(args.model_dir, dtype=torch.bfloat16).to(device)
    if device.type == "cuda":
        for dit in (pipe.transformer, pipe.transformer_2):
            if dit is not None:
                dit.set_attention_backend("_native_cudnn")
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    log.info("loaded on %s", device)
    steps = args.sample_steps or task.sample_steps

    def stamp(_pipe: WanPipeline, i: int, _t: torch.Tensor, kwargs: dict) -> dict:
        if i == 0:
            sync()
            log.info("first step done")
        if i == steps - 1:
            sync()
            log.info("sampled")
        return kwargs

    low, high = task.guide_scale
    frames = pipe(
        prompt=args.prompt or EXAMPLE_PROMPT_T2V, negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        height=size.height, width=size.width, num_frames=args.frame_num or task.frame_num,
        num_inference_steps=steps, guidance_scale=high, guidance_scale_2=low if task.is_moe else None,
        generator=torch.Generator(device).manual_seed(args.base_seed), callback_on_step_end=stamp,
    ).frames[0]
    start = time.perf_counter()
    export_to_video(frames, str(args.out), fps=task.fps, quality=QUALITY)
    log.info("saved %s (%d frames; encoded in %.1f s)", args.out, len(frames), time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="write the official folder in diffusers' layout (not timed)")
    c.add_argument("--ckpt_dir", type=Path, required=True)
    c.add_argument("--task", default="ti2v-5B", choices=TEXT_TASKS)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="one generation with diffusers' pipeline, moments logged")
    r.add_argument("--model_dir", type=Path, required=True)
    r.add_argument("--task", default="ti2v-5B", choices=TEXT_TASKS)
    r.add_argument("--size", default="1280*704")
    r.add_argument("--frame_num", type=int)
    r.add_argument("--sample_steps", type=int)
    r.add_argument("--base_seed", type=int, default=1)
    r.add_argument("--prompt")
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s", stream=sys.stderr)
    if args.command == "convert":
        convert(args.ckpt_dir, args.task, args.out)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `generate` command: upstream `generate.py`'s flags and defaults, on one GPU or the CPU.

    python -m wan_core.generate --task ti2v-5B --size 1280*704 --ckpt_dir ./Wan2.2-TI2V-5B \\
        --offload_model True --convert_model_dtype --t5_cpu --prompt "Two cats boxing"

Matches `generate.py` of Wan-Video/Wan2.2@42bf4cf for the in-scope flags of `shared/wan22-spec.md`
§8.1 (same names, same defaults, `str2bool` for --offload_model, the default file name of §7.4).
Beyond upstream (issue 5): everything upstream silently mishandles is refused with what to fix
(§8.3: frames not 4n+1, steps < 1, shift ≤ 0, an image for t2v-A14B, a missing image for
i2v-A14B — upstream substitutes an example image we do not ship); --negative_prompt and --fps; a
failed save is an error. Prompt extension (§10, `wan_core.prompt_extend`): `dashscope` (DASH_API_KEY,
DASH_API_URL) or `local_qwen`; the extended prompt is logged, and a failed extension is logged as a
warning with its reason before generating from the original prompt (upstream: an INFO line).
--prompt_cache DIR (or WANOPS_PROMPT_CACHE) keeps encoded prompts (`wan_core.prompt_cache`): when
both prompts were encoded before, umT5's 11 GB are neither read ahead nor loaded.

Multi-GPU (issue 7, `wan_core.parallel`), under torchrun on one node or several:

    torchrun --nproc_per_node 8 -m wan_core.generate --task t2v-A14B --ckpt_dir … --dit_fsdp --t5_fsdp
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m wan_core.generate … --cfg_parallel

--ulysses_size × (2 with --cfg_parallel) must equal the world size and --ulysses_size must divide
the heads (wanspec's rules, as the operator applies them); left out, they are derived as wanspec
derives them (Ulysses over every rank, CFG-parallel only where the heads need it). Rank 0's seed is
used everywhere, only rank 0 logs progress, decodes and saves; a lost or stuck rank ends every rank
with a non-zero status within WANOPS_COLLECTIVE_TIMEOUT_S (default 600) seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from wan_core.parallel.rules import flag_problems
from wan_core.prompt_cache import ENV_VAR as PROMPT_CACHE_ENV
from wan_core.prompt_cache import PromptCache
from wanspec.tasks import (
    DEFAULT_NEGATIVE_PROMPT,
    EXAMPLE_PROMPT_I2V,
    EXAMPLE_PROMPT_T2V,
    PRECISIONS,
    TASKS,
    Size,
    TaskSpec,
    check_frame_num,
)

if TYPE_CHECKING:
    from wan_core.parallel import ParallelLayout

log = logging.getLogger("wan_core.generate")

# generate.py --task choices; the last two exist upstream but are out of scope (spec §1.1).
TASK_CHOICES = (*TASKS, "animate-14B", "s2v-14B")
OUT_OF_SCOPE_TASKS = ("animate-14B", "s2v-14B")
DEFAULT_SIZE = "1280*720"  # upstream's default, invalid for ti2v-5B (spec §13.1)


def str2bool(value: str) -> bool:
    """Upstream's `str2bool`: yes/true/t/y/1 and no/false/f/n/0, any case."""
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true/false), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The in-scope flags of generate.py (spec §8.1), plus --negative_prompt and --fps."""
    p = argparse.ArgumentParser(prog="generate", description="Generate a video from a text prompt or an image with Wan2.2.")
    p.add_argument("--task", default="t2v-A14B", choices=TASK_CHOICES, help="the task to run")
    p.add_argument("--size", default=DEFAULT_SIZE, help="W*H: the output size (text) or pixel budget (image); must be supported by the task")
    p.add_argument("--frame_num", type=int, default=None, help="frames, 4n+1 (default: 81; 121 for ti2v-5B)")
    p.add_argument("--ckpt_dir", default=None, help="the task's checkpoint folder")
    p.add_argument("--offload_model", type=str2bool, default=None, help="move models to the CPU after use (default: True in one process)")
    p.add_argument("--ulysses_size", type=int, default=None, help="Ulysses sequence-parallel degree (default: world size, halved with --cfg_parallel)")
    p.add_argument("--cfg_parallel", action="store_true", help="run the two guidance branches on two halves of the ranks (torchrun)")
    p.add_argument("--t5_fsdp", action="store_true", help="shard umT5 with FSDP (torchrun)")
    p.add_argument("--t5_cpu", action="store_true", help="keep umT5 on the CPU and encode there")
    p.add_argument("--dit_fsdp", action="store_true", help="shard the DiT(s) with FSDP (torchrun)")
    p.add_argument("--save_file", default=None, help="output MP4 (default: a name from task, size, prompt and time)")
    p.add_argument("--prompt", default=None, help="the prompt (default: the task's example prompt)")
    p.add_argument("--use_prompt_extend", action="store_true", help="rewrite the prompt with an LLM first (falls back to the prompt as given if that fails)")
    p.add_argument("--prompt_extend_method", default="local_qwen", choices=["dashscope", "local_qwen"],
                   help="dashscope: the DashScope API (env DASH_API_KEY, DASH_API_URL); local_qwen: a Qwen2.5(-VL) model run here")
    p.add_argument("--prompt_extend_model", default=None,
                   help="model name or folder (default: qwen-plus / qwen-vl-max for dashscope, Qwen2.5_14B / QwenVL2.5_7B for local_qwen)")
    p.add_argument("--prompt_extend_target_lang", default="zh", choices=["zh", "en"], help="language of the extended prompt")
    p.add_argument("--base_seed", type=int, default=-1, help="seed; negative picks one at random")
    p.add_argument("--image", default=None, help="conditioning image (required for i2v-A14B; selects image mode for ti2v-5B)")
    p.add_argument("--sample_solver", default="unipc", choices=["unipc", "dpm++"])
    p.add_argument("--sample_steps", type=int, default=None, help="sampling steps (default: 40; 50 for ti2v-5B)")
    p.add_argument("--sample_shift", type=float, default=None, help="schedule shift (default: 12 t2v, 5 i2v/ti2v)")
    p.add_argument("--sample_guide_scale", type=float, default=None, help="CFG scale for both experts (default: the task's)")
    p.add_argument("--convert_model_dtype", action="store_true", help="store the DiT weights in bf16")
    p.add_argument("--precision", default="exact", choices=PRECISIONS,
                   help="exact (default): the official numbers; fp8: opt-in, lossy FP8 GEMMs in the DiT blocks "
                        "(GPUs with FP8 tensor cores); fp8-full: also FP8 self-attention (Hopper GPUs); both need "
                        "pip install 'wanops[fp8]'; their cost is in BENCHMARKS.md")
    p.add_argument("--negative_prompt", default="", help="negative prompt (default: the task's, spec §1.3)")
    p.add_argument("--fps", type=int, default=None, help="output frame rate (default: 16; 24 for ti2v-5B)")
    p.add_argument("--prompt_cache", default=os.environ.get(PROMPT_CACHE_ENV) or None,
                   help=f"keep encoded prompts in this folder and skip umT5 when both prompts are there (default: ${PROMPT_CACHE_ENV})")
    return p


def check_args(args: argparse.Namespace) -> list[str]:
    """Every problem with the flags, each saying what to fix; nothing is loaded yet."""
    problems: list[str] = []
    if args.task in OUT_OF_SCOPE_TASKS:
        return [f"--task {args.task} is out of scope for wanops; tasks: {', '.join(TASKS)}"]
    task: TaskSpec = TASKS[args.task]
    if args.ckpt_dir is None:
        problems.append(f"--ckpt_dir is required: the {task.name} checkpoint folder")
    try:
        size = Size.parse(args.size)
        if size not in task.sizes:
            problems.append(f"--size {args.size} is not supported by {task.name}; use one of {', '.join(str(s) for s in task.sizes)}")
    except ValueError as err:
        problems.append(f"--size: {err}")
    if args.frame_num is not None:
        try:
            check_frame_num(args.frame_num)
        except ValueError as err:
            problems.append(f"--frame_num: {err}")
    if args.sample_steps is not None and args.sample_steps < 1:
        problems.append(f"--sample_steps must be >= 1, got {args.sample_steps}")
    if args.sample_shift is not None and not args.sample_shift > 0:
        problems.append(f"--sample_shift must be > 0, got {args.sample_shift}")
    if args.fps is not None and args.fps < 1:
        problems.append(f"--fps must be >= 1, got {args.fps}")
    if task.needs_image and args.image is None:
        problems.append(f"{task.name} needs --image (the first frame of the video)")
    if not task.accepts_image and args.image is not None:
        problems.append(f"{task.name} does not take --image; use i2v-A14B or ti2v-5B for image-to-video")
    if args.image is not None and not Path(args.image).is_file():
        problems.append(f"--image {args.image}: no such file")
    if args.ulysses_size is not None and args.ulysses_size < 1:
        problems.append(f"--ulysses_size must be >= 1, got {args.ulysses_size}")
    else:
        problems += flag_problems(task, int(os.environ.get("WORLD_SIZE", "1")), ulysses=args.ulysses_size,
                                  cfg_parallel=True if args.cfg_parallel else None, dit_fsdp=args.dit_fsdp,
                                  t5_fsdp=args.t5_fsdp, t5_cpu=args.t5_cpu)
    if args.precision != "exact" and args.dit_fsdp:
        problems.append(f"--precision {args.precision} cannot be combined with --dit_fsdp (FP8 weights are not "
                        "sharded): drop --dit_fsdp or use --precision exact")
    if args.offload_model and (args.dit_fsdp or args.t5_fsdp):
        problems.append("--offload_model true cannot be combined with --dit_fsdp/--t5_fsdp: sharded weights stay on their GPUs")
    if args.use_prompt_extend and args.prompt_extend_method == "dashscope" and not os.environ.get("DASH_API_KEY"):
        problems.append("--prompt_extend_method dashscope: DASH_API_KEY is not set; export your DashScope API key "
                        "(and DASH_API_URL for another endpoint), or use --prompt_extend_method local_qwen")
    return problems


# wanspec field (as wanspec.memory's suggestions name them) → how to say it on the command line.
_MEMORY_FLAGS = {
    "gpus": lambda v: f"{v} ranks (torchrun --nproc_per_node × --nnodes)",
    "parallelism.ulysses": lambda v: f"--ulysses_size {v}",
    "parallelism.cfgParallel": lambda v: "--cfg_parallel" if v else "no --cfg_parallel",
    "parallelism.ditFsdp": lambda v: "--dit_fsdp" if v else "no --dit_fsdp",
    "parallelism.t5Fsdp": lambda v: "--t5_fsdp" if v else "no --t5_fsdp",
    "memory.offloadModel": lambda v: f"--offload_model {v}",
    "memory.convertModelDtype": lambda v: "--convert_model_dtype" if v else "no --convert_model_dtype",
    "memory.t5Cpu": lambda v: "--t5_cpu" if v else "no --t5_cpu",
}


def memory_plan(args: argparse.Namespace, world: int, gpu_memory_gib: float):  # -> MemoryPlan
    """wanspec's memory planner for these flags on `world` GPUs of `gpu_memory_gib` (torch-free)."""
    from wanspec.memory import plan
    from wanspec.validate import resolve

    task = TASKS[args.task]
    spec = {
        "task": task.name, "size": args.size, "prompt": "-", "gpus": world,
        "checkpoint": {"claimName": "cli", "path": "cli"},
        "parallelism": {"ulysses": args.ulysses_size, "cfgParallel": True if args.cfg_parallel else None,
                        "ditFsdp": args.dit_fsdp, "t5Fsdp": args.t5_fsdp},
        "memory": {"offloadModel": args.offload_model, "convertModelDtype": args.convert_model_dtype,
                   "t5Cpu": args.t5_cpu},
        "precision": args.precision,
    }
    if args.frame_num is not None:
        spec["frames"] = args.frame_num
    if args.image is not None:
        spec["inputImage"] = "s3://cli/image"  # only its presence matters to the estimate
    return plan(resolve(spec), gpu_memory_gib)


def memory_warning(args: argparse.Namespace, world: int, gpu_memory_gib: float) -> str | None:
    """A warning when the estimated peak per GPU exceeds the device, naming flags that would fit."""
    verdict = memory_plan(args, world, gpu_memory_gib)
    if verdict.fits:
        return None
    text = (f"estimated peak GPU memory {verdict.estimate.describe()} exceeds this "
            f"{gpu_memory_gib:.0f} GiB GPU (with a safety margin); it will likely run out of memory")
    if verdict.suggestions:
        ways = ["; ".join(_MEMORY_FLAGS[f](_flag_value(v)) for f, _, v in s.effect)
                + f" (≈{s.estimate.peak_gib:.1f} GiB)" for s in verdict.suggestions]
        text += ". Would fit: " + " | or: ".join(ways)
    elif verdict.smallest is not None:
        text += f". No layout fits GPUs of this size (smallest estimate ≈{verdict.smallest.peak_gib:.1f} GiB)"
    return text


def _flag_value(value: object) -> object:
    return str(value).capitalize() if isinstance(value, bool) else value


def default_save_file(task: str, size: str, ulysses_size: int, prompt: str, now: datetime | None = None) -> str:
    """Upstream's name: `{task}_{size}_{ulysses}_{prompt[:50]}_{YYYYmmdd_HHMMSS}.mp4` (spec §7.4)."""
    size = size.replace("*", "x") if sys.platform == "win32" else size
    prompt50 = prompt.replace(" ", "_").replace("/", "_")[:50]
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return f"{task}_{size}_{ulysses_size}_{prompt50}_{stamp}.mp4"


class _Progress:
    """A tqdm bar fed by the pipeline's (step, total, expert) callback."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, step: int, total: int, expert: str | None) -> None:
        if self.bar is None:
            import torch
            from tqdm import tqdm

            if torch.cuda.is_initialized():  # the step is queued, not done: its end is the GPU's (one wait)
                torch.cuda.synchronize()
            log.info("first step done")  # the end of a cold start: load, encode, compile, one step

            self.bar = tqdm(total=total, desc="sampling", unit="step")
        self.bar.set_postfix_str(expert or "", refresh=False)
        self.bar.update(1)
        if step == total:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    """Parse, check, load, generate, save; returns the exit status (2: bad flags, 1: bad input files)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = check_args(args)
    if problems:
        parser.error("\n  ".join(problems))
    task = TASKS[args.task]
    if os.environ.get("LOCAL_RANK", "0") == "0":  # one reader per node; the page cache is shared
        from wan_core.checkpoint import readahead

        readahead.start(readahead.first_step_files(args.ckpt_dir, task, t5=not _prompts_cached(args, task)))
    # Heavy imports only after the flags are known to be good.
    from wan_core.parallel import ParallelLayout, collective_timeout, init_distributed, shutdown

    layout = init_distributed(ParallelLayout.from_env(
        task, ulysses=args.ulysses_size, cfg_parallel=True if args.cfg_parallel else None,
        dit_fsdp=args.dit_fsdp, t5_fsdp=args.t5_fsdp, t5_cpu=args.t5_cpu,
    ))
    from wan_core.cuda_start import start_cuda

    start_cuda(layout.device)  # overlaps the pipeline's imports
    # Upstream logs INFO on rank 0 only, errors on the others (spec §9).
    logging.basicConfig(level=logging.INFO if layout.is_main else logging.ERROR,
                        format="[%(asctime)s] %(levelname)s: %(message)s", stream=sys.stderr)
    if not layout.distributed:
        return _generate(args, task, layout, None)
    status = _generate(args, task, layout, collective_timeout())
    if status == 0:  # a failed rank skips the final barrier; its peers' collectives time out
        shutdown(layout)
    return status


def _prompt(args: argparse.Namespace, task: TaskSpec) -> str:
    return args.prompt if args.prompt is not None else (EXAMPLE_PROMPT_I2V if task.needs_image else EXAMPLE_PROMPT_T2V)


def _prompt_cache(args: argparse.Namespace) -> PromptCache | None:
    """--prompt_cache's folder."""
    return PromptCache(args.prompt_cache) if args.prompt_cache else None


def _prompts_cached(args: argparse.Namespace, task: TaskSpec) -> bool:
    """Whether both prompts are in the cache already (before torch is imported: the readahead
    then leaves umT5's file alone); never with a prompt extension, whose output is not known yet.
    Under torchrun every node's first rank asks the same folder; should a rank miss after all,
    umT5 is read without the head start."""
    if args.use_prompt_extend:
        return False
    cache = _prompt_cache(args)
    return cache is not None and cache.has_all(args.ckpt_dir, [_prompt(args, task), args.negative_prompt or DEFAULT_NEGATIVE_PROMPT])


def _generate(args: argparse.Namespace, task: TaskSpec, layout: ParallelLayout, step_timeout: float | None) -> int:
    """Load, generate and (rank 0) save.

    step_timeout (torchrun): from the end of loading to the save, a rank that makes no progress
    for this long (one sampling step, or the decode and save) ends itself, so a rank stuck outside
    a collective exits like its peers, whose collectives time out after the same bound. Loading is
    bounded by the peers' first collective after it.
    """
    from contextlib import nullcontext

    from PIL import Image, UnidentifiedImageError

    from wan_core.checkpoint.errors import CheckpointError
    from wan_core.ops.quant import check_quantization
    from wan_core.parallel import StepWatchdog, broadcast_seed
    from wan_core.pipelines import load_pipeline, resolve_seed
    from wan_core.video import save_video

    prompt = _prompt(args, task)
    seed = broadcast_seed(resolve_seed(args.base_seed), layout)  # every rank draws rank 0's noise
    image = None
    if args.image is not None:
        try:
            image = Image.open(args.image).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            print(f"generate: error: --image {args.image} is not a readable image ({err})", file=sys.stderr)
            return 1
    log.info("task %s, size %s, seed %d, prompt: %s", task.name, args.size, seed, prompt)
    input_prompt = prompt
    if args.use_prompt_extend:  # rank 0 extends, every rank gets its result (spec §9, §10)
        from wan_core.prompt_extend import PromptExtensionError, extend_prompt

        log.info("extending the prompt with %s", args.prompt_extend_method)
        try:
            extension = extend_prompt(prompt, method=args.prompt_extend_method, model=args.prompt_extend_model,
                                      task=task.name, tar_lang=args.prompt_extend_target_lang, image=image,
                                      seed=seed, device=layout.device, layout=layout)
        except PromptExtensionError as err:
            print(f"generate: error: --use_prompt_extend: {err}", file=sys.stderr)
            return 1
        extension.report(log)  # the extended prompt, or a warning with why it fell back
        input_prompt = extension.prompt

    if layout.device.type == "cuda":  # before minutes of loading, say if it cannot fit
        import torch

        total = torch.cuda.get_device_properties(layout.device).total_memory / 2**30
        if (warning := memory_warning(args, layout.world_size, total)) is not None:
            log.warning("%s", warning)
    try:
        check_quantization(args.precision, layout.device, args.dit_fsdp)
    except ValueError as err:
        print(f"generate: error: --precision: {err}", file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(task.name, args.ckpt_dir, offload_model=args.offload_model,
                             convert_model_dtype=args.convert_model_dtype, t5_cpu=args.t5_cpu, parallel=layout,
                             precision=args.precision, prompt_cache=_prompt_cache(args))
    except CheckpointError as err:
        print(f"generate: error: {err}", file=sys.stderr)
        return 1
    log.info("loaded on %s (%s%s)", pipe.device, str(pipe.dtype).removeprefix("torch."),
             "" if pipe.precision == "exact" else f", DiT blocks in {pipe.precision}")
    progress = _Progress() if layout.is_main else None
    watchdog = StepWatchdog(step_timeout, layout.rank) if step_timeout is not None else None

    options = dict(frame_num=args.frame_num, shift=args.sample_shift, sample_solver=args.sample_solver,
                   sampling_steps=args.sample_steps, guide_scale=args.sample_guide_scale,
                   n_prompt=args.negative_prompt, seed=seed, offload_model=args.offload_model,
                   callback=watchdog.chain(progress) if watchdog is not None else progress)
    with watchdog or nullcontext():
        if task.name == "i2v-A14B":
            latent = pipe.generate(input_prompt, img=image, max_area=Size.parse(args.size).area, decode=False,
                                   **options)
        elif task.name == "ti2v-5B":
            latent = pipe.generate(input_prompt, img=image, size=args.size, decode=False, **options)
        else:
            latent = pipe.generate(input_prompt, size=args.size, decode=False, **options)
        start = time.perf_counter()
        if (pieces := pipe.decode_stream(latent)) is None:  # only rank 0 decodes (spec §9)
            return 0
        save_file = args.save_file or default_save_file(task.name, args.size, layout.ulysses, prompt)
        saved = save_video(pieces, save_file, args.fps or task.fps)  # each piece encoded while the next decodes
    log.info("saved %s (%d frames, %dx%d, %d fps; decoded and encoded in %.1f s)", saved.path, saved.frames,
             saved.width, saved.height, args.fps or task.fps, time.perf_counter() - start)
    return 0

"""Multi-GPU sampling on one host: each layout against one GPU at the same seed, and its step time.

    torchrun --nproc_per_node 2 bench/multi_gpu.py --model a14b --size 832*480 --steps 4 --layouts u,c,uf
    torchrun --nproc_per_node 2 bench/multi_gpu.py --tiny --layouts u,c      # CPU (gloo) check of the script

A full-size random-weight DiT (one A14B expert: both experts have the same shapes and parallel
plan, so per-step figures carry over; or TI2V-5B) is drawn on every GPU from the same seed in
bf16, and driven through the pipelines' own pieces: UniPC, classifier-free guidance with
`sequential_branches` or `cfg_parallel_branches`, per-block torch.compile, the Ulysses hooks and
FSDP2 of `wan_core.parallel`. Rank 0 first samples alone (the one-GPU reference); then each
layout runs on every rank. Layouts: `u` Ulysses over all ranks, `c` CFG-parallel × Ulysses,
`f` suffix: FSDP2 on the DiT. Per layout: median seconds per sampling step (two CFG branches)
after one warm-up step, peak GiB per GPU (max over ranks), cosine of the final latent against
the reference (≥ 0.9999 required; exit status 1 otherwise). One JSON line per run with --out.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_forward import MODELS, latent_shape, random_dit  # noqa: E402  (bench/dit_forward.py)

from wan_core.models.dit import DiTConfig, WanModel  # noqa: E402
from wan_core.ops.compile import compile_blocks  # noqa: E402
from wan_core.parallel import ParallelLayout, cfg_parallel_branches, init_distributed, parallelize_dit, shutdown  # noqa: E402
from wan_core.sampling import cfg_combine, make_solver  # noqa: E402

MIN_COSINE = 0.9999


def sequential_branches(model, x: Tensor, t: Tensor, context: Tensor, context_null: Tensor, y: Tensor | None):
    """The pipelines' one-group CFG (`wan_core.pipelines.common.sequential_branches`), restated
    so the bench does not pull in the pipelines' media and tokenizer dependencies."""
    return model(x, t, context, y), model(x, t, context_null, y)
TASK_OF = {"a14b": "t2v-A14B", "5b": "ti2v-5B"}


def sample(model: WanModel, branches, x: Tensor, context: Tensor, context_null: Tensor, steps: int,
           device: torch.device) -> tuple[Tensor, list[float]]:
    """UniPC with CFG as the pipelines run it; returns the final latent and per-step seconds."""
    solver = make_solver("unipc")
    solver.set_timesteps(steps, 5.0, device=device)
    seconds = []
    for t in solver.timesteps:
        begin = time.perf_counter()
        v_cond, v_uncond = branches(model, x[None], t[None], context, context_null, None)
        x = solver.step(cfg_combine(v_cond[0], v_uncond[0], 5.0), x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - begin)
    return x, seconds


def release() -> None:
    """Free a finished run's model: compiled code keeps its parameters alive until Dynamo's
    caches are reset (a 28 GB A14B expert would otherwise stay beside the next layout's)."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build(cfg: DiTConfig, device: torch.device, compile: bool) -> WanModel:
    model = random_dit(cfg, device, torch.bfloat16 if device.type == "cuda" else torch.float32, seed=0)
    return compile_blocks(model) if compile else model


@torch.inference_mode()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="a14b")
    parser.add_argument("--size", help="W*H (default: the model's 720p-class size)")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per run (first one is the warm-up)")
    parser.add_argument("--layouts", default="u,c", help="comma-separated: u, c, uf, cf")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    flavor, tiny_flavor, z_dim, stride, size, frames = MODELS[args.model]
    cfg = DiTConfig.flavor(tiny_flavor if args.tiny else flavor)
    size, frames = args.size or ("64*64" if args.tiny else size), args.frames or (5 if args.tiny else frames)
    shape = latent_shape(z_dim, stride, size, frames)
    task = TASK_OF[args.model]
    compile = torch.cuda.is_available() and not args.no_compile and not args.tiny

    first = init_distributed(ParallelLayout.from_env(task))
    device, rank, world = first.device, first.rank, first.world_size
    gen = torch.Generator(device).manual_seed(1)
    x0 = torch.randn(*shape, device=device, generator=gen)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen)
    context_null = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": world, "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if device.type == "cuda" else None,
        "model": flavor + (" (tiny)" if args.tiny else ""), "size": size, "frames": frames, "steps": args.steps,
        "compiled": compile, "runs": {},
    }

    # 1. one GPU: rank 0 alone, the others wait
    if rank == 0:
        model = build(cfg, device, compile)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reference, sec = sample(model, sequential_branches, x0, context, context_null, args.steps, device)
        info["runs"]["1gpu"] = {"step_s": statistics.median(sec[1:]), "first_step_s": sec[0],
                                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        del model
    else:
        reference = torch.empty_like(x0)
    release()
    dist.broadcast(reference, 0)

    # 2. each layout on every rank
    ok = True
    for name in args.layouts.split(","):
        layout = init_distributed(ParallelLayout.from_env(task, cfg_parallel=name.startswith("c"), dit_fsdp="f" in name))
        model = parallelize_dit(build(cfg, device, False), layout, torch.bfloat16 if device.type == "cuda" else None,
                                compile=compile)
        branches = cfg_parallel_branches(layout) if layout.cfg == 2 else sequential_branches
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        latent, sec = sample(model, branches, x0, context, context_null, args.steps, device)
        peak = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0], device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        cosine = float(torch.nn.functional.cosine_similarity(latent.double().flatten(), reference.double().flatten(), dim=0))
        run = {"layout": f"cfg {layout.cfg} × ulysses {layout.ulysses}" + (" + FSDP" if layout.dit_fsdp else ""),
               "step_s": statistics.median(sec[1:]), "first_step_s": sec[0], "peak_gib_max_rank": float(peak),
               "cosine_vs_1gpu": cosine}
        info["runs"][name] = run
        ok &= cosine >= MIN_COSINE
        del model
        release()
        dist.barrier()

    if rank == 0:
        for key, run in info["runs"].items():
            print(f"{key:>5}: {json.dumps(run)}")
        print(f"{'ok':>5}: {ok}")
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(info | {"ok": ok}) + "\n")
    shutdown(first)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

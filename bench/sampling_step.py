"""One full sampling step (both CFG branches + the solver), ours vs diffusers' model in the same loop.

The end-to-end runs step 1.5–5% slower per forward than `dit_forward.py`'s short timed bursts
(BENCHMARKS.md, "T2V-A14B, whole runs"). This separates the two candidate causes on one model in
one process: the loop (expert choice, CFG combine, UniPC step, their syncs) and the GPU's
sustained clocks. It reports, for ours and for diffusers' `WanTransformer3DModel` on the same
weights and inputs:

- burst: single forwards with an idle GPU between them (what `dit_forward.py` times);
- sustained: 2·steps forwards back to back, no host sync between them;
- step: `steps` iterations of the pipelines' loop body (`expert_for_step`, `sequential_branches`,
  `cfg_combine`, the UniPC solver's `step`) on the task's real schedule.

    python bench/sampling_step.py --model a14b --size 832*480 --steps 6 --out bench.jsonl
    python bench/sampling_step.py --model 5b --tiny            # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_forward import MODELS, attention_kernels, diffusers_peer, pick_sdpa, random_dit, workload  # noqa: E402

from wan_core.ops.compile import compile_blocks  # noqa: E402
from wan_core.pipelines.common import expert_for_step, sequential_branches  # noqa: E402
from wan_core.sampling import cfg_combine, guide_scales, make_solver  # noqa: E402
from wanspec.tasks import get_task  # noqa: E402

Forward = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, t, context) → velocity


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def burst(forward: Forward, args: tuple[Tensor, ...], runs: int, device: torch.device) -> list[float]:
    """Seconds of single forwards, each after a sync and a 1 s pause (the GPU idles between)."""
    seconds = []
    for _ in range(runs):
        _sync(device)
        time.sleep(1.0)
        begin = time.perf_counter()
        forward(*args)
        _sync(device)
        seconds.append(time.perf_counter() - begin)
    return seconds


def sustained(forward: Forward, args: tuple[Tensor, ...], runs: int, device: torch.device) -> float:
    """Seconds per forward over `runs` forwards queued back to back (one sync at the end)."""
    _sync(device)
    begin = time.perf_counter()
    for _ in range(runs):
        forward(*args)
    _sync(device)
    return (time.perf_counter() - begin) / runs


def loop(forward: Forward, x: Tensor, contexts: tuple[Tensor, Tensor], task_name: str, steps: int,
         device: torch.device, per_token: Callable[[Tensor], Tensor] | None) -> list[float]:
    """Seconds per step of the pipelines' loop body on the task's schedule (its first `steps`)."""
    task = get_task(task_name)
    scales = guide_scales(task.guide_scale)
    solver = make_solver("unipc")
    solver.set_timesteps(task.sample_steps, task.sample_shift, device=device)
    model = lambda x_, t_, c_, y_: forward(x_.to(torch.bfloat16), t_, c_)  # noqa: E731  (one expert: timing, not switching)
    seconds = []
    for t in solver.timesteps[:steps]:
        _sync(device)
        begin = time.perf_counter()
        _, scale = expert_for_step(task, t, scales)
        timestep = per_token(t) if per_token is not None else t[None]
        v_cond, v_uncond = sequential_branches(model, x[None], timestep, contexts[0], contexts[1], None)
        x = solver.step(cfg_combine(v_cond[0], v_uncond[0], scale), x)
        _sync(device)
        seconds.append(time.perf_counter() - begin)
    return seconds


def measure(name: str, forward: Forward, x: Tensor, t: Tensor, contexts: tuple[Tensor, Tensor], flavor: str,
            steps: int, device: torch.device, per_token: Callable[[Tensor], Tensor] | None) -> dict:
    args = (x[None].to(torch.bfloat16), t, contexts[0])
    forward(*args)  # warm-up (compiles ours)
    b = burst(forward, args, 3, device)
    s = sustained(forward, args, 2 * steps, device)
    step = loop(forward, x, contexts, flavor, steps, device, per_token)
    result = {"burst_s": statistics.median(b), "sustained_s": s, "step_s": statistics.median(step[1:] or step),
              "steps_s": step}
    print(f"{name:>10}: burst {result['burst_s']:.4f} s, sustained {s:.4f} s per forward; "
          f"step {result['step_s']:.4f} s (= {result['step_s'] / 2:.4f} s per forward)")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--size", help="W*H in pixels (default: the model's 720p-class size)")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int, default=6, help="loop steps timed (the first is not counted)")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")

    flavor, cfg, size, frames, device, shape, tokens = workload(args.model, args.size, args.frames, args.tiny)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(*shape, device=device, generator=gen)
    contexts = tuple(torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen).to(torch.bfloat16)
                     for _ in range(2))
    per_token = None
    if cfg.model_type == "ti2v":  # TI2V image mode's per-token timesteps: the first latent frame clean
        first = tokens // shape[1]
        per_token = lambda t_: torch.cat([t_.new_zeros(first), t_.expand(tokens - first)])[None]  # noqa: E731
    t = torch.tensor([999.0], device=device) if per_token is None else per_token(torch.tensor(999.0, device=device))
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": flavor + (" (tiny config)" if args.tiny else ""),
        "size": size, "frames": frames, "tokens": tokens, "steps": args.steps,
    }
    sdpa = pick_sdpa(cfg, tokens, device, torch.bfloat16)

    ours = random_dit(cfg, device, torch.bfloat16, seed=0)
    if device.type == "cuda":
        compile_blocks(ours)
    with torch.inference_mode(), attention_kernels(sdpa, None):
        info["ours"] = measure("ours", ours, x, t, contexts, flavor, args.steps, device, per_token)
    state = ours.state_dict()
    del ours
    ref = diffusers_peer(cfg, state, device)
    del state
    with torch.inference_mode(), attention_kernels(sdpa):
        info["diffusers"] = measure("diffusers", lambda *a: ref(*a, return_dict=False)[0], x, t, contexts, flavor,
                                    args.steps, device, per_token)
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU benchmark: a sampling step's two CFG branches as one batch-2 DiT forward or two batch-1 ones.

Upstream runs the conditional and unconditional branches one after the other (as our pipelines'
`sequential_branches` do); batching them halves the forwards per step, so fewer launches and
twice the rows per GEMM. This times both ways on one full-size random-weight DiT in one process,
compiled per block as the pipelines run it, with the step's inputs (TI2V: per-token timesteps,
first latent frame clean; two different text contexts), median of `--runs` after a warm-up
(CUDA events), the peak memory of each, and the cosine of the two ways' outputs.

    python bench/cfg_batch.py --model 5b --out bench.jsonl     # TI2V-5B 1280*704*121
    python bench/cfg_batch.py --model 5b --tiny                # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_forward import MODELS, random_dit, workload  # noqa: E402  (bench/dit_forward.py)
from timing import timed  # noqa: E402  (bench/timing.py)

from wan_core.ops.compile import compile_blocks  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="5b")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each way after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two ways")
    parser.add_argument("--tiny", action="store_true", help="tiny config and a few tokens on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    if args.runs < 1 or args.rounds < 1:
        parser.error("--runs and --rounds must be at least 1")

    flavor, cfg, size, frames, device, shape, tokens = workload(args.model, None, None, args.tiny)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, *shape, device=device, generator=gen).to(dtype)
    cond, uncond = (torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen).to(dtype) for _ in range(2))
    t = torch.tensor([999.0], device=device)
    if cfg.model_type == "ti2v":
        t = t[:, None].repeat(1, tokens)
        t[:, : tokens // shape[1]] = 0
    model = random_dit(cfg, device, dtype, seed=0)
    if device.type == "cuda":
        compile_blocks(model)
    x2, t2, c2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond])

    def sequential() -> torch.Tensor:
        return torch.cat([model(x, t, cond), model(x, t, uncond)])

    def batched() -> torch.Tensor:
        return model(x2, t2, c2)

    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": flavor + (" (tiny config)" if args.tiny else ""),
        "size": size, "frames": frames, "tokens": tokens,
    }
    with torch.inference_mode():
        for name, fn in (("sequential", sequential), ("batched", batched)):  # the first calls compile
            begin = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            info[f"{name}_first_call_s"] = time.perf_counter() - begin
        seconds: dict[str, list[float]] = {"sequential": [], "batched": []}
        peaks: dict[str, float | None] = {}
        for _ in range(args.rounds):
            out_seq, sec, peaks["sequential"] = timed(sequential, args.runs, device)
            seconds["sequential"] += sec
            out_bat, sec, peaks["batched"] = timed(batched, args.runs, device)
            seconds["batched"] += sec
    for name, sec in seconds.items():
        info[name] = {"median_s": statistics.median(sec), "runs_s": sec, "peak_gib": peaks[name]}
        peak = f", peak {peaks[name]:.2f} GiB" if peaks[name] is not None else ""
        print(f"{name:>10}: median {statistics.median(sec):.4f} s per step's two branches{peak}")
    info["cosine"] = float(torch.nn.functional.cosine_similarity(out_seq.double().flatten(), out_bat.double().flatten(), dim=0))
    info["bitwise_equal"] = torch.equal(out_seq, out_bat)
    print(f"    cosine: {info['cosine']:.7f} (bitwise equal: {info['bitwise_equal']})")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end, process start → MP4, per precision mode, and each lossy video against the exact one.

Runs `python -m wan_core` (the generate command users run) once per `--precision` on a checkpoint
folder in the official layout (write a full-size random one with
`python -m wan_core.testing.tiny_checkpoint --task ti2v-5B --full-size --out DIR`), with the same
seed and prompt, each in a fresh process with a fresh Inductor cache (so every run pays its own
compile, as a pod without `runner.compileCache` does; `--inductor-cache DIR` reuses one). Reports
each run's wall time and the moments its log names (readahead done, loaded, prompts encoded, the
first DiT on the GPU; first step done, the end of a cold start; saved), and the PSNR of each
lossy run's decoded MP4 frames against the exact run's (same seed, so the difference is the
precision mode's cost), and whether the compiled DiT block was loaded or traced; with `--out`,
each run's whole log beside.

The mode `diffusers` runs the peer instead: diffusers' `WanPipeline` from a folder that
`bench/diffusers_e2e.py convert` wrote from the same checkpoint (`--peer-dir`), in a fresh process
timed the same way, with the same task, size, steps, seed and prompt. Modes may repeat, so the two
can be alternated on one machine:

    python bench/end_to_end.py --ckpt_dir /tmp/ck5 --task ti2v-5B --size 1280*704 \\
        --precision fp8-full exact --out bench.jsonl
    python bench/end_to_end.py --ckpt_dir /tmp/ck5 --peer-dir /dev/shm/ck5-diffusers \\
        --inductor-cache /tmp/ind --precision exact diffusers exact diffusers --out bench.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np

# The log lines that end the phases of a run: the readahead, loading, the prompts, the first
# DiT's copy to the GPU ("DiT on cuda:0 in …", "high_noise_model on cuda:0 in …"), the cold start.
STAMP = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] INFO: "
    r"(readahead|loaded|prompts encoded|\w+ on cuda|first step|sampled|saved)"
)


PEER = "diffusers"  # the mode that runs diffusers' pipeline (bench/diffusers_e2e.py)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run(args: argparse.Namespace, precision: str, out_dir: Path, index: int) -> dict:
    video = out_dir / f"{index}-{precision}.mp4"
    if precision == PEER:
        cmd = [sys.executable, str(Path(__file__).with_name("diffusers_e2e.py")), "run", "--model_dir", str(args.peer_dir),
               "--task", args.task, "--size", args.size, "--base_seed", "1", "--out", str(video)]
    else:
        cmd = [sys.executable, "-m", "wan_core", "--task", args.task, "--size", args.size, "--ckpt_dir", str(args.ckpt_dir),
               "--offload_model", args.offload_model, "--convert_model_dtype", "--base_seed", "1", "--precision", precision,
               "--save_file", str(video)]
    if args.sample_steps:
        cmd += ["--sample_steps", str(args.sample_steps)]
    if args.frame_num:
        cmd += ["--frame_num", str(args.frame_num)]
    cache = str(args.inductor_cache) if args.inductor_cache else tempfile.mkdtemp(prefix=f"inductor-{precision}-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    start = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - start
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{precision}: exit {done.returncode}\n{log[-3000:]}")
    moments = {}
    for line in log.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            moments.setdefault(m.group(2), round(stamp - start, 1))  # the first: later experts come in later
    bar = [] if precision == PEER else re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)<", log)  # the peer's is off
    sampling = int(bar[-1][2]) * 60 + int(bar[-1][3]) if bar else None
    kernels = sorted(set(re.findall(r"attention kernel (\w+)", log)))  # what imported decides (wan_core.ops.attention)
    return {"precision": precision, "wall_s": round(wall, 1), "moments_s": moments, "sampling_bar_s": sampling,
            "attention": kernels,
            "bytecode": bytecode(), "compiled_block": None if precision == PEER else compiled_block(log), "video": str(video),
            "command": " ".join(cmd), "log": log}


def compiled_block(log: str) -> str:
    """How the run got its compiled DiT block (`wan_core.ops.compile`, saved across processes in
    exact mode): "loaded" (no tracing), "kept" (traced, compiled and saved for the next run), or
    "per process" (compiled in the process only: a lossy mode, or no saving on this torch)."""
    if "compiled DiT block loaded from" in log:
        return "loaded"
    return "kept" if "compiled DiT block kept in" in log else "per process"


def bytecode() -> str:
    """Whether the run could use compiled bytecode for torch's compiler stack, as a runner image
    does ("cached"), or compiled those sources itself ("compiled in the run": ≈ 9 s of a start on
    an H100 host, BENCHMARKS.md "Bytecode"); the run's environment is this process's."""
    spec = importlib.util.find_spec("torch")
    source = Path(next(iter(spec.submodule_search_locations))) / "_dynamo" / "symbolic_convert.py"
    cached = Path(importlib.util.cache_from_source(str(source))).exists()
    return "cached" if cached else "compiled in the run" if sys.flags.dont_write_bytecode else "written by the run"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", type=Path, required=True)
    parser.add_argument("--task", default="ti2v-5B")
    parser.add_argument("--size", default="1280*704")
    parser.add_argument("--precision", nargs="+", default=["exact"],
                        help=f"modes to run, in order (repeats allowed); {PEER!r} runs the peer from --peer-dir")
    parser.add_argument("--peer-dir", type=Path, help="diffusers' folder of the same weights (bench/diffusers_e2e.py convert)")
    parser.add_argument("--offload_model", choices=["True", "False"], default="False",
                        help="True: one A14B expert on the GPU at a time (both need ≈ 53 GiB in bf16)")
    parser.add_argument("--sample_steps", type=int, help="fewer steps than the task's (a cold-start measurement)")
    parser.add_argument("--frame_num", type=int, help="fewer frames than the task's (a trial on the CPU)")
    parser.add_argument("--inductor-cache", type=Path,
                        help="reuse this Inductor cache (a pod with runner.compileCache); default: a fresh one per run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if PEER in args.precision and args.peer_dir is None:
        parser.error(f"--precision {PEER} needs --peer-dir (write it with bench/diffusers_e2e.py convert)")
    out_dir = Path(tempfile.mkdtemp(prefix="e2e-"))
    runs = [run(args, p, out_dir, i) for i, p in enumerate(args.precision)]
    if "exact" in args.precision:
        exact = np.stack(list(iio.imiter(runs[args.precision.index("exact")]["video"], plugin="FFMPEG")))
        for r in runs:
            if r["precision"] not in ("exact", PEER):  # the peer draws its noise its own way
                frames = np.stack(list(iio.imiter(r["video"], plugin="FFMPEG")))
                r["psnr_vs_exact_db"] = round(psnr(frames, exact), 2)
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if k != "log"}))
    if args.out:
        for i, r in enumerate(runs):  # each run's whole log beside the results, for the phases between the moments
            name = r["precision"] if args.precision.count(r["precision"]) == 1 else f"{r['precision']}-{i}"
            args.out.with_name(f"{args.out.stem}.{name}.log").write_text(r.pop("log"))
        with args.out.open("a") as f:
            for r in runs:
                f.write(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                    "task": args.task, "size": args.size, "sample_steps": args.sample_steps,
                                    "frame_num": args.frame_num,
                                    "inductor_cache": "reused" if args.inductor_cache else "fresh", **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

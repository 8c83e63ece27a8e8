"""GPU benchmark: a DiT's weights from the host (its memory-mapped checkpoint) onto the GPU.

The copy that ends every cold start before the first step (the first expert, or the 5B's DiT) and
every expert switch that was not prefetched. Two ways, one process, the same model:
- `to`: `model.to(device)`, what upstream does: pageable copies, staged by the driver;
- `pinned`: `Residency.activate` as the pipelines run it: torch's CPU copy fills pinned staging
  buffers while the DMA engine drains the others (`wan_core/pipelines/residency.py`).
Each run releases the weights first (the parameters point at the host copy again), so every run
reads the same page cache. Host clock, median of `--runs` after one warm-up; the two ways' device
weights are compared byte for byte (exit status 1 if they differ).

With `--cast`, instead: where `--convert_model_dtype` casts the fp32 checkpoint to bf16, timed from
the load (page cache warm) to the weights on the GPU:
- `cast_on_host`: loaded with the cast on the CPU, then copied in through pinned staging (before);
- `cast_on_gpu`: loaded as stored (the file's mapping), cast on the GPU as each chunk lands (the
  pipelines' way since `Residency(cast=…)`).

    python bench/copy_in.py --ckpt_dir /root/ck --out bench.jsonl    # T2V-A14B: the high-noise expert
    python bench/copy_in.py --ckpt_dir /root/ck5 --convert_model_dtype   # TI2V-5B as the e2e runs load it
    python bench/copy_in.py --ckpt_dir /root/ck5 --cast                  # where its bf16 cast happens
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

from wan_core.checkpoint.dit import load_dit_experts  # noqa: E402
from wan_core.pipelines.residency import Residency  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", type=Path, required=True)
    parser.add_argument("--convert_model_dtype", action="store_true", help="bf16 in host memory first, as the flag does")
    parser.add_argument("--cast", action="store_true", help="time the bf16 cast on the host against on the GPU")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    device = torch.device("cuda", torch.cuda.current_device())
    if args.cast:
        return cast_where(args, device)

    experts = load_dit_experts(args.ckpt_dir, device="cpu", dtype=torch.bfloat16 if args.convert_model_dtype else None)
    name, model = next(iter(experts.items()))
    homes = {way: Residency({name: model}, device, pinned_staging=way == "pinned") for way in ("to", "pinned")}
    nbytes = homes["pinned"].nbytes(name)
    info = record(args, device, model=name, gb=nbytes / 1e9, dtype=str(next(model.parameters()).dtype))
    on_device = {}
    for way, home in homes.items():
        seconds = []
        for _ in range(args.runs + 1):
            home.release(name)
            torch.cuda.synchronize(device)
            begin = time.perf_counter()
            home.activate(name)
            torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - begin)
        on_device[way] = [p.detach() for p in model.parameters()]  # kept on the GPU past the release
        home.release(name)
        timed = seconds[1:]
        info[way] = {"median_s": statistics.median(timed), "runs_s": timed, "gb_per_s": nbytes / 1e9 / statistics.median(timed)}
        print(f"{way:>12}: median {statistics.median(timed):.2f} s ({', '.join(f'{s:.2f}' for s in timed)}), "
              f"{info[way]['gb_per_s']:.1f} GB/s for {nbytes / 1e9:.1f} GB", flush=True)
    same = all(torch.equal(a, b) for a, b in zip(on_device["to"], on_device["pinned"], strict=True))
    return finish(args, info, same, "weights")


def cast_where(args: argparse.Namespace, device: torch.device) -> int:
    """Load → bf16 weights on the GPU, the cast on the host or on the device; same bytes either way."""
    info = record(args, device, cast="float32 -> bfloat16")
    on_device = {}
    for way in ("cast_on_host", "cast_on_gpu"):
        seconds = []
        for _ in range(args.runs + 1):
            on_device.pop(way, None)
            torch.cuda.synchronize(device)
            begin = time.perf_counter()
            experts = load_dit_experts(args.ckpt_dir, device="cpu", dtype=torch.bfloat16 if way == "cast_on_host" else None)
            name, model = next(iter(experts.items()))
            Residency({name: model}, device, cast=torch.bfloat16 if way == "cast_on_gpu" else None).activate(name)
            torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - begin)
            on_device[way] = [p.detach() for p in model.parameters()]
            del experts, model
        timed = seconds[1:]
        gb = sum(p.numel() * p.element_size() for p in on_device[way]) / 1e9
        info[way] = {"median_s": statistics.median(timed), "runs_s": timed, "gb_on_device": gb}
        print(f"{way:>12}: median {statistics.median(timed):.2f} s ({', '.join(f'{s:.2f}' for s in timed)}) "
              f"from load to {gb:.1f} GB of bf16 weights on the GPU", flush=True)
    same = all(a.dtype == torch.bfloat16 and torch.equal(a, b) for a, b in zip(on_device["cast_on_host"], on_device["cast_on_gpu"], strict=True))
    return finish(args, info, same, "bf16 weights")


def record(args: argparse.Namespace, device: torch.device, **fields: object) -> dict[str, object]:
    """The result line's header: when, on what, from which folder, plus `fields`."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "ckpt_dir": str(args.ckpt_dir), **fields}


def finish(args: argparse.Namespace, info: dict[str, object], same: bool, what: str) -> int:
    """Say whether both ways left the same bytes on the device, append the line; exit status."""
    info["same_bytes"] = same
    print(f"the same {what} on the device both ways: {same}")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

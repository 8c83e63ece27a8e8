"""Disk benchmark: the readahead of a cold start, alone or beside the imports it overlaps.

Reads the files a run reads before its first step (`readahead.first_step_files`: VAE, umT5, the
first DiT) from a dropped page cache, once per configuration: thread count × I/O class (`be`, the
default class; `idle`, what `readahead.start` asks for). 1 thread in `be` is the readahead of
before. With `--beside-imports`, each run also imports the pipelines in a fresh interpreter at the
same moment (torch, Dynamo and Inductor: thousands of small files), as the generate command
and the runner's workers do while the readahead runs, and reports when each was done. Needs root
(it writes /proc/sys/vm/drop_caches before each run). Torch-free.

    python bench/readahead.py --ckpt_dir /root/ck --task t2v-A14B --threads 1 8 --io-class be idle \\
        --beside-imports --out bench.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wan_core.checkpoint import readahead
from wanspec.tasks import TASKS

# What a run imports before its first step (Dynamo and Inductor load when the blocks compile).
IMPORTS = "import wan_core.pipelines, wan_core.parallel, torch._dynamo, torch._inductor.compile_fx"
# The child says when its imports were done: the parent is busy reading until the readahead ends.
IMPORTER = [sys.executable, "-W", "ignore", "-c", f"{IMPORTS}; import time; print(time.time())"]


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def scheduler(path: Path) -> str:
    """The I/O scheduler line of the block device holding `path` ('?' where sysfs does not say)."""
    dev = os.stat(path).st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (sysfs / "queue/scheduler", sysfs / "../queue/scheduler"):
        if queue.exists():
            return queue.read_text().strip()
    return "?"


def one(files: list[Path], threads: int, idle: bool, beside_imports: bool) -> dict:
    """One readahead from a dropped cache, the imports started at the same moment if asked."""
    drop_page_cache()
    begin, wall = time.perf_counter(), time.time()
    importer = (subprocess.Popen(IMPORTER, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                if beside_imports else None)
    size = readahead.read(files, threads, idle=idle)
    result = {"threads": threads, "io_class": "idle" if idle else "be", "gb": round(size / 1e9, 2),
              "readahead_s": round(time.perf_counter() - begin, 2)}
    result["gb_per_s"] = round(result["gb"] / result["readahead_s"], 2)
    if importer is not None:
        out, _ = importer.communicate()
        if importer.returncode != 0:
            raise SystemExit(f"{IMPORTS!r} failed: exit {importer.returncode}")
        result["imports_s"] = round(float(out.split()[-1]) - wall, 2)
        result["both_s"] = max(result["imports_s"], result["readahead_s"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", type=Path, required=True)
    parser.add_argument("--task", default="t2v-A14B", choices=sorted(TASKS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--io-class", nargs="+", choices=["be", "idle"], default=["idle"])
    parser.add_argument("--beside-imports", action="store_true", help="import the pipelines at the same time")
    parser.add_argument("--runs", type=int, default=1, help="rounds over the configurations, each run from a dropped cache")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    files = readahead.first_step_files(args.ckpt_dir, TASKS[args.task])
    if not files:
        raise SystemExit(f"{args.ckpt_dir}: none of the {args.task} files a run reads first")
    alone = []
    if args.beside_imports:  # the imports' own time from a cold cache, the floor beside any readahead
        for _ in range(args.runs):
            drop_page_cache()
            begin = time.perf_counter()
            subprocess.run(IMPORTER, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            alone.append(round(time.perf_counter() - begin, 2))
        print(json.dumps({"imports_alone_s": alone}), flush=True)
    results = []
    for _ in range(args.runs):  # rounds, so drift in the disk's speed falls on every configuration alike
        for threads in args.threads:
            for io in args.io_class:
                results.append(one(files, threads, io == "idle", args.beside_imports))
                print(json.dumps(results[-1]), flush=True)
    if args.out:
        record = {"bench": "readahead", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "host": platform.node(), "kernel": platform.release(), "scheduler": scheduler(args.ckpt_dir),
                  "ckpt_dir": str(args.ckpt_dir), "task": args.task, "files": [str(f) for f in files], "imports": IMPORTS,
                  "imports_alone_s": alone, "results": results}
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Disk benchmark: the readahead of a cold start, one sequential reader against several.

Reads the files a run reads before its first step (`readahead.first_step_files`: VAE, umT5, the
first DiT) from a dropped page cache, once per thread count, as `readahead.start` does in every
run; 1 thread is the readahead before it read in parallel. Needs root (it writes
/proc/sys/vm/drop_caches before each run). Torch-free.

    python bench/readahead.py --ckpt_dir /root/ck --task t2v-A14B --threads 1 4 8 16 --out bench.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.checkpoint import readahead
from wanspec.tasks import TASKS


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", type=Path, required=True)
    parser.add_argument("--task", default="t2v-A14B", choices=sorted(TASKS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--runs", type=int, default=1, help="runs per thread count, each from a dropped cache")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    files = readahead.first_step_files(args.ckpt_dir, TASKS[args.task])
    if not files:
        raise SystemExit(f"{args.ckpt_dir}: none of the {args.task} files a run reads first")
    results = []
    for threads in args.threads:
        for _ in range(args.runs):
            drop_page_cache()
            begin = time.perf_counter()
            size = readahead.read(files, threads)
            seconds = time.perf_counter() - begin
            results.append({"threads": threads, "gb": round(size / 1e9, 2), "s": round(seconds, 2),
                            "gb_per_s": round(size / 1e9 / seconds, 2)})
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        record = {"bench": "readahead", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "host": platform.node(), "ckpt_dir": str(args.ckpt_dir), "task": args.task,
                  "files": [str(f) for f in files], "results": results}
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

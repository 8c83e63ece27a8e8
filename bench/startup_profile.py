"""Where a generate run's wall time goes, from process start: a sampling profiler around `main`.

The fixed part of a run (imports, loading, the first step's compile-cache loads, decode and
encode) is wall time on the main thread, much of it not in CUDA: Python imports, Dynamo tracing,
unpickling, waits on locks and files. cProfile cannot see it without slowing it several times;
this samples the main thread's Python stack every `--interval-ms` from another thread (the cost
is one GIL acquisition per sample) and reports, for each stretch between the run's log lines,
the functions on the stack most often (inclusive) and at the top (self).

    python bench/startup_profile.py --out prof.json -- --task ti2v-5B --size 1280*704 \\
        --ckpt_dir /root/ck5 --offload_model False --convert_model_dtype --sample_steps 1 \\
        --save_file /tmp/v.mp4
    python bench/startup_profile.py --report prof.json [--top 25]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

STARTED = time.time()  # before any heavy import: the moments are from here, as a process's would be
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Sampler(threading.Thread):
    """Samples one thread's stack (outermost first) as indices into a shared frame table."""

    def __init__(self, target: int, interval_s: float) -> None:
        super().__init__(name="stack-sampler", daemon=True)
        self.target, self.interval_s = target, interval_s
        self.frames: dict[str, int] = {}
        self.samples: list[tuple[float, list[int]]] = []
        self._done = threading.Event()

    def _key(self, frame: FrameType) -> int:
        code = frame.f_code
        name = f"{code.co_filename}:{code.co_firstlineno} {code.co_qualname}"
        return self.frames.setdefault(name, len(self.frames))

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            frame = sys._current_frames().get(self.target)
            stack = []
            while frame is not None:
                stack.append(self._key(frame))
                frame = frame.f_back
            self.samples.append((time.time() - STARTED, stack[::-1]))

    def stop(self) -> None:
        self._done.set()
        self.join()


class Moments(logging.Handler):
    """The run's log lines with their time from process start: the report's stretch boundaries."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created - STARTED, record.getMessage()[:100]))


def profile(argv: list[str], out: Path, interval_s: float) -> int:
    sampler = Sampler(threading.main_thread().ident, interval_s)
    sampler.start()
    moments = Moments()
    from wan_core import cli  # imports timed like the run's own

    original = logging.basicConfig

    def basic_config(**kwargs: object) -> None:  # the CLI's own logging set-up, then ours beside it
        original(**kwargs)
        logging.getLogger().addHandler(moments)

    logging.basicConfig = basic_config
    try:
        status = cli.main(argv)
    finally:
        sampler.stop()
        table = sorted(sampler.frames, key=sampler.frames.__getitem__)
        out.write_text(json.dumps({"argv": argv, "interval_s": interval_s, "wall_s": time.time() - STARTED,
                                   "moments": moments.lines, "frames": table, "samples": sampler.samples}))
    return status


def short(name: str) -> str:
    """`…/site-packages/torch/_dynamo/x.py:12 f` → `torch/_dynamo/x.py:12 f`."""
    path, _, rest = name.partition(":")
    for marker in ("site-packages/", "/wan_core/", "/bench/", "/lib/python3"):
        if marker in path:
            path = path[path.index(marker) + len(marker):] if marker == "site-packages/" else path[path.index(marker) + 1:]
            break
    return f"{path}:{rest}"


def report(path: Path, top: int) -> None:
    prof = json.loads(path.read_text())
    frames, samples, step = prof["frames"], [tuple(s) for s in prof["samples"]], prof["interval_s"]
    edges = [(0.0, "process start")] + [(t, m) for t, m in prof["moments"]] + [(prof["wall_s"], "end")]
    print(f"{len(samples)} samples every {step * 1000:.0f} ms, wall {prof['wall_s']:.1f} s")
    for (start, label), (end, _) in zip(edges, edges[1:]):
        # Each sample stands for the time since the one before: a sample comes late while
        # the main thread holds the GIL (in C), and that time is charged to what it was doing.
        inside = [(t - before, s) for (before, _), (t, s) in zip([(start, None)] + samples, samples) if start <= t < end]
        if not inside:
            continue
        inclusive, own = Counter(), Counter()
        for dt, stack in inside:
            for key in set(stack):
                inclusive[key] += dt
            if stack:
                own[stack[-1]] += dt
        print(f"\n== {start:6.2f} → {end:6.2f} s ({end - start:.2f} s, {len(inside)} samples) after: {label}")
        print("   inclusive:")
        for key, s in inclusive.most_common(top):
            print(f"   {s:6.2f} s  {short(frames[key])}")
        print("   self:")
        for key, s in own.most_common(top // 2):
            print(f"   {s:6.2f} s  {short(frames[key])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the samples here (then pass the generate flags after --)")
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--report", type=Path, help="summarize a profile written by --out")
    parser.add_argument("--top", type=int, default=20)
    args, rest = parser.parse_known_args()
    if args.report:
        report(args.report, args.top)
        return 0
    if not args.out:
        parser.error("--out or --report is required")
    status = profile([a for a in rest if a != "--"], args.out, args.interval_ms / 1000)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(status)  # as the generate command ends (wan_core.fast_exit)


if __name__ == "__main__":
    raise SystemExit(main())

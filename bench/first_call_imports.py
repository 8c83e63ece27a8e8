"""What a process's first DiT block call imports: the saved compiled block's load, then the call.

Runs the generate command (its arguments after `--`) with `SavedForward` wrapped, and prints, for
the load of the saved block and for the rest of the first block call, the seconds it took and the
modules it imported that the process had not, counted by package. Those are the CPU-bound parts
of a cold start after the weights are on the GPU (BENCHMARKS.md, "Where the start goes").

    TORCHINDUCTOR_CACHE_DIR=/root/ind python bench/first_call_imports.py --out imports.txt -- \\
        --task ti2v-5B --size 1280*704 --ckpt_dir /root/ck5 --offload_model False \\
        --convert_model_dtype --base_seed 1 --sample_steps 1 --save_file /tmp/v.mp4
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_core.ops import compile as compile_ops  # noqa: E402

seen: dict[str, tuple[float, set[str]]] = {}


def _wrap() -> None:
    load, call = compile_ops.SavedForward._load, compile_ops.SavedForward.__call__

    def timed_load(self: compile_ops.SavedForward, key: str) -> Any:
        before, begin = set(sys.modules), time.perf_counter()
        fn = load(self, key)
        seen["load"] = (time.perf_counter() - begin, set(sys.modules) - before)
        return fn

    def timed_call(self: compile_ops.SavedForward, block: Any, *args: Any) -> Any:
        if "first call" in seen:
            return call(self, block, *args)
        before, begin = set(sys.modules), time.perf_counter()
        out = call(self, block, *args)
        loaded = seen.get("load", (0.0, set()))
        seen["first call"] = (time.perf_counter() - begin - loaded[0], set(sys.modules) - before - loaded[1])
        return out

    compile_ops.SavedForward._load, compile_ops.SavedForward.__call__ = timed_load, timed_call


def report() -> str:
    lines = []
    for phase, (seconds, modules) in seen.items():
        lines.append(f"== {phase}: {seconds:.2f} s, {len(modules)} modules imported")
        by_package = collections.Counter(".".join(m.split(".")[:2]) for m in modules)
        lines.append("   " + ", ".join(f"{name} {n}" for name, n in by_package.most_common(25)))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("generate", nargs=argparse.REMAINDER, help="-- then the generate command's arguments")
    args = parser.parse_args()
    _wrap()
    from wan_core.cli import main as generate

    rc = generate([a for a in args.generate if a != "--"])
    text = report()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())

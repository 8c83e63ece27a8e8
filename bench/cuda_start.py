"""CUDA's first use on a thread beside imports, against it before or after them (`wan_core.cuda_start`).

Each mode runs in fresh processes, in rounds (`--rounds`), after `import torch`:
- `before`: CUDA's first use (`torch.ones(1, device="cuda")`), then the imports a generate run
  does next (Dynamo, Inductor's compile_fx, PIL);
- `thread`: the first use on a thread while those imports run (what `start_cuda` does);
- `after`: the imports, then the first use.
Each line reports the imports' time, when CUDA's first use started and ended (seconds after
`import torch`), and the total from `import torch` to both done.

    python bench/cuda_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MODES = ("before", "thread", "after")


def child(mode: str) -> dict:
    t0 = time.perf_counter()
    import threading

    import torch

    t1 = time.perf_counter()
    span: list[float] = []

    def first_use() -> None:
        span.append(time.perf_counter() - t1)
        torch.ones(1, device="cuda")
        span.append(time.perf_counter() - t1)

    if mode == "before":
        first_use()
    thread = threading.Thread(target=first_use) if mode == "thread" else None
    if thread:
        thread.start()
    a = time.perf_counter()
    import PIL.Image  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401

    imports = time.perf_counter() - a
    if thread:
        thread.join()
    if mode == "after":
        first_use()
    return {"mode": mode, "import_torch_s": round(t1 - t0, 2), "imports_s": round(imports, 2),
            "cuda_start_s": round(span[0], 2), "cuda_end_s": round(span[1], 2),
            "total_after_torch_s": round(time.perf_counter() - t1, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args.mode)))
        return 0
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("cuda_start.py: needs a CUDA GPU")
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--mode", mode], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

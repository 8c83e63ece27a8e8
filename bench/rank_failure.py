"""A rank killed mid-run on GPUs: every other rank, on this node or another, must exit within the
collective timeout instead of hanging.

    python bench/rank_failure.py --gpus 2                  # one torchrun, 2 ranks (one pod × 2 GPUs)
    python bench/rank_failure.py --gpus 2 --nodes 2        # two torchrun agents as two nodes (two pods × 1 GPU)
    python bench/rank_failure.py --gpus 2 --tiny           # CPU (gloo) check of the script

The launcher starts torchrun the way the runner does (`--nnodes/--node_rank/--master_addr`, one
agent per node, each node its own share of the GPUs) with WANOPS_COLLECTIVE_TIMEOUT_S set. Every
rank builds a full-size random TI2V-5B DiT with Ulysses over all ranks and runs sampling steps
under the runner's StepWatchdog; after `--kill-after` steps the last rank SIGKILLs itself (an
OOM kill or a lost GPU looks the same to its peers). Reported: seconds from the kill until each
agent exited and its exit status; OK when all exited, non-zero, within timeout + 30 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace) -> int:
    per_node = args.gpus // args.nodes
    port, mark = free_port(), Path(f"/tmp/rank-failure-{os.getpid()}.killed")
    mark.unlink(missing_ok=True)
    agents = []
    for node in range(args.nodes):
        env = dict(os.environ, WANOPS_COLLECTIVE_TIMEOUT_S=str(args.timeout), RANK_FAILURE_MARK=str(mark))
        if not args.tiny:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(node * per_node + i) for i in range(per_node))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={args.nodes}", f"--node_rank={node}",
               f"--nproc_per_node={per_node}", "--master_addr=127.0.0.1", f"--master_port={port}",
               str(HERE), "--worker", "--kill-after", str(args.kill_after)] + (["--tiny"] if args.tiny else [])
        agents.append(subprocess.Popen(cmd, env=env))
    exits: dict[int, tuple[float, int]] = {}
    deadline = time.monotonic() + args.timeout + 600
    while len(exits) < len(agents) and time.monotonic() < deadline:
        for node, agent in enumerate(agents):
            if node not in exits and agent.poll() is not None:
                exits[node] = (time.time(), agent.returncode)
        time.sleep(0.2)
    for agent in agents:
        if agent.poll() is None:
            agent.kill()
    killed_at = float(mark.read_text()) if mark.exists() else None
    mark.unlink(missing_ok=True)
    bound = args.timeout + 30
    report = {"gpus": args.gpus, "nodes": args.nodes, "timeout_s": args.timeout, "killed": killed_at is not None,
              "agents": {node: {"exit": code, "after_kill_s": round(at - killed_at, 1) if killed_at else None}
                         for node, (at, code) in exits.items()}}
    report["ok"] = (killed_at is not None and len(exits) == len(agents)
                    and all(code != 0 and at - killed_at <= bound for at, code in exits.values()))
    print(json.dumps(report))
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(report) + "\n")
    return 0 if report["ok"] else 1


def worker(args: argparse.Namespace) -> int:
    import torch

    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE.parents[1]))
    from dit_forward import latent_shape, random_dit

    from wan_core.models.dit import DiTConfig
    from wan_core.parallel import ParallelLayout, init_distributed, parallelize_dit
    from wan_core.parallel.mesh import collective_timeout
    from wan_core.parallel.watchdog import StepWatchdog

    layout = init_distributed(ParallelLayout.from_env("ti2v-5B"))
    device = layout.device
    # tiny: 2 heads of 24 so Ulysses over 2 ranks divides them (the tiny flavor has 3)
    cfg = dataclasses.replace(DiTConfig.flavor("tiny-ti2v"), num_heads=2) if args.tiny else DiTConfig.flavor("ti2v-5B")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = parallelize_dit(random_dit(cfg, device, dtype, seed=0), layout, dtype if device.type == "cuda" else None, compile=False)
    shape = latent_shape(48, (4, 16, 16), "64*64" if args.tiny else "1280*704", 5 if args.tiny else 121)
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, *shape, device=device, generator=gen)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen)
    victim = layout.rank == layout.world_size - 1
    with torch.inference_mode(), StepWatchdog(collective_timeout(), layout.rank) as dog:
        for step in range(10_000):
            if victim and step == args.kill_after:
                Path(os.environ["RANK_FAILURE_MARK"]).write_text(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)
            x = x - 0.01 * model(x, torch.tensor([999.0 - step], device=device), context)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dog.beat(f"step {step}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2, help="ranks in all")
    parser.add_argument("--nodes", type=int, default=1, help="torchrun agents (pods) sharing them")
    parser.add_argument("--timeout", type=float, default=60, help="WANOPS_COLLECTIVE_TIMEOUT_S for the run")
    parser.add_argument("--kill-after", type=int, default=3, help="steps before the last rank is killed")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpus % args.nodes:
        parser.error("--gpus must be a multiple of --nodes")
    return worker(args) if args.worker else launch(args)


if __name__ == "__main__":
    raise SystemExit(main())

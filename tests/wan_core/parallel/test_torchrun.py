"""Multi-rank results equal the one-process ones (fp32, gloo on CPU, real torchrun; issue 7).

Each torchrun run covers every task (t2v-A14B, i2v-A14B, ti2v-5B in text and image mode) for a
pair of layouts, chosen so the two worlds together cover Ulysses alone (2, 4), FSDP (DiT and
umT5), CFG-parallel alone and CFG-parallel × Ulysses × FSDP. Tolerance 1e-5 absolute on values
of size ~1 (observed: DiT ≤ 5e-7, videos ≤ 4e-6; only float summation order differs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from parallel_cases import CASES, run_case
from parallel_dit_inputs import dit_inputs

from wan_core.checkpoint.dit import load_dit_experts
from wan_core.pipelines import load_pipeline
from wanspec.tasks import TASKS

HERE = Path(__file__).parent
REPO = HERE.parents[2]
TOLERANCE = 1e-5
# world → layouts (see worker.py): u = Ulysses over every rank, c = CFG-parallel × Ulysses, f = FSDP.
WORLDS = {2: ("uf", "c"), 4: ("u", "cf")}


def torchrun_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANOPS_COLLECTIVE_TIMEOUT_S": "120"}
    return {**env, **extra}


@pytest.fixture(scope="module")
def reference(tiny_ckpts: dict[str, Path]) -> dict[str, torch.Tensor]:
    """One process, no parallel layer: the DiT branches and the videos the workers must match."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for task in TASKS:
            x, t, context, context_null, y = dit_inputs(task)
            for expert, model in load_dit_experts(tiny_ckpts[task], device="cpu").items():
                out[f"dit/{task}/{expert or 'dit'}"] = torch.stack([model(x, t, context, y), model(x, t, context_null, y)])
            pipe = load_pipeline(task, tiny_ckpts[task], device="cpu", dtype=torch.float32)
            for mode in CASES[task]:
                out[f"video/{task}/{mode}"] = run_case(pipe, mode)
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_every_layout_matches_one_process(world: int, tiny_ckpts: dict[str, Path], reference: dict[str, torch.Tensor],
                                          tmp_path: Path) -> None:
    root = next(iter(tiny_ckpts.values())).parent
    out = tmp_path / "out.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           str(HERE / "worker.py"), str(root), str(out), *WORLDS[world]]
    run = subprocess.run(cmd, env=torchrun_env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    got = torch.load(out)

    for name in WORLDS[world]:
        for key, want in reference.items():
            result = got[f"{key}/{name}"]
            ranks = result if isinstance(result, list) else [result]  # DiT: every rank's; video: rank 0's
            assert len(ranks) == (world if key.startswith("dit/") else 1)
            for rank, value in enumerate(ranks):
                assert value.shape == want.shape, f"{key}/{name} rank {rank}"
                diff = (value - want).abs().max().item()
                assert diff <= TOLERANCE, f"{key}/{name} rank {rank}: max abs diff {diff:.2e}"

"""torchrun worker: the DiT forward and the whole pipelines under the given layouts of this world.

    torchrun --nproc_per_node N tests/wan_core/parallel/worker.py CKPT_ROOT OUT.pt LAYOUT…

LAYOUT is `u` (Ulysses over every rank) or `c` (CFG-parallel × Ulysses), plus `f` for FSDP on the
DiT(s) and umT5: `u`, `uf`, `c`, `cf`. Rank 0 saves, per layout:
- `dit/<task>/<expert>/<layout>`: both guidance branches of every DiT on fixed inputs
  (`parallel_dit_inputs.py`) from every rank, so the test also sees that all ranks agree;
- `video/<task>/<mode>/<layout>`: the video of each case of `parallel_cases.py`; other ranks must get None.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from wan_core.parallel import ParallelLayout, cfg_parallel_branches, init_distributed, load_parallel_dits, shutdown
from wan_core.pipelines import load_pipeline
from wanspec.tasks import TASKS

sys.path.insert(0, str(Path(__file__).parent))
from parallel_cases import CASES, run_case  # noqa: E402
from parallel_dit_inputs import dit_inputs  # noqa: E402


def dit_forwards(root: Path, layout: ParallelLayout, name: str, out: dict[str, object]) -> None:
    for task, spec in TASKS.items():
        x, t, context, context_null, y = dit_inputs(task)
        for expert, model in load_parallel_dits(root / task, layout, dtype=None, param_dtype=None,
                                                model_type=spec.model_type).items():
            if layout.cfg == 2:
                v = cfg_parallel_branches(layout)(model, x, t, context, context_null, y)
            else:
                v = (model(x, t, context, y), model(x, t, context_null, y))
            got = torch.stack(v)
            every = [torch.empty_like(got) for _ in range(layout.world_size)]
            dist.all_gather(every, got)
            out[f"dit/{task}/{expert or 'dit'}/{name}"] = every


def videos(root: Path, layout: ParallelLayout, name: str, out: dict[str, object]) -> None:
    for task, modes in CASES.items():
        pipe = load_pipeline(task, root / task, device="cpu", dtype=torch.float32, parallel=layout)
        for mode in modes:
            video = run_case(pipe, mode)
            if layout.is_main:
                out[f"video/{task}/{mode}/{name}"] = video
            elif video is not None:
                raise AssertionError(f"rank {layout.rank} decoded a video; only rank 0 may")


@torch.no_grad()
def main(root: Path, path: Path, names: list[str]) -> None:
    torch.set_num_threads(1)
    out: dict[str, object] = {}
    for name in names:
        flags = dict(cfg_parallel=name.startswith("c"), dit_fsdp="f" in name, t5_fsdp="f" in name)
        layouts = {ParallelLayout.from_env(task, **flags) for task in TASKS}  # every task accepts it
        layout = init_distributed(layouts.pop())
        assert not layouts, "tasks disagree on the layout"
        dit_forwards(root, layout, name, out)
        videos(root, layout, name, out)
    if layout.is_main:
        torch.save(out, path)
    shutdown(layout)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])

"""torchrun worker: the tiny DiT forward under every layout of this world, saved by rank 0.

    torchrun --nproc_per_node N tests/wan_core/parallel/dit_worker.py CKPT_ROOT OUT.pt

For each task and each layout (Ulysses alone, with FSDP, CFG-parallel × Ulysses, with FSDP) it
runs both guidance branches on fixed inputs (`dit_inputs`) and rank 0 saves every rank's result,
so the test can also check that all ranks agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from wan_core.parallel import ParallelLayout, cfg_parallel_branches, init_distributed, load_parallel_dits, shutdown
from wanspec.tasks import TASKS

sys.path.insert(0, str(Path(__file__).parent))
from dit_inputs import dit_inputs  # noqa: E402


def main(root: Path, out: Path) -> None:
    torch.set_num_threads(1)
    world = dist.get_world_size() if dist.is_initialized() else None
    results: dict[str, list[torch.Tensor]] = {}
    for task in TASKS:
        for cfg_parallel in (False, True):
            for fsdp in (False, True):
                layout = init_distributed(ParallelLayout.from_env(task, cfg_parallel=cfg_parallel, dit_fsdp=fsdp))
                world = layout.world_size
                experts = load_parallel_dits(root / task, layout, dtype=None, param_dtype=None, model_type=TASKS[task].model_type)
                x, t, context, context_null, y = dit_inputs(task)
                for name, model in experts.items():
                    if cfg_parallel:
                        v = cfg_parallel_branches(layout)(model, x, t, context, context_null, y)
                    else:
                        v = (model(x, t, context, y), model(x, t, context_null, y))
                    got = torch.stack(v)
                    gathered = [torch.empty_like(got) for _ in range(world)]
                    dist.all_gather(gathered, got)
                    results[f"{task}/{name or 'dit'}/cfg{2 if cfg_parallel else 1}/fsdp{int(fsdp)}"] = gathered
    if dist.get_rank() == 0:
        torch.save(results, out)
    shutdown(layout)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Multi-GPU inference put on from outside the one-device models (spec §9, issue 7).

- `mesh`: `ParallelLayout` (world, Ulysses degree, CFG-parallel degree, FSDP switches) from
  torchrun's environment, checked with wanspec's rules; `init_distributed` with bounded timeouts.
- `ulysses`: sequence parallelism as hooks listed in `SP_PLAN`.
- `fsdp`: FSDP2 per block, sharded safetensors loading.
- `cfg`: the two guidance branches on two rank groups.
- `parallelize`: what the pipelines call. `watchdog`: a stuck rank ends itself.
"""

from wan_core.parallel.cfg import cfg_parallel_branches
from wan_core.parallel.mesh import (
    LayoutError,
    ParallelLayout,
    broadcast_seed,
    collective_timeout,
    init_distributed,
    shutdown,
)
from wan_core.parallel.parallelize import free_dits_for_decode, load_parallel_dits, parallelize_dit, parallelize_t5
from wan_core.parallel.ulysses import SP_PLAN, apply_ulysses
from wan_core.parallel.watchdog import StepWatchdog

__all__ = [
    "SP_PLAN",
    "LayoutError",
    "ParallelLayout",
    "StepWatchdog",
    "apply_ulysses",
    "broadcast_seed",
    "cfg_parallel_branches",
    "collective_timeout",
    "free_dits_for_decode",
    "init_distributed",
    "load_parallel_dits",
    "parallelize_dit",
    "parallelize_t5",
    "shutdown",
]

"""Multi-GPU inference put on from outside the one-device models (spec §9, issue 7).

- `mesh`: `ParallelLayout` (world, Ulysses degree, CFG-parallel degree, FSDP switches) from
  torchrun's environment; `init_distributed` with bounded timeouts; seed broadcast;
  `any_rank` (one decision for every rank).
- `rules`: the layout rules for flags (wanspec's), torch-free for the CLI's early checks.
- `ulysses`: sequence parallelism as hooks listed in `SP_PLAN`.
- `fsdp`: FSDP2 per block, sharded safetensors loading.
- `cfg`: the two guidance branches on two rank groups.
- `parallelize`: what the pipelines call. `watchdog`: a stuck rank ends itself.

Names are imported lazily, so `wan_core.parallel.rules` stays importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "cfg_parallel_branches": "cfg",
    "LayoutError": "mesh",
    "ParallelLayout": "mesh",
    "any_rank": "mesh",
    "broadcast_seed": "mesh",
    "collective_timeout": "mesh",
    "init_distributed": "mesh",
    "shutdown": "mesh",
    "load_parallel_dits": "parallelize",
    "parallelize_dit": "parallelize",
    "parallelize_t5": "parallelize",
    "SP_PLAN": "ulysses",
    "apply_ulysses": "ulysses",
    "StepWatchdog": "watchdog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wan_core.parallel' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wan_core.parallel.{_EXPORTS[name]}"), name)

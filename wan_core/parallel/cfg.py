"""CFG-parallel: the conditional branch on one rank group, the unconditional on the other.

Upstream runs both classifier-free-guidance branches one after the other on every rank. With
`cfg = 2` the world is two groups of `ulysses` ranks (mesh axis "cfg"): group 0 runs the DiT on
the prompt, group 1 on the negative prompt, at the same time, and one all-gather per step over
the axis (each rank with its partner in the other group) gives every rank both velocities; the
combine and the solver step then run identically everywhere. That halves the DiT time per step
for one exchange of one latent-sized tensor. Inside each group Ulysses works as usual, and FSDP
spans both groups: they run the same blocks in the same order, so the all-gathers line up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from wan_core.parallel.mesh import ParallelLayout

# (model, x, t, context, context_null, y) → (v_cond, v_uncond): how a step computes the two branches.
Branches = Callable[[Callable[..., Tensor], Tensor, Tensor, Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]


def cfg_parallel_branches(layout: ParallelLayout) -> Branches:
    """The branch function for `layout` (cfg must be 2): own branch, then exchange over the axis."""
    if layout.cfg != 2:
        raise ValueError(f"CFG-parallel needs cfg = 2, the layout has {layout.cfg}")
    group = layout.cfg_group

    def branches(model: Callable[..., Tensor], x: Tensor, t: Tensor, context: Tensor, context_null: Tensor,
                 y: Tensor | None) -> tuple[Tensor, Tensor]:
        mine = model(x, t, context if layout.cfg_rank == 0 else context_null, y).contiguous()
        both = [torch.empty_like(mine), torch.empty_like(mine)]
        dist.all_gather(both, mine, group=group)  # index = cfg rank: 0 conditional, 1 unconditional
        return both[0], both[1]

    return branches

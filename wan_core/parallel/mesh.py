"""One `ParallelLayout` per process: degrees from torchrun's environment and the flags, checked once.

Vocabulary (as torchtitan's `ParallelDims`): an *axis* is a mesh dimension, a *dim* a tensor one.
The world is a 2-D mesh `("cfg", "ulysses")` of shape (cfg, ulysses), rank = cfg_rank·ulysses +
ulysses_rank, so a Ulysses group is a run of consecutive ranks: on a node when ulysses ≤ GPUs per
node, which keeps the per-layer all-to-all on NVLink and leaves the once-per-step CFG exchange to
cross nodes. FSDP shards over the whole world, as upstream's `shard_model` does (spec §9.1).

The layout rules are wanspec's (through `rules.flag_problems`), so the CLI, the operator and the
runner refuse the same layouts; unset degrees are derived the way `wanspec.validate` derives them.

Multi-node needs nothing more: `torchrun --nnodes N --node_rank R --master_addr … --nproc_per_node G`
sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous, and the device is `cuda:LOCAL_RANK`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from wan_core.parallel.rules import derive_degrees, flag_problems
from wanspec.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

TIMEOUT_ENV = "WANOPS_COLLECTIVE_TIMEOUT_S"
# Long enough for the slowest collective-free stretch (rank 0's VAE decode of 81 frames at 720p
# while the others wait at the final barrier), short enough that a lost rank frees the GPUs soon.
DEFAULT_TIMEOUT_S = 600.0
MESH_AXES = ("cfg", "ulysses")


class LayoutError(ValueError):
    """A layout that cannot run; the message lists every problem with what would be valid."""


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees and this process's place in them; `mesh` is set by `init_distributed`.

    world_size = cfg × ulysses. cfg is 1 or 2 (the two CFG branches on two rank groups).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    ulysses: int = 1
    cfg: int = 1
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: DeviceMesh | None = field(default=None, compare=False, repr=False)  # ("cfg", "ulysses")
    fsdp_mesh: DeviceMesh | None = field(default=None, compare=False, repr=False)  # 1-D, every rank

    def __post_init__(self) -> None:
        if self.cfg not in (1, 2) or self.ulysses < 1 or self.cfg * self.ulysses != self.world_size:
            raise LayoutError(f"cfg {self.cfg} × ulysses {self.ulysses} must equal the world size {self.world_size} (cfg 1 or 2)")
        if not 0 <= self.rank < self.world_size:
            raise LayoutError(f"rank {self.rank} outside the world of {self.world_size}")

    @classmethod
    def from_env(
        cls,
        task: str | TaskSpec,
        *,
        ulysses: int | None = None,
        cfg_parallel: bool | None = None,
        dit_fsdp: bool = False,
        t5_fsdp: bool = False,
        t5_cpu: bool = False,
        env: Mapping[str, str] = os.environ,
    ) -> ParallelLayout:
        """The layout for torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: one process).

        ulysses / cfg_parallel None are derived as wanspec does; every problem is raised at once.
        """
        spec = task if isinstance(task, TaskSpec) else get_task(task)
        world = int(env.get("WORLD_SIZE", "1"))
        rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        problems = flag_problems(spec, world, ulysses=ulysses, cfg_parallel=cfg_parallel, dit_fsdp=dit_fsdp,
                                 t5_fsdp=t5_fsdp, t5_cpu=t5_cpu)
        if problems:
            raise LayoutError("; ".join(problems))
        ulysses, cfg = derive_degrees(spec, world, ulysses, cfg_parallel)
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        return cls(world_size=world, rank=rank, local_rank=local_rank, ulysses=ulysses, cfg=cfg,
                   dit_fsdp=dit_fsdp, t5_fsdp=t5_fsdp, device=device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 decodes and writes the video (spec §9)."""
        return self.rank == 0

    @property
    def cfg_rank(self) -> int:
        """0: this rank computes the conditional branch; 1: the unconditional one."""
        return self.rank // self.ulysses

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses

    @property
    def ulysses_group(self) -> dist.ProcessGroup:
        return self._axis("ulysses")

    @property
    def cfg_group(self) -> dist.ProcessGroup:
        return self._axis("cfg")

    def _axis(self, name: str) -> dist.ProcessGroup:
        if self.mesh is None:
            raise RuntimeError("the layout has no process groups; call init_distributed(layout) first")
        return self.mesh[name].get_group()


def collective_timeout(env: Mapping[str, str] = os.environ) -> float:
    """Seconds any collective may wait: WANOPS_COLLECTIVE_TIMEOUT_S, default 600."""
    raw = env.get(TIMEOUT_ENV)
    try:
        value = float(raw) if raw is not None else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return value


def init_distributed(layout: ParallelLayout, timeout_s: float | None = None) -> ParallelLayout:
    """Join the process group (nccl on CUDA, gloo on CPU) with a bounded collective timeout; build
    the meshes. Returns the layout with them; a one-process layout is returned unchanged.

    NCCL: TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (unless set) makes its watchdog tear the process down
    when a collective times out or a peer fails; gloo raises in the waiting call instead. Either
    way a lost or hung peer ends every rank with an error within `timeout_s`, never a silent hang.
    """
    if not layout.distributed:
        return layout
    timeout = timedelta(seconds=collective_timeout() if timeout_s is None else timeout_s)
    cuda = layout.device.type == "cuda"
    if cuda:
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(layout.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout, device_id=layout.device if cuda else None)
    if dist.get_world_size() != layout.world_size or dist.get_rank() != layout.rank:
        raise RuntimeError(f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with the layout {layout}")
    kind = layout.device.type
    mesh = init_device_mesh(kind, (layout.cfg, layout.ulysses), mesh_dim_names=MESH_AXES)
    fsdp_mesh = init_device_mesh(kind, (layout.world_size,), mesh_dim_names=("fsdp",))
    log.info("rank %d/%d: cfg %d × ulysses %d, dit_fsdp %s, t5_fsdp %s, timeout %.0f s", layout.rank,
             layout.world_size, layout.cfg, layout.ulysses, layout.dit_fsdp, layout.t5_fsdp, timeout.total_seconds())
    return dataclasses.replace(layout, mesh=mesh, fsdp_mesh=fsdp_mesh)


def broadcast_seed(seed: int, layout: ParallelLayout) -> int:
    """Rank 0's seed on every rank, so a random seed (−1) gives every rank the same noise (§9)."""
    if not layout.distributed:
        return seed
    box = [seed]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def any_rank(flag: bool, layout: ParallelLayout) -> bool:
    """Whether `flag` holds on any rank: one all-reduce, so ranks whose local views differ (a
    prompt-cache hit on one, a miss on another) take the same branch and make the same collectives."""
    if not layout.distributed:
        return flag
    box = torch.tensor([int(flag)], device=layout.device)  # NCCL reduces device tensors only
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def shutdown(layout: ParallelLayout) -> None:
    """Final barrier (every rank finished, rank 0 saved), then leave the process group."""
    if layout.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

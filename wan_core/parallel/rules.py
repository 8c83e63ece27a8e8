"""The layout rules for command-line flags, torch-free so the CLI checks them before importing torch.

They are wanspec's rules (`layout_problems`, `rule_problems`), phrased with the flag names, so
the CLI, the operator and the runner refuse the same layouts. Unset degrees are derived as
`wanspec.validate` derives them: CFG-parallel only when Ulysses alone cannot use every rank
(off whenever off works), ulysses = world / cfg.
"""

from __future__ import annotations

from wanspec.tasks import TaskSpec
from wanspec.validate import layout_problems, rule_problems

# wanspec field path → the command-line words for it, so a refusal names what to change.
FLAG_FOR_PATH = {
    "spec.parallelism.ulysses": "--ulysses_size",
    "spec.parallelism.cfgParallel": "--cfg_parallel",
    "spec.parallelism.ditFsdp": "--dit_fsdp",
    "spec.parallelism.t5Fsdp": "--t5_fsdp",
    "spec.memory.t5Cpu": "--t5_cpu",
    "spec.gpus": "WORLD_SIZE (torchrun --nnodes × --nproc_per_node)",
}


def derive_degrees(task: TaskSpec, world: int, ulysses: int | None, cfg_parallel: bool | None) -> tuple[int, int]:
    """(ulysses, cfg) with unset ones derived; only meaningful when `flag_problems` is empty."""
    if cfg_parallel is None:
        cfg_parallel = bool(layout_problems(task, world, ulysses, False)) and not layout_problems(task, world, ulysses, True)
    cfg = 2 if cfg_parallel else 1
    return ulysses or world // cfg, cfg


def flag_problems(
    task: TaskSpec,
    world: int,
    *,
    ulysses: int | None,
    cfg_parallel: bool | None,
    dit_fsdp: bool,
    t5_fsdp: bool,
    t5_cpu: bool,
) -> list[str]:
    """Every reason the flags cannot run in a world of `world` ranks, each naming the flag."""
    if cfg_parallel is None:
        _, cfg = derive_degrees(task, world, ulysses, None)
        cfg_parallel = cfg == 2
    problems = rule_problems({
        "task": task.name, "gpus": world, "memory": {"t5Cpu": t5_cpu},
        "parallelism": {"ulysses": ulysses, "cfgParallel": cfg_parallel, "ditFsdp": dit_fsdp, "t5Fsdp": t5_fsdp},
    })
    return [
        f"{FLAG_FOR_PATH[p.path]}: {p.message}" + (f" (valid: {p.valid})" if p.valid else "")
        for p in problems if p.path in FLAG_FOR_PATH
    ]

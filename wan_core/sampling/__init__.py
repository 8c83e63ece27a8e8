"""Flow-matching samplers of Wan2.2 (UniPC, DPM++), guidance and expert choice (spec §6).

Each solver is its own object with the two-call contract the pipelines drive:

    solver = make_solver("unipc")
    solver.set_timesteps(task.sample_steps, task.sample_shift)
    for t in solver.timesteps:
        latents = solver.step(velocity(latents, t), latents)
"""

from __future__ import annotations

from wan_core.sampling.dpmpp import DPMPPSolver
from wan_core.sampling.guidance import cfg_combine, guide_scales, select_expert
from wan_core.sampling.schedule import SOLVER_NAMES, Schedule, make_schedule
from wan_core.sampling.solver import FlowSolver
from wan_core.sampling.unipc import UniPCSolver

_SOLVERS: dict[str, type[FlowSolver]] = {
    UniPCSolver.name: UniPCSolver,
    DPMPPSolver.name: DPMPPSolver,
}


def make_solver(name: str) -> FlowSolver:
    """A fresh solver by its `--sample_solver` name ("unipc", the upstream default, or "dpm++")."""
    try:
        return _SOLVERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown sample solver {name!r}; valid solvers: {', '.join(SOLVER_NAMES)}"
        ) from None


__all__ = [
    "DPMPPSolver",
    "FlowSolver",
    "SOLVER_NAMES",
    "Schedule",
    "UniPCSolver",
    "cfg_combine",
    "guide_scales",
    "make_schedule",
    "make_solver",
    "select_expert",
]

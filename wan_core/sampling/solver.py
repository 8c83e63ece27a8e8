"""What UniPC and DPM++ share: the two-call contract, the schedule and the step counter.

Mirrors what `FlowUniPCMultistepScheduler` (`wan/utils/fm_solvers_unipc.py`) and
`FlowDPMSolverMultistepScheduler` (`wan/utils/fm_solvers.py`) of Wan-Video/Wan2.2@42bf4cf have in
common, as the pipelines drive them (`shared/wan22-spec.md` §6, §7): `set_timesteps(N, shift)` once,
then one `step(v, x) -> x_next` per `t` in `timesteps`. Both are deterministic (no SDE variant), so
no generator is taken.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from wan_core.sampling.schedule import make_schedule


class FlowSolver(ABC):
    """Base of the flow-matching multistep solvers; subclasses set `name` and implement `step`."""

    name: str

    def __init__(self) -> None:
        # float32 (N + 1,) kept on CPU: indexed into 0-d fp32 scalars, as upstream does.
        self.sigmas = torch.empty(0)
        # int64 (N,): the loop's `t`, fed to the DiT and to the expert choice.
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self._step_index = 0
        self._x0_preds: list[torch.Tensor] = []  # x̂0 of the latest steps, newest last

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def step_index(self) -> int:
        """Steps taken since `set_timesteps` (the index of the next step)."""
        return self._step_index

    def set_timesteps(
        self, num_steps: int, shift: float, device: torch.device | str | None = None
    ) -> None:
        """Build the schedule (the shift is applied here, spec §6.1) and forget any previous run."""
        schedule = make_schedule(self.name, num_steps, shift)
        self.sigmas = torch.from_numpy(schedule.sigmas)
        self.timesteps = torch.from_numpy(schedule.timesteps).to(device)
        self._step_index = 0
        self._x0_preds = []

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the sample: the step counter and the solver's history
        (the schedule is rebuilt by `set_timesteps`), so sampling can stop after any step and go
        on later with the same result (the runner's checkpointEverySteps)."""
        return {"step_index": self._step_index, "x0_preds": list(self._x0_preds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` after `set_timesteps` with the same steps and shift."""
        if not 0 <= state["step_index"] <= self.num_steps:
            raise ValueError(f"{self.name}: step {state['step_index']} outside 0..{self.num_steps}")
        self._step_index = int(state["step_index"])
        self._x0_preds = list(state["x0_preds"])

    @abstractmethod
    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Move `sample` from σ_i to σ_{i+1} with velocity `model_output`; fp32 math and result."""

    def _begin_step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Check the call is in range and return x̂0 = x − σ_i·v (flow matching, predict-x0)."""
        if self.num_steps == 0:
            raise RuntimeError(f"{self.name}: call set_timesteps(num_steps, shift) before step()")
        if self._step_index >= self.num_steps:
            raise RuntimeError(
                f"{self.name}: all {self.num_steps} steps are taken; call set_timesteps() again"
            )
        return sample - self.sigmas[self._step_index] * model_output

    def _push_x0(self, x0_pred: torch.Tensor) -> None:
        """Keep the last two x̂0 (order-2 solvers need no more)."""
        self._x0_preds = [*self._x0_preds[-1:], x0_pred]

    def _alpha_sigma_lambda(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """α = 1 − σ, σ and λ = log α − log σ at grid index i: 0-d fp32 tensors, upstream's order.

        λ is +inf at σ = 0 (the last step) and −inf at σ = 1 (DPM++'s first step); the updates are
        written so that these limits give finite samples, exactly as upstream's do.
        """
        sigma = self.sigmas[i]
        alpha = 1 - sigma
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

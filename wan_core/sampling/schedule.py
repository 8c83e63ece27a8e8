"""Sigma and timestep schedules of the two flow-matching solvers, built exactly as upstream does.

Matches `wan/utils/fm_solvers_unipc.py` (`FlowUniPCMultistepScheduler.__init__`, `set_timesteps`)
and `wan/utils/fm_solvers.py` (`get_sampling_sigmas`, `FlowDPMSolverMultistepScheduler`'s
`set_timesteps`) of Wan-Video/Wan2.2@42bf4cf; `shared/wan22-spec.md` §6.1. Grids and shift are
float64 numpy, model timesteps are the truncated int64 of `σ'·1000`, and the solver sigmas are
float32 with σ=0 appended, so every list here equals upstream's exactly (spec §12: "exact").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from wanspec.tasks import NUM_TRAIN_TIMESTEPS

# UniPC's grid starts at its scheduler's sigma_max: the training table `1 - linspace(1, 1/1000,
# 1000)[::-1]` is stored as float32, so σ_max = float32(0.999) = 0.9990000128746033 in float64.
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))

SOLVER_NAMES = ("unipc", "dpm++")  # generate.py --sample_solver choices; "unipc" is the default


@dataclass(frozen=True)
class Schedule:
    """One run's schedule: N + 1 float32 sigmas (the last is 0) and N model timesteps."""

    sigmas: (
        np.ndarray
    )  # float32 (N + 1,): shifted, descending, sigmas[N] == 0; what the solver uses
    timesteps: np.ndarray  # int64 (N,): int(σ'·1000) truncated; what the DiT and expert choice see


def _check_steps_and_shift(num_steps: int, shift: float) -> None:
    """Refuse what upstream would silently turn into an empty loop or NaN sigmas."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, Integral) or num_steps < 1:
        raise ValueError(f"sampling steps must be an integer >= 1, got {num_steps!r}")
    finite = isinstance(shift, Real) and not isinstance(shift, bool) and math.isfinite(shift)
    if not finite or shift <= 0:
        raise ValueError(f"sample shift must be a finite number > 0, got {shift!r}")


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """σ' = s·σ / (1 + (s−1)·σ) in float64, upstream's operation order; s > 1 favours high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unipc_base_sigmas(num_steps: int) -> np.ndarray:
    """`linspace(σ_max, 0, N+1)[:-1]` in float64: UniPC's unshifted grid (never 1, never 0)."""
    return np.linspace(UNIPC_SIGMA_MAX, 0.0, num_steps + 1)[:-1]


def dpmpp_base_sigmas(num_steps: int) -> np.ndarray:
    """`linspace(1, 0, N+1)[:N]` in float64: `get_sampling_sigmas`' grid, from pure noise σ=1."""
    return np.linspace(1, 0, num_steps + 1)[:num_steps]


def model_timesteps(shifted_sigmas: np.ndarray) -> np.ndarray:
    """t = int64(σ'·1000): truncation of the float64 product, as upstream's `.to(torch.int64)`."""
    return (shifted_sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)


def make_schedule(solver: str, num_steps: int, shift: float) -> Schedule:
    """The schedule `solver` ("unipc" or "dpm++") runs for N steps at shift s.

    UniPC shifts its own grid in `set_timesteps(N, shift=s)`; DPM++ is handed sigmas that
    `get_sampling_sigmas` already shifted, and its scheduler's own shift of 1 is an exact identity.
    Both therefore come down to shifting the base grid once.
    """
    _check_steps_and_shift(num_steps, shift)
    if solver == "unipc":
        base = unipc_base_sigmas(num_steps)
    elif solver == "dpm++":
        base = dpmpp_base_sigmas(num_steps)
    else:
        valid = ", ".join(SOLVER_NAMES)
        raise ValueError(f"unknown sample solver {solver!r}; valid solvers: {valid}")
    shifted = shift_sigmas(base, float(shift))
    sigmas = np.concatenate([shifted, [0.0]]).astype(np.float32)  # final_sigmas_type='zero'
    return Schedule(sigmas=sigmas, timesteps=model_timesteps(shifted))

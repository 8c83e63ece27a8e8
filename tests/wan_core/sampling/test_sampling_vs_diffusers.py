"""Whole sampling loops agree with diffusers' UniPC and DPM-Solver++ for flow matching (§6.2–6.3).

diffusers is the independent implementation. What is compared, exactly:

- UniPC: `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
  flow_shift=s, solver_order=2, predict_x0=True, solver_type="bh2", lower_order_final=True,
  disable_corrector=[], final_sigmas_type="zero")`. Its default flow grid is
  `linspace(1, 1/1000, N+1)` with σ_0 nudged by 1e-6, not upstream's `linspace(0.999f, 0, N+1)`,
  so it is given upstream's unshifted base grid through `set_timesteps(sigmas=...)`; diffusers then
  applies the shift and the int64 truncation itself, and its sigmas and timesteps are asserted
  equal to ours before the loop.
- DPM++: `DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
  algorithm_type="dpmsolver++", solver_type="midpoint", solver_order=2, lower_order_final=True,
  final_sigmas_type="zero")`. Its `set_timesteps` takes no sigmas and its flow grid starts at
  shift(0.999) rather than 1.0, so after `set_timesteps(N)` its `sigmas`/`timesteps` are replaced by
  upstream's `get_sampling_sigmas` grid written out here from spec §6.1; the step functions are
  then compared on identical sigma lists.

Both diffusers schedulers get `set_begin_index(0)` (count from 0, spec §13.5). The velocity is a
fixed linear map of the sample plus a time term, fed the integer timestep like the DiT.
"""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from wan_core.sampling import make_solver
from wan_core.sampling.schedule import unipc_base_sigmas

# diffusers' DPM-Solver builds its (here unused) VP table with np.array(tensor); numpy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CASES = [(40, 12.0), (40, 5.0), (50, 5.0), (10, 3.0)]
REL_TOL = (
    1e-6  # spec §12 "one scheduler step ... ≲ 1e-6 relative (fp32)"; measured: 0 (bit-identical)
)
SHAPE = (1, 16, 2, 4, 4)  # (B, C, F, H, W) as the pipelines pass it: batch 1 of a latent


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: extra intra-op threads only contend on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _velocity_fn():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(SHAPE[1], SHAPE[1], generator=g) * 0.3
    time_term = torch.randn(SHAPE, generator=g)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (mix @ x.flatten(2)).view_as(x) + (t.float() / 1000) * time_term

    return velocity, torch.randn(SHAPE, generator=g)


def _run(scheduler_step, timesteps, velocity, noise):
    x = noise.clone()
    for t in timesteps:
        x = scheduler_step(velocity(x, t), t, x)
    return x


def _ours(name, steps, shift, velocity, noise):
    solver = make_solver(name)
    solver.set_timesteps(steps, shift)
    return solver, _run(lambda v, t, x: solver.step(v, x), solver.timesteps, velocity, noise)


def _rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize(("steps", "shift"), CASES)
def test_unipc_loop_matches_diffusers(steps, shift):
    velocity, noise = _velocity_fn()
    ours, got = _ours("unipc", steps, shift, velocity, noise)

    ref = UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        predict_x0=True, solver_type="bh2", lower_order_final=True, disable_corrector=[],
        use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero",
    )  # fmt: skip
    ref.set_timesteps(sigmas=unipc_base_sigmas(steps).copy())
    ref.set_begin_index(0)
    assert torch.equal(ref.timesteps, ours.timesteps)
    assert torch.equal(ref.sigmas, ours.sigmas)
    want = _run(lambda v, t, x: ref.step(v, t, x).prev_sample, ref.timesteps, velocity, noise)

    assert got.dtype == torch.float32
    assert _rel_err(got, want) <= REL_TOL


def _dpmpp_reference(steps, shift):
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", use_flow_sigmas=True, flow_shift=1.0,
    )  # fmt: skip
    ref.set_timesteps(steps)
    base = np.linspace(1, 0, steps + 1)[:steps]  # get_sampling_sigmas, spec §6.1
    shifted = shift * base / (1 + (shift - 1) * base)
    ref.sigmas = torch.from_numpy(np.concatenate([shifted, [0.0]]).astype(np.float32))
    ref.timesteps = torch.from_numpy((shifted * 1000).astype(np.int64))
    ref.set_begin_index(0)
    return ref


@pytest.mark.parametrize(("steps", "shift"), CASES)
def test_dpmpp_loop_matches_diffusers(steps, shift):
    velocity, noise = _velocity_fn()
    ours, got = _ours("dpm++", steps, shift, velocity, noise)

    ref = _dpmpp_reference(steps, shift)
    assert torch.equal(ref.timesteps, ours.timesteps)
    assert torch.equal(ref.sigmas, ours.sigmas)
    want = _run(lambda v, t, x: ref.step(v, t, x).prev_sample, ref.timesteps, velocity, noise)

    assert got.dtype == torch.float32
    assert _rel_err(got, want) <= REL_TOL


@pytest.mark.parametrize("name", ["unipc", "dpm++"])
@pytest.mark.parametrize("steps", [1, 2])
def test_shortest_loops_end_on_the_last_x0_prediction(name, steps):
    """σ_N = 0 makes the last step return x̂0 = x − σ·v exactly; with N = 1 that is the only step."""
    velocity, noise = _velocity_fn()
    solver = make_solver(name)
    solver.set_timesteps(steps, 5.0)
    x = noise.clone()
    for t in solver.timesteps[:-1]:
        x = solver.step(velocity(x, t), x)
    t = solver.timesteps[-1]
    v = velocity(x, t)
    assert torch.equal(solver.step(v, x), x - solver.sigmas[-2] * v)


def test_unipc_counts_from_zero_where_upstream_lookup_would_skip():
    """Shift 12, 100 steps repeats t=999 at the start (spec §13.5): we still take all 100 steps."""
    velocity, noise = _velocity_fn()
    ours, got = _ours("unipc", 100, 12.0, velocity, noise)
    assert ours.timesteps[0] == ours.timesteps[1] == 999
    assert ours.step_index == 100

    ref = UniPCMultistepScheduler(
        solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0,
        final_sigmas_type="zero",
    )  # fmt: skip
    ref.set_timesteps(sigmas=unipc_base_sigmas(100).copy())
    ref.set_begin_index(0)
    want = _run(lambda v, t, x: ref.step(v, t, x).prev_sample, ref.timesteps, velocity, noise)
    assert _rel_err(got, want) <= REL_TOL

"""Schedules equal the specification's timestep lists exactly (§6.1), with §6.5's expert splits."""

import numpy as np
import pytest
import torch

from wan_core.sampling import SOLVER_NAMES, make_schedule, make_solver, select_expert
from wan_core.sampling.schedule import UNIPC_SIGMA_MAX
from wanspec.tasks import HIGH_NOISE_EXPERT, get_task

# §6.1, t2v-A14B (s=12, N=40): 26 high-noise entries (first two rows), then 14 low-noise ones.
T2V_TIMESTEPS = [
    999, 997, 995, 993, 990, 988, 985, 982, 979, 976, 972, 969, 965,
    961, 956, 952, 947, 941, 936, 929, 922, 915, 907, 898, 888, 877,
    865, 852, 837, 819, 799, 776, 749, 717, 678, 631, 571, 492, 386, 235,
]  # fmt: skip
I2V_FIRST_15 = [999, 994, 989, 983, 978, 972, 965, 959, 952, 944, 937, 929, 920, 911, 902]


def _schedule(task_name: str, solver: str = "unipc"):
    task = get_task(task_name)
    return task, make_schedule(solver, task.sample_steps, task.sample_shift)


def _high_noise_steps(task, timesteps) -> int:
    experts = [
        select_expert(int(t), task.boundary_timestep, task.guide_scale)[0] for t in timesteps
    ]
    return experts.count(HIGH_NOISE_EXPERT)


def test_unipc_sigma_max_is_float32_0999():
    assert UNIPC_SIGMA_MAX == 0.9990000128746033


def test_t2v_a14b_default_timesteps_and_26_14_split():
    task, schedule = _schedule("t2v-A14B")
    assert schedule.timesteps.tolist() == T2V_TIMESTEPS
    assert schedule.timesteps.dtype == np.int64
    assert _high_noise_steps(task, schedule.timesteps) == 26  # 877 >= 875 > 865
    assert round(float(schedule.sigmas[0]), 5) == 0.99992  # §13.4: shifted 0.999, t = 999


def test_i2v_a14b_default_timesteps_and_15_25_split():
    task, schedule = _schedule("i2v-A14B")
    assert schedule.timesteps[:15].tolist() == I2V_FIRST_15
    assert schedule.timesteps[15:17].tolist() == [892, 882]
    assert schedule.timesteps[-2:].tolist() == [208, 113]
    assert _high_noise_steps(task, schedule.timesteps) == 15  # 902 >= 900 > 892


def test_ti2v_5b_default_timesteps_ends():
    _, schedule = _schedule("ti2v-5B")
    assert len(schedule.timesteps) == 50
    assert schedule.timesteps[:3].tolist() == [999, 995, 991]
    assert schedule.timesteps[-3:].tolist() == [241, 172, 92]


def test_sigmas_are_float32_with_final_zero():
    _, schedule = _schedule("t2v-A14B")
    assert schedule.sigmas.dtype == np.float32
    assert schedule.sigmas.shape == (41,)
    assert schedule.sigmas[-1] == 0.0
    assert np.all(np.diff(schedule.sigmas) < 0)


def test_dpmpp_starts_at_pure_noise_and_differs_by_at_most_one():
    _, unipc = _schedule("t2v-A14B")
    _, dpmpp = _schedule("t2v-A14B", "dpm++")
    assert dpmpp.sigmas[0] == 1.0 and dpmpp.timesteps[0] == 1000
    assert np.abs(dpmpp.timesteps - unipc.timesteps).max() == 1
    assert dpmpp.sigmas[-1] == 0.0


def test_timesteps_truncate_rather_than_round():
    schedule = make_schedule("unipc", 40, 12.0)
    exact = schedule.sigmas[:-1].astype(np.float64) * 1000
    assert np.all(schedule.timesteps <= exact)
    assert schedule.timesteps[0] == 999  # 999.917 -> 999, rounding would give 1000


def test_solver_exposes_schedule_as_tensors():
    solver = make_solver("unipc")
    solver.set_timesteps(40, 12.0)
    assert solver.timesteps.dtype == torch.int64
    assert solver.timesteps.tolist() == T2V_TIMESTEPS
    assert solver.sigmas.dtype == torch.float32 and solver.sigmas.shape == (41,)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize(
    ("steps", "shift"), [(0, 5.0), (-3, 5.0), (2.5, 5.0), (40, 0.0), (40, -1.0), (40, float("nan"))]
)
def test_bad_steps_or_shift_raise_clear_value_error(solver, steps, shift):
    with pytest.raises(ValueError, match="steps|shift"):
        make_solver(solver).set_timesteps(steps, shift)


def test_unknown_solver_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown sample solver 'euler'.*unipc, dpm\\+\\+"):
        make_solver("euler")
    with pytest.raises(ValueError, match="unknown sample solver"):
        make_schedule("euler", 40, 5.0)


def test_step_outside_the_schedule_is_refused():
    solver = make_solver("dpm++")
    x = torch.zeros(1, 2)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        solver.step(x, x)
    solver.set_timesteps(1, 5.0)
    solver.step(x, x)
    with pytest.raises(RuntimeError, match="all 1 steps"):
        solver.step(x, x)

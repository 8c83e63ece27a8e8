"""CFG combine (§6.4) and the A14B expert choice (§6.5), including the boundary edges."""

import pytest
import torch

from wan_core.sampling import cfg_combine, guide_scales, select_expert
from wanspec.tasks import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, get_task


def test_cfg_combine_is_uncond_plus_scaled_difference_in_fp32():
    g = torch.Generator().manual_seed(0)
    v_c, v_u = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    got = cfg_combine(v_c.bfloat16(), v_u.bfloat16(), 4.0)
    v_c, v_u = v_c.bfloat16().float(), v_u.bfloat16().float()
    assert got.dtype == torch.float32
    assert torch.equal(got, v_u + 4.0 * (v_c - v_u))


def test_cfg_scale_one_is_the_conditional_prediction():
    v_c, v_u = torch.tensor([1.5, -2.0]), torch.tensor([0.25, 3.0])
    assert torch.equal(cfg_combine(v_c, v_u, 1.0), v_c)


@pytest.mark.parametrize(
    ("t", "expert", "scale"),
    [
        (999, HIGH_NOISE_EXPERT, 4.0),
        (875, HIGH_NOISE_EXPERT, 4.0),  # t == boundary goes high-noise
        (torch.tensor(875), HIGH_NOISE_EXPERT, 4.0),  # the loop's 0-d int64 timestep
        (874, LOW_NOISE_EXPERT, 3.0),
        (0, LOW_NOISE_EXPERT, 3.0),
    ],
)
def test_t2v_expert_choice_at_boundary_875(t, expert, scale):
    task = get_task("t2v-A14B")
    assert task.boundary_timestep == 875.0
    assert select_expert(t, task.boundary_timestep, task.guide_scale) == (expert, scale)


def test_i2v_expert_choice_at_boundary_900():
    task = get_task("i2v-A14B")
    assert select_expert(900, task.boundary_timestep, task.guide_scale) == (HIGH_NOISE_EXPERT, 3.5)
    assert select_expert(899, task.boundary_timestep, task.guide_scale) == (LOW_NOISE_EXPERT, 3.5)


def test_scalar_guide_scale_applies_to_both_experts():
    assert guide_scales(5) == (5.0, 5.0)
    assert select_expert(999, 875.0, 6.0) == (HIGH_NOISE_EXPERT, 6.0)
    assert select_expert(100, 875.0, 6.0) == (LOW_NOISE_EXPERT, 6.0)


def test_guide_scale_tuple_must_have_two_entries():
    with pytest.raises(ValueError, match="low_noise, high_noise"):
        guide_scales((1.0, 2.0, 3.0))

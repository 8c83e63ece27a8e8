"""The task table agrees with the specification's derived shapes (§1.4) and rules (§8.3)."""

import pytest

from wanspec.tasks import (
    TASKS,
    Size,
    check_frame_num,
    get_task,
    latent_frames,
    latent_shape,
    seq_len,
)


@pytest.mark.parametrize(
    ("task", "size", "frames", "shape", "tokens"),
    [
        ("t2v-A14B", "1280*720", 81, (16, 21, 90, 160), 75_600),
        ("t2v-A14B", "832*480", 81, (16, 21, 60, 104), 32_760),
        ("ti2v-5B", "1280*704", 121, (48, 31, 44, 80), 27_280),
    ],
)
def test_derived_shapes_match_spec_table(task, size, frames, shape, tokens):
    got = latent_shape(get_task(task), Size.parse(size), frames)
    assert got == shape
    assert seq_len(got[1:]) == tokens


def test_seq_len_rounds_up_to_the_ulysses_degree():
    assert seq_len((21, 90, 160), sp_size=8) == 75_600  # already a multiple
    assert seq_len((1, 2, 6), sp_size=4) == 4  # 3 tokens -> 4


@pytest.mark.parametrize("bad", [0, 2, 80, 82])
def test_frame_rule_refuses_and_names_neighbours(bad):
    with pytest.raises(ValueError, match="4n\\+1"):
        check_frame_num(bad)


def test_frame_rule_message_offers_nearest_valid_values():
    with pytest.raises(ValueError, match="77 or 81"):
        check_frame_num(80)
    assert latent_frames(81) == 21 and latent_frames(1) == 1


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="t2v-A14B, i2v-A14B, ti2v-5B"):
        get_task("t2v-14B")


def test_ulysses_degrees_follow_the_heads():
    assert get_task("t2v-A14B").ulysses_degrees() == [1, 2, 4, 5, 8, 10, 20, 40]
    assert get_task("ti2v-5B").ulysses_degrees() == [1, 2, 3, 4, 6, 8, 12, 24]


def test_moe_tasks_switch_at_the_published_boundary():
    assert TASKS["t2v-A14B"].boundary_timestep == 875.0
    assert TASKS["i2v-A14B"].boundary_timestep == 900.0
    assert not TASKS["ti2v-5B"].is_moe and TASKS["ti2v-5B"].boundary_timestep is None


def test_size_parse_refuses_garbage():
    assert str(Size.parse("1280*720")) == "1280*720" and Size.parse("1280*720").area == 921_600
    with pytest.raises(ValueError, match="WIDTH\\*HEIGHT"):
        Size.parse("big")

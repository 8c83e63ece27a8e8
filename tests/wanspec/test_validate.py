"""validate(): every rule, all problems at once, field paths. resolve(): task and GPU defaults."""

from __future__ import annotations

import pytest
from vg_cases import (
    BASE,
    INVALID,
    spec,
)  # tests/wanspec/vg_cases.py, shared with the API server test

from wanspec.spec import MAX_NAME_LENGTH, VideoGenerationSpec
from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, TASKS
from wanspec.validate import (
    InvalidSpec,
    Problem,
    default_gpus_per_pod,
    parse,
    resolve,
    valid_gpu_counts,
    validate,
)


@pytest.mark.parametrize(("case", "value", "path", "text"), INVALID, ids=[c[0] for c in INVALID])
def test_each_rule_names_its_field(case, value, path, text):
    problems = validate(value)
    at_path = [p for p in problems if p.path == path]
    assert at_path, f"{case}: no problem at {path}; got {problems}"
    assert any(text in f"{p.message} (valid: {p.valid})" for p in at_path), at_path


@pytest.mark.parametrize("task", list(TASKS))
def test_valid_specs_have_no_problems(task):
    assert validate(BASE[task]) == []


def test_every_problem_is_reported_at_once():
    bad = spec(
        "ti2v-5B",
        size="1280*720",
        frames=80,
        prompt="",
        gpus=5,
        sampling__steps=0,
        sampling__guideScale=[1.0, 2.0],
        gpusPerPod=2,
    )
    paths = {p.path for p in validate(bad, name="Bad_Name")}
    assert paths >= {
        "metadata.name",
        "spec.size",
        "spec.frames",
        "spec.prompt",
        "spec.gpus",
        "spec.sampling.steps",
        "spec.sampling.guideScale",
        "spec.gpusPerPod",
    }


def test_problem_text_carries_path_and_valid_values():
    [problem] = validate(spec(frames=80))
    assert str(problem) == "spec.frames: 80 is not of the form 4n+1 (valid: 77 or 81)"


def test_snake_case_input_is_checked_like_camel_case():
    snake = spec("i2v-A14B", inputImage=None, input_image="s3://inputs/cat.jpg")
    assert validate(snake) == []


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * MAX_NAME_LENGTH, True),
        ("a" * (MAX_NAME_LENGTH + 1), False),
        ("cats-1", True),
        ("1cats", False),
        ("cats.v2", False),
    ],
)
def test_names_leave_room_for_derived_hostnames(name, ok):
    assert (validate(BASE["t2v-A14B"], name=name) == []) == ok


def test_parse_raises_with_every_problem():
    with pytest.raises(InvalidSpec) as err:
        parse(spec(frames=80, gpus=3))
    assert {p.path for p in err.value.problems} == {"spec.frames", "spec.gpus"}
    assert isinstance(parse(BASE["ti2v-5B"]), VideoGenerationSpec)


@pytest.mark.parametrize("task", list(TASKS))
def test_resolve_takes_the_task_defaults(task):
    t, r = TASKS[task], resolve(BASE[task])
    assert (r.frames, r.steps, r.shift, r.guide_scale, r.fps) == (
        t.frame_num,
        t.sample_steps,
        t.sample_shift,
        t.guide_scale,
        t.fps,
    )
    assert (r.gpus, r.pods, r.ulysses, r.cfg_parallel, r.dit_fsdp, r.t5_fsdp) == (
        1,
        1,
        1,
        False,
        False,
        False,
    )
    assert (r.offload_model, r.convert_model_dtype, r.t5_cpu) == (True, True, False)
    assert r.negative_prompt == DEFAULT_NEGATIVE_PROMPT


def test_resolve_keeps_given_values():
    r = resolve(
        spec(
            frames=41,
            sampling__steps=10,
            sampling__shift=3.0,
            sampling__guideScale=[2.0],
            memory__offloadModel=False,
            memory__convertModelDtype=False,
        )
    )
    assert (r.frames, r.steps, r.shift, r.guide_scale) == (41, 10, 3.0, (2.0, 2.0))
    assert (r.offload_model, r.convert_model_dtype) == (False, False)
    assert resolve(spec(sampling__guideScale=[2.0, 6.0])).guide_scale == (2.0, 6.0)


# (task, gpus, given parallelism, gpusPerPod,
#  expected (pods, perPod, ulysses, cfg, ditFsdp, t5Fsdp))
LAYOUTS = [
    ("t2v-A14B", 8, {}, None, (1, 8, 8, False, True, True)),
    ("t2v-A14B", 16, {}, None, (2, 8, 8, True, True, True)),  # 16 ∤ 40 → CFG × Ulysses 8
    ("t2v-A14B", 16, {}, 4, (4, 4, 8, True, True, True)),
    ("t2v-A14B", 80, {}, None, (10, 8, 40, True, True, True)),
    ("t2v-A14B", 10, {}, None, (2, 5, 10, False, True, True)),  # largest divisor ≤ 8 is 5
    ("t2v-A14B", 4, {"cfgParallel": True}, None, (1, 4, 2, True, True, True)),
    ("t2v-A14B", 4, {"ulysses": 2}, None, (1, 4, 2, True, True, True)),  # ulysses = gpus/2 → CFG
    ("t2v-A14B", 2, {"ditFsdp": False}, None, (1, 2, 2, False, False, False)),
    ("ti2v-5B", 8, {}, None, (1, 8, 8, False, False, False)),  # 5B fits whole: no FSDP by default
    ("ti2v-5B", 16, {}, None, (2, 8, 8, True, False, False)),
    ("ti2v-5B", 48, {}, None, (6, 8, 24, True, False, False)),
]


@pytest.mark.parametrize(("task", "gpus", "par", "per_pod", "want"), LAYOUTS)
def test_default_layout(task, gpus, par, per_pod, want):
    extra = {"gpusPerPod": per_pod} if per_pod else {}
    r = resolve(spec(task, gpus=gpus, parallelism=par, **extra))
    assert (r.pods, r.gpus_per_pod, r.ulysses, r.cfg_parallel, r.dit_fsdp, r.t5_fsdp) == want


def test_t5_cpu_turns_the_t5_fsdp_default_off():
    r = resolve(spec(gpus=8, memory__t5Cpu=True))
    assert (r.dit_fsdp, r.t5_fsdp, r.t5_cpu) == (True, False, True)


def test_offload_default_is_on_only_for_one_gpu():
    assert resolve(spec(gpus=1)).offload_model and not resolve(spec(gpus=2)).offload_model


def test_valid_gpu_counts_all_resolve_and_no_other_count_does():
    for name, task in TASKS.items():
        valid = set(valid_gpu_counts(task))
        for gpus in range(1, 81):
            problems = validate(spec(name, gpus=gpus))
            assert (problems == []) == (gpus in valid), (name, gpus, problems)


def test_default_gpus_per_pod():
    assert [default_gpus_per_pod(g) for g in (1, 2, 5, 8, 10, 12, 16, 40, 80)] == [
        1,
        2,
        5,
        8,
        5,
        6,
        8,
        8,
        8,
    ]


def test_problem_is_a_plain_value():
    assert Problem("spec.x", "bad") == Problem("spec.x", "bad", "")

"""Bad inputs are refused before anything runs, with a message that says what to fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from wan_core.checkpoint.errors import CheckpointError
from wan_core.pipelines import WanPipeline, load_pipeline


@pytest.fixture
def guarded(pipelines: dict[str, WanPipeline], monkeypatch: pytest.MonkeyPatch) -> dict[str, WanPipeline]:
    """The pipelines, with prompt encoding (the first real step) turned into a failure."""
    def must_not_run(*_args, **_kwargs):
        raise AssertionError("a bad input reached the numbered steps")

    for pipe in pipelines.values():
        monkeypatch.setattr(pipe, "encode_prompts", must_not_run)
    return pipelines


IMAGE = Image.new("RGB", (64, 48), (120, 30, 200))

T2V_CASES = [
    (dict(frame_num=80), "frame count 80 is not of the form 4n\\+1; nearest valid: 77 or 81"),
    (dict(frame_num=0), "nearest valid: 1 or 5"),
    (dict(frame_num=81.0), "frame_num must be an integer"),
    (dict(size="1280*704"), "size 1280\\*704 is not supported by t2v-A14B; supported sizes: 720\\*1280, 1280\\*720, 480\\*832, 832\\*480"),
    (dict(size="big"), "not of the form WIDTH\\*HEIGHT"),
    (dict(size=(1280, 720.0)), "size must be 'W\\*H' or \\(W, H\\)"),
    (dict(sampling_steps=0), "sampling_steps must be an integer >= 1"),
    (dict(sampling_steps=2.5), "sampling_steps must be an integer >= 1"),
    (dict(sampling_steps=True), "sampling_steps must be an integer >= 1"),
    (dict(shift=0.0), "shift must be a finite number > 0"),
    (dict(shift=-3), "shift must be a finite number > 0"),
    (dict(shift=math.nan), "shift must be a finite number > 0"),
    (dict(sample_solver="euler"), "unknown sample_solver 'euler'; valid solvers: unipc, dpm\\+\\+"),
    (dict(guide_scale=math.inf), "guide_scale must be finite"),
    (dict(guide_scale=(1.0, 2.0, 3.0)), "guide scale must be a number or \\(low_noise, high_noise\\)"),
    (dict(seed=2**64), "seed 18446744073709551616 is above"),
]


@pytest.mark.parametrize(("kwargs", "message"), T2V_CASES)
def test_t2v_refuses(guarded: dict[str, WanPipeline], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        guarded["t2v-A14B"].generate("a fox", **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(img=None), "i2v-A14B needs an image"),
    (dict(img="photo.jpg"), "img must be a PIL.Image.Image, got str"),
    (dict(img=IMAGE, max_area=1280 * 704), "max_area 901120 is not one of i2v-A14B's: 399360 \\(480\\*832 or 832\\*480\\), 921600"),
    (dict(img=IMAGE, frame_num=6), "nearest valid: 5 or 9"),
])
def test_i2v_refuses(guarded: dict[str, WanPipeline], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        guarded["i2v-A14B"].generate("a fox", **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(size="1280*720"), "size 1280\\*720 is not supported by ti2v-5B; supported sizes: 704\\*1280, 1280\\*704"),
    (dict(img=IMAGE, max_area=1280 * 720), "max_area 921600 is not one of ti2v-5B's"),
    (dict(guide_scale=(3.0, 5.0)), "ti2v-5B has one model, so one guide scale"),
])
def test_ti2v_refuses(guarded: dict[str, WanPipeline], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        guarded["ti2v-5B"].generate("a fox", **kwargs)


def test_extreme_aspect_ratios_are_refused_with_a_reason(pipelines: dict[str, WanPipeline]) -> None:
    thin = Image.new("RGB", (1, 4000))
    i2v, ti2v = pipelines["i2v-A14B"], pipelines["ti2v-5B"]
    with pytest.raises(ValueError, match="less extreme aspect ratio"):
        i2v.run("x", thin, 32 * 16, i2v.sampling_options(frame_num=1, sampling_steps=1, seed=0))
    with pytest.raises(ValueError, match="less extreme aspect ratio"):
        ti2v.run_image("x", thin, 64 * 32, ti2v.sampling_options(frame_num=1, sampling_steps=1, seed=0))


def test_run_refuses_sizes_that_do_not_fill_patches(pipelines: dict[str, WanPipeline]) -> None:
    pipe = pipelines["ti2v-5B"]
    with pytest.raises(ValueError, match="48x32 pixels are not positive multiples of 32x32"):
        pipe.run("x", 48, 32, pipe.sampling_options(frame_num=1, sampling_steps=1, seed=0))


def test_load_pipeline_refuses_bad_arguments(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task 'x2v'; valid tasks: t2v-A14B, i2v-A14B, ti2v-5B"):
        load_pipeline("x2v", tiny_ckpts["t2v-A14B"])
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.bfloat16"):
        load_pipeline("t2v-A14B", tiny_ckpts["t2v-A14B"], device="cpu", dtype=torch.float16)
    with pytest.raises(CheckpointError, match="holds a t2v-A14B checkpoint .* but the task is ti2v-5B"):
        load_pipeline("ti2v-5B", tiny_ckpts["t2v-A14B"], device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_pipeline("t2v-A14B", tmp_path / "absent", device="cpu")

"""The generate command's memory warning: wanspec's planner for the flags, in flag words."""

from __future__ import annotations

import pytest

from wan_core.cli import build_parser, memory_plan, memory_warning


def _args(*argv: str):
    return build_parser().parse_args(["--ckpt_dir", "x", *argv])


def test_readme_4090_setup_of_ti2v_fits_24_gib() -> None:
    args = _args(
        "--task",
        "ti2v-5B",
        "--size",
        "1280*704",
        "--offload_model",
        "True",
        "--convert_model_dtype",
        "--t5_cpu",
    )
    assert memory_warning(args, 1, 24) is None


def test_a14b_on_one_small_gpu_is_warned_with_flags_that_fit() -> None:
    args = _args("--task", "t2v-A14B", "--offload_model", "False")
    warning = memory_warning(args, 1, 48)
    assert warning is not None and "48 GiB GPU" in warning
    assert "Would fit: --convert_model_dtype (≈34.0 GiB)" in warning  # the smallest change first
    assert "--dit_fsdp" in warning  # more ranks with FSDP also fit


def test_flags_map_to_the_spec_as_the_cli_runs_them() -> None:
    """convert_model_dtype and dit_fsdp are off unless given (the spec's defaults are on)."""
    est = memory_plan(_args("--task", "t2v-A14B"), 1, 80).estimate
    assert (est.modes.convert_model_dtype, est.modes.offload_model) == (False, True)
    est = memory_plan(_args("--task", "t2v-A14B", "--ulysses_size", "4"), 4, 80).estimate
    assert (est.layout.gpus, est.layout.ulysses, est.layout.dit_fsdp) == (4, 4, False)
    assert est.modes.offload_model is False  # upstream's torchrun default


def test_nothing_fits_says_so() -> None:
    args = _args("--task", "ti2v-5B", "--size", "1280*704")
    warning = memory_warning(args, 1, 8)
    assert warning is not None and "No layout fits" in warning


@pytest.mark.parametrize("image", [None, "img.png"])
def test_image_presence_reaches_the_estimate(image: str | None) -> None:
    argv = ["--task", "ti2v-5B", "--size", "1280*704"] + (["--image", image] if image else [])
    assert memory_plan(_args(*argv), 1, 80).estimate.image is (image is not None)

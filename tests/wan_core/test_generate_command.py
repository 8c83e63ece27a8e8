"""The generate command: upstream's flags and defaults, refusals with fixes, real MP4s from tiny checkpoints.

Tiny checkpoints are only cheap at tiny sizes, which no task supports; most runs here therefore
add a tiny size to the task table for the test (`tiny_sizes`), so the command and the pipelines
stay strict and run unchanged. One run uses a real supported size (with a stand-in decode).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import imageio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from wan_core.cli import build_parser, default_save_file, main, str2bool
from wan_core.pipelines import WanPipeline
from wanspec.tasks import TASKS, Size

REPO = Path(__file__).resolve().parents[2]
TINY = {"t2v-A14B": Size(32, 16), "i2v-A14B": Size(32, 16), "ti2v-5B": Size(64, 32)}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task also accepts its tiny size, for this test only."""
    for name, size in TINY.items():
        monkeypatch.setitem(TASKS, name, dataclasses.replace(TASKS[name], sizes=(*TASKS[name].sizes, size)))


def read_mp4(path: Path) -> tuple[int, dict, np.ndarray]:
    """(frame count from ffmpeg, imageio metadata, decoded frames [F, H, W, 3])."""
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    with imageio.get_reader(path) as reader:
        return frames, reader.get_meta_data(), np.stack(list(reader.iter_data()))


def test_defaults_are_upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANOPS_PROMPT_CACHE", raising=False)
    args = build_parser().parse_args([])
    assert vars(args) == dict(
        task="t2v-A14B", size="1280*720", frame_num=None, ckpt_dir=None, offload_model=None, ulysses_size=None,
        cfg_parallel=False, t5_fsdp=False, t5_cpu=False, dit_fsdp=False, save_file=None, prompt=None, use_prompt_extend=False,
        prompt_extend_method="local_qwen", prompt_extend_model=None, prompt_extend_target_lang="zh",
        base_seed=-1, image=None, sample_solver="unipc", sample_steps=None, sample_shift=None,
        sample_guide_scale=None, convert_model_dtype=False, negative_prompt="", fps=None,
        precision="exact",  # ours: the official numbers unless an opt-in lossy mode is asked for
        prompt_cache=None,  # ours: no prompt cache unless asked for (or WANOPS_PROMPT_CACHE)
    )


def test_str2bool_is_upstreams() -> None:
    assert [str2bool(v) for v in ("yes", "TRUE", "t", "Y", "1")] == [True] * 5
    assert [str2bool(v) for v in ("no", "False", "f", "N", "0")] == [False] * 5
    with pytest.raises(argparse.ArgumentTypeError, match="boolean value expected"):
        str2bool("maybe")
    assert build_parser().parse_args(["--offload_model", "False"]).offload_model is False


REFUSALS = [
    ([], "--ckpt_dir is required"),
    (["--task", "ti2v-5B"], "--size 1280\\*720 is not supported by ti2v-5B; use one of 704\\*1280, 1280\\*704"),
    (["--size", "1024*704"], "--size 1024\\*704 is not supported by t2v-A14B"),
    (["--frame_num", "80"], "--frame_num: frame count 80 is not of the form 4n\\+1; nearest valid: 77 or 81"),
    (["--sample_steps", "0"], "--sample_steps must be >= 1, got 0"),
    (["--sample_shift", "0"], "--sample_shift must be > 0, got 0.0"),
    (["--fps", "0"], "--fps must be >= 1"),
    (["--task", "i2v-A14B"], "i2v-A14B needs --image"),
    (["--image", "x.png"], "t2v-A14B does not take --image; use i2v-A14B or ti2v-5B"),
    (["--task", "ti2v-5B", "--size", "1280*704", "--image", "absent.png"], "--image absent.png: no such file"),
    # Multi-GPU layouts in one process: wanspec's rules, named by flag (issue 7).
    (["--ulysses_size", "8"], "--ulysses_size: ulysses 8 × 1 \\(cfgParallel off\\) does not equal gpus 1 \\(valid: 1\\)"),
    (["--dit_fsdp", "--t5_fsdp"], "--dit_fsdp: FSDP needs more than one GPU.*\n.*--t5_fsdp: FSDP needs more than one GPU"),
    (["--cfg_parallel"], "--cfg_parallel: CFG-parallel needs an even gpus, got 1"),
    (["--ulysses_size", "3"], "--ulysses_size: 3 does not divide the 40 attention heads of t2v-A14B"),
    (["--ulysses_size", "0"], "--ulysses_size must be >= 1"),
    (["--task", "s2v-14B"], "--task s2v-14B is out of scope for wanops"),
    (["--offload_model", "maybe"], "boolean value expected"),
    (["--sample_solver", "euler"], "invalid choice: 'euler'"),
    (["--audio", "x.wav"], "unrecognized arguments: --audio"),  # s2v's flags are out of scope (§8.2)
    (["--precision", "fp8", "--dit_fsdp"], "--precision fp8 cannot be combined with --dit_fsdp"),
    (["--precision", "fp8-full", "--dit_fsdp"], "--precision fp8-full cannot be combined with --dit_fsdp"),
    (["--precision", "int8"], "invalid choice: 'int8'"),
]


@pytest.mark.parametrize(("argv", "message"), REFUSALS)
def test_refuses_with_what_to_fix(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = [] if not argv or argv[0] == "--task" and argv[1] == "s2v-14B" else ["--ckpt_dir", "/ckpt"]
    with pytest.raises(SystemExit) as exit_info:
        main((ckpt if argv else []) + argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.usefixtures("tiny_sizes")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no FP8 GPU is")
def test_fp8_without_an_fp8_gpu_is_refused_before_loading(tiny_ckpts: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--task", "t2v-A14B", "--size", "32*16", "--ckpt_dir", str(tiny_ckpts["t2v-A14B"]), "--precision", "fp8"]
    assert main(argv) == 2
    assert "--precision: precision 'fp8' needs a GPU with FP8 tensor cores" in capsys.readouterr().err


def test_a_world_the_heads_cannot_use_is_refused_before_joining(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Checked from torchrun's WORLD_SIZE before any process group exists (issue 7)."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        main(["--ckpt_dir", "/ckpt"])
    assert "WORLD_SIZE (torchrun --nnodes × --nproc_per_node): 3 GPUs cannot split the 40 attention heads" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        main(["--ckpt_dir", "/ckpt", "--dit_fsdp", "--offload_model", "true"])
    assert "--offload_model true cannot be combined with --dit_fsdp" in capsys.readouterr().err


def test_default_save_file_is_upstreams() -> None:
    name = default_save_file("t2v-A14B", "1280*720", 1, "Two cats / a stage " + "x" * 60, datetime(2025, 7, 28, 9, 5, 3))
    assert name == "t2v-A14B_1280*720_1_Two_cats___a_stage_" + "x" * 31 + "_20250728_090503.mp4"


@pytest.mark.usefixtures("tiny_sizes")
@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_t2v_writes_a_deterministic_mp4(tiny_ckpts: dict[str, Path], tmp_path: Path, solver: str) -> None:
    decoded = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.mp4"
        argv = ["--task", "t2v-A14B", "--size", "32*16", "--ckpt_dir", str(tiny_ckpts["t2v-A14B"]),
                "--frame_num", "5", "--sample_steps", "3", "--base_seed", "11", "--sample_solver", solver,
                "--save_file", str(out)]
        assert main(argv) == 0
        frames, meta, pixels = read_mp4(out)
        assert frames == 5 and meta["size"] == (32, 16) and meta["fps"] == 16 and meta["codec"] == "h264"
        decoded.append(pixels)
    assert np.array_equal(decoded[0], decoded[1])


@pytest.mark.usefixtures("tiny_sizes")
def test_image_tasks_write_mp4s(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)).save(image)
    cases = [  # (task, size, expected (W, H) of the video, fps flag, expected fps)
        ("i2v-A14B", "32*16", (32, 16), [], 16),  # aspect 2:1 in 512 px → 32×16
        ("ti2v-5B", "64*32", (64, 32), ["--fps", "8"], 8),
    ]
    for task, size, expected, fps_flag, fps in cases:
        out = tmp_path / f"{task}.mp4"
        argv = ["--task", task, "--size", size, "--ckpt_dir", str(tiny_ckpts[task]), "--image", str(image),
                "--frame_num", "5", "--sample_steps", "2", "--base_seed", "3", "--save_file", str(out), *fps_flag]
        assert main(argv) == 0
        frames, meta, _ = read_mp4(out)
        assert (frames, meta["size"], meta["fps"]) == (5, expected, fps)


def test_real_size_and_default_file_name(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A supported size through the strict path, one frame and one step.

    The tiny VAE needs ~30 s to decode 832×480 on a shared CPU, so decoding is replaced by a
    mid-grey video of the shape the VAE returns; real decoding is covered at tiny sizes above, in
    the pipeline parity tests and in tests/wan_core/models.
    """
    def grey(self: WanPipeline, latent: torch.Tensor) -> torch.Tensor:
        _, f, h, w = latent.shape
        st, sh, sw = self.task.vae_stride
        return torch.zeros(3, st * (f - 1) + 1, h * sh, w * sw)

    monkeypatch.setattr(WanPipeline, "decode", grey)
    monkeypatch.chdir(tmp_path)
    argv = ["--task", "t2v-A14B", "--size", "832*480", "--ckpt_dir", str(tiny_ckpts["t2v-A14B"]),
            "--frame_num", "1", "--sample_steps", "1", "--prompt", "a fox/cat"]
    assert main(argv) == 0
    (written,) = tmp_path.glob("*.mp4")
    assert re.fullmatch(r"t2v-A14B_832\*480_1_a_fox_cat_\d{8}_\d{6}\.mp4", written.name)
    frames, meta, _ = read_mp4(written)
    assert (frames, meta["size"], meta["fps"]) == (1, (832, 480), 16)


def test_bad_files_exit_1_with_the_reason(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", str(tiny_ckpts["t2v-A14B"])]) == 1
    assert "holds a t2v-A14B checkpoint" in capsys.readouterr().err
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    assert main(["--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", str(tiny_ckpts["ti2v-5B"]),
                 "--image", str(text)]) == 1
    assert "is not a readable image" in capsys.readouterr().err


def test_module_entry_points() -> None:
    for module in ("wan_core.generate", "wan_core"):
        done = subprocess.run([sys.executable, "-m", module, "--frame_num", "6", "--ckpt_dir", "/c"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "nearest valid: 5 or 9" in done.stderr

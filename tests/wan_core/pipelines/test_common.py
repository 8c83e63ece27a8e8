"""Seeded noise, seeds, the expert switch, the progress callback, prompts and TI2V frame pinning."""

from __future__ import annotations

import logging
import shutil
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from wan_core.checkpoint import readahead
from wan_core.checkpoint.errors import CheckpointError
from wan_core.pipelines import WanPipeline, initial_noise, load_pipeline, resolve_seed
from wan_core.pipelines.common import FirstFrame, expert_for_step, to_tensor
from wan_core.sampling.schedule import make_schedule
from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, TASKS

HIGH, LOW = HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT


def test_noise_is_one_seeded_randn_of_upstreams_shape() -> None:
    """Same seed, shape and device type → the same numbers as upstream's single randn call (§7)."""
    shape = (16, 21, 60, 104)  # t2v-A14B 832*480, 81 frames
    got = initial_noise(shape, 42, "cpu")
    want = torch.randn(shape, dtype=torch.float32, generator=torch.Generator("cpu").manual_seed(42))
    assert got.dtype == torch.float32 and got.shape == shape
    assert torch.equal(got, want)
    assert not torch.equal(initial_noise(shape, 43, "cpu"), want)


def test_seed_resolution() -> None:
    assert resolve_seed(0) == 0 and resolve_seed(2**64 - 1) == 2**64 - 1
    drawn = {resolve_seed(-1) for _ in range(4)}
    assert all(0 <= s <= sys.maxsize for s in drawn) and len(drawn) > 1  # random.randint(0, sys.maxsize)
    for bad in (2**64, 1.5, "7", True):
        with pytest.raises(ValueError, match="seed"):
            resolve_seed(bad)


@pytest.mark.parametrize(("task", "high_steps", "low_steps"), [("t2v-A14B", 26, 14), ("i2v-A14B", 15, 25)])
def test_expert_switch_at_the_default_schedule(task: str, high_steps: int, low_steps: int) -> None:
    """The loop's choice over the default 40-step UniPC schedule: spec §6.1 (26 + 14, 15 + 25)."""
    spec = TASKS[task]
    schedule = make_schedule("unipc", spec.sample_steps, spec.sample_shift)
    chosen = [expert_for_step(spec, t, spec.guide_scale) for t in torch.from_numpy(schedule.timesteps)]
    low, high = spec.guide_scale
    assert chosen == [(HIGH, high)] * high_steps + [(LOW, low)] * low_steps
    if task == "t2v-A14B":  # the high-noise expert gets guide_scale[1] = 4.0 (§6.5, §13.11)
        assert chosen[0] == (HIGH, 4.0) and chosen[-1] == (LOW, 3.0)


def test_dense_model_has_no_switch() -> None:
    spec = TASKS["ti2v-5B"]
    assert expert_for_step(spec, 999, (5.0, 5.0)) == expert_for_step(spec, 1, (5.0, 5.0)) == ("", 5.0)


def test_progress_callback_reports_each_step_and_its_expert(pipelines: dict[str, WanPipeline]) -> None:
    pipe = pipelines["t2v-A14B"]
    opts = pipe.sampling_options(frame_num=1, sampling_steps=4, seed=0)  # t = 999, 972, 923, 800
    calls: list[tuple[int, int, str | None]] = []
    pipe.run("a fox", 32, 16, opts, callback=lambda *a: calls.append(a), decode=False)
    assert calls == [(1, 4, HIGH), (2, 4, HIGH), (3, 4, HIGH), (4, 4, LOW)]

    dense = pipelines["ti2v-5B"]
    calls.clear()
    dense.run("a fox", 32, 32, dense.sampling_options(frame_num=1, sampling_steps=2, seed=0),
              callback=lambda *a: calls.append(a), decode=False)
    assert calls == [(1, 2, None), (2, 2, None)]


def test_next_expert_files_read_ahead_after_the_first_step(
    pipelines: dict[str, WanPipeline], caplog: pytest.LogCaptureFixture
) -> None:
    """One expert at a time (here: the CPU): the low-noise expert's files go to the page cache from
    the first step on, so the switch reads memory; a dense model has nothing to read ahead."""
    pipe = pipelines["t2v-A14B"]
    low_files = readahead.dit_files(pipe.folder.dits[LOW])
    with caplog.at_level(logging.INFO, logger=readahead.__name__):
        pipe.run("a fox", 32, 16, pipe.sampling_options(frame_num=1, sampling_steps=4, seed=0), decode=False)
        for thread in threading.enumerate():
            if thread.name == "wanops-readahead":
                thread.join(timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.name == readahead.__name__]
    assert len(lines) == 1 and f"of {len(low_files)} files read" in lines[0] and low_files
    caplog.clear()
    dense = pipelines["ti2v-5B"]
    with caplog.at_level(logging.INFO, logger=readahead.__name__):
        dense.run("a fox", 32, 32, dense.sampling_options(frame_num=1, sampling_steps=2, seed=0), decode=False)
    assert not [r for r in caplog.records if r.name == readahead.__name__]


def test_same_seed_same_video_other_seed_other_video(pipelines: dict[str, WanPipeline]) -> None:
    pipe = pipelines["t2v-A14B"]
    runs = [pipe.run("a fox", 32, 16, pipe.sampling_options(frame_num=5, sampling_steps=2, seed=s), decode=False)
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_empty_negative_prompt_is_the_default_one(pipelines: dict[str, WanPipeline]) -> None:
    pipe = pipelines["t2v-A14B"]
    context, null = pipe.encode_prompts("a fox", "", offload_model=True)
    _, default = pipe.encode_prompts("a fox", DEFAULT_NEGATIVE_PROMPT, offload_model=True)
    assert torch.equal(null, default)
    # zero-padded to text_len rows after the n_i real ones (§3.3, §4.3)
    n = int((context[0].abs().sum(dim=1) > 0).sum())
    assert context.shape == (1, 512, 32) and 1 < n < 512 and not context[0, n:].any()


def test_ti2v_image_mode_pins_frame_zero(pipelines: dict[str, WanPipeline]) -> None:
    pipe = pipelines["ti2v-5B"]
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    latent = pipe.run_image("a fox", image, 64 * 32, pipe.sampling_options(frame_num=9, sampling_steps=2, seed=3),
                            decode=False)
    z = pipe.vae.encode(to_tensor(image)[None, :, None])[0]  # (48, 1, 2, 4)
    assert latent.shape == (48, 3, 2, 4)
    assert torch.equal(latent[:, :1], z)


def test_first_frame_tokens_get_timestep_zero() -> None:
    mask = torch.ones(48, 3, 4, 6)
    mask[:, 0] = 0
    ts = FirstFrame(z=torch.zeros(48, 1, 4, 6), mask=mask).timesteps(torch.tensor(900))
    tokens_per_frame = 2 * 3  # (4/2)·(6/2)
    assert ts.shape == (1, 3 * tokens_per_frame) and ts.dtype == torch.float32
    assert (ts[0, :tokens_per_frame] == 0).all() and (ts[0, tokens_per_frame:] == 900).all()


def test_the_vae_loads_while_a_text_mode_run_samples(tiny_ckpts, pipelines: dict[str, WanPipeline]) -> None:
    """Text mode needs the VAE only to decode: nothing is loaded before sampling, the load starts
    once the first step is queued, and the video is the one a VAE loaded up front decodes."""
    pipe = load_pipeline("ti2v-5B", tiny_ckpts["ti2v-5B"], device="cpu", dtype=torch.float32)
    loader = pipe._vae_loader
    assert loader._thread is None and loader._vae is None and loader.pending_bytes() > 0
    started: list[bool] = []
    opts = pipe.sampling_options(frame_num=5, sampling_steps=2, seed=4)
    video = pipe.run("a fox", 32, 32, opts, callback=lambda *a: started.append(loader._thread is not None))
    assert started == [True, True] and loader.pending_bytes() == 0
    eager = pipelines["ti2v-5B"]
    eager.vae  # noqa: B018  (loaded before its run)
    assert torch.equal(video, eager.run("a fox", 32, 32, eager.sampling_options(frame_num=5, sampling_steps=2, seed=4)))


def test_an_image_mode_run_loads_the_vae_before_sampling(tiny_ckpts) -> None:
    pipe = load_pipeline("ti2v-5B", tiny_ckpts["ti2v-5B"], device="cpu", dtype=torch.float32)
    loaded: list[bool] = []
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    pipe.run_image("a fox", image, 64 * 32, pipe.sampling_options(frame_num=5, sampling_steps=1, seed=3),
                   callback=lambda *a: loaded.append(pipe._vae_loader._vae is not None), decode=False)
    assert loaded == [True] and pipe._vae_loader._thread is None  # encoded with it: loaded in line


def test_a_vae_that_fails_to_load_on_the_thread_fails_the_decode(tiny_ckpts, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = load_pipeline("ti2v-5B", tiny_ckpts["ti2v-5B"], device="cpu", dtype=torch.float32)

    def out_of_memory(**kwargs: object) -> None:
        raise torch.OutOfMemoryError("no room for the VAE")

    monkeypatch.setattr(pipe._vae_loader.file, "load", out_of_memory)
    opts = pipe.sampling_options(frame_num=1, sampling_steps=1, seed=0)
    with pytest.raises(torch.OutOfMemoryError, match="no room for the VAE"):
        pipe.run("a fox", 32, 32, opts)


def test_the_wrong_vae_is_refused_when_the_pipeline_loads(tiny_ckpts, tmp_path) -> None:
    """The file is checked up front, though its weights load later: a bad folder loses no sampling."""
    folder = tmp_path / "ti2v"
    shutil.copytree(tiny_ckpts["ti2v-5B"], folder)
    shutil.copy(tiny_ckpts["t2v-A14B"] / "Wan2.1_VAE.pth", folder / "Wan2.2_VAE.pth")
    with pytest.raises(CheckpointError, match="is a Wan2.1 VAE"):
        load_pipeline("ti2v-5B", folder, device="cpu", dtype=torch.float32)

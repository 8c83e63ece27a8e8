"""Frames → MP4 as upstream's save_video: truncating uint8 conversion, H.264 at the task's fps."""

from __future__ import annotations

import threading
from pathlib import Path

import imageio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from imageio.plugins.ffmpeg import FfmpegFormat

from wan_core.video import save_video, to_frames

WRITER = FfmpegFormat.Writer  # imageio's ffmpeg writer: `_append_data` takes one frame


def test_uint8_conversion_truncates_and_clamps() -> None:
    # (v + 1) / 2 · 255 = 127.9 → 127 (upstream casts, it does not round); ±1.5 are clamped
    v = 127.9 / 255 * 2 - 1
    video = torch.tensor([v, -1.5, 1.5, 0.0]).view(1, 4, 1, 1).expand(3, 4, 1, 1)  # (3, F=4, 1, 1)
    frames = to_frames(video)
    assert frames.shape == (4, 1, 1, 3) and frames.dtype == np.uint8
    assert frames[:, 0, 0, 0].tolist() == [127, 0, 255, 127]


def test_to_frames_refuses_other_layouts() -> None:
    with pytest.raises(ValueError, match="video must be \\[3, F, H, W\\]"):
        to_frames(torch.zeros(5, 3, 16, 16))


def test_writes_an_h264_mp4_with_the_frames(tmp_path: Path) -> None:
    f, h, w = torch.meshgrid(torch.arange(9.0), torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 48), indexing="ij")
    video = torch.stack([0.8 * h, 0.8 * w, torch.sin(f / 3 + h + w)])  # (3, F, H, W): smooth, moving
    saved = save_video(video, tmp_path / "out.mp4", fps=24)
    path = saved.path
    assert (saved.frames, saved.width, saved.height) == (9, 48, 32)
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    with imageio.get_reader(path) as reader:
        meta = reader.get_meta_data()
        decoded = np.stack(list(reader.iter_data()))
    assert frames == 9 and meta["fps"] == 24 and meta["size"] == (48, 32) and meta["codec"] == "h264"
    assert decoded.shape == (9, 32, 48, 3)
    assert np.abs(decoded.astype(float) - to_frames(video).astype(float)).mean() < 4  # crf 10, yuv420p chroma: ~2.5; a wrong frame or axis: > 30


def test_a_failed_save_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder .*absent does not exist"):
        save_video(torch.zeros(3, 1, 16, 16), tmp_path / "absent" / "out.mp4", fps=16)


def read_frames(path: Path) -> np.ndarray:
    with imageio.get_reader(path) as reader:
        return np.stack(list(reader.iter_data()))


def test_pieces_in_order_make_the_same_video_as_the_whole(tmp_path: Path) -> None:
    """A decoder's stream (1 frame, then 4 at a time) is encoded to the frames of the whole tensor."""
    video = torch.rand(3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole = save_video(video, tmp_path / "whole.mp4", fps=16)
    streamed = save_video(iter(video.split([1, 4, 4], dim=1)), tmp_path / "streamed.mp4", fps=16)
    assert (streamed.frames, streamed.width, streamed.height) == (9, 48, 32)
    assert np.array_equal(read_frames(streamed.path), read_frames(whole.path))


def test_a_stream_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    def pieces():
        yield torch.zeros(3, 1, 16, 16)
        raise RuntimeError("decoder failed")

    with pytest.raises(RuntimeError, match="decoder failed"):
        save_video(pieces(), tmp_path / "out.mp4", fps=16)
    with pytest.raises(ValueError, match="no frames"):
        save_video(iter([]), tmp_path / "out.mp4", fps=16)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the partial one


def test_the_next_piece_decodes_while_ffmpeg_takes_the_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller is asked for piece 2 while piece 1 is still being written (ffmpeg's pipe blocks
    as long as x264 is busy): a caller that wrote the frames itself could not be."""
    asked_for_second = threading.Event()
    writes = []
    append = WRITER._append_data

    def slow_append(self, im, meta=None):  # blocks until the decoder has moved on
        if not writes:
            assert asked_for_second.wait(10), "piece 2 was not asked for while piece 1 was written"
        writes.append(im.shape)
        return append(self, im, meta)

    monkeypatch.setattr(WRITER, "_append_data", slow_append)

    def pieces():
        yield torch.zeros(3, 1, 16, 16)
        asked_for_second.set()
        yield torch.zeros(3, 2, 16, 16)

    saved = save_video(pieces(), tmp_path / "out.mp4", fps=16)
    assert saved.frames == 3 and len(writes) == 3 and len(read_frames(saved.path)) == 3


def test_an_encoder_error_is_raised_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, im, meta=None):
        raise OSError("ffmpeg: broken pipe")

    monkeypatch.setattr(WRITER, "_append_data", broken)
    endless = (torch.zeros(3, 1, 16, 16) for _ in iter(int, 1))  # the error must stop the caller too
    with pytest.raises(RuntimeError, match="writing the MP4 failed: ffmpeg: broken pipe"):
        save_video(endless, tmp_path / "out.mp4", fps=16)
    assert list(tmp_path.iterdir()) == []

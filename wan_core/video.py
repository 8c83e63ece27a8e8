"""Frames → MP4 exactly as upstream writes them (spec §7.4); shared by the CLI and the runner.

Matches `save_video` in `wan/utils/utils.py` of Wan-Video/Wan2.2@42bf4cf: clamp to [−1, 1], map to
[0, 1] as torchvision's `make_grid(normalize=True, value_range=(-1, 1))` does for one image,
× 255 and cast to uint8 (truncation, not rounding), then `imageio.get_writer(path, fps=fps,
codec='libx264', quality=8)` — imageio-ffmpeg's H.264, yuv420p, crf 10. Unlike upstream, a failed
write raises instead of being logged and ignored, and leaves no file at `path`.

Where upstream converts the whole fp32 video on the CPU and then encodes, we convert where the
frames are (on a GPU the same element-wise fp32 ops give the same bytes, and a quarter of them
cross to the host) and feed ffmpeg piece by piece, so a decoder's stream (`decode_stream`) is
encoded while its later frames still decode. The pipe to ffmpeg is written by a thread of its own
through a short queue: x264 takes frames only as fast as it encodes them, and a caller that wrote
them itself would leave the GPU idle for as long as each write blocks.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor

CODEC = "libx264"
QUALITY = 8  # imageio-ffmpeg quality 8 → crf = int((1 − 0.8)·51) = 10
FRAMES_PER_WRITE = 4  # a whole video is converted this many frames at a time (bounded extra memory)
PIECES_AHEAD = 4  # converted pieces waiting for ffmpeg: ≤ 16 frames, 43 MB at 1280×704


@dataclass(frozen=True)
class SavedVideo:
    """What `save_video` wrote (a stream's length and size are known only once it has ended)."""

    path: Path
    frames: int
    width: int
    height: int


def to_frames(video: Tensor) -> np.ndarray:
    """[3, F, H, W] in [−1, 1] → [F, H, W, 3] uint8, upstream's truncating conversion."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, F, H, W], got {list(video.shape)}")
    x = video.detach().float().clamp(-1.0, 1.0)
    x = (x + 1.0) / 2.0  # make_grid's (x − low) / (high − low) with (low, high) = (−1, 1)
    return (x * 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()  # (F, H, W, 3)


def save_video(video: Tensor | Iterable[Tensor], path: str | Path, fps: int) -> SavedVideo:
    """Write `video` as an H.264 MP4 at `fps`: a whole [3, F, H, W] tensor in [−1, 1], or its
    [3, f, H, W] pieces in frame order (each encoded as it comes). The file appears at `path`
    only once it is complete."""
    import imageio

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save {path}: folder {path.parent} does not exist")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pieces = video.split(FRAMES_PER_WRITE, dim=1) if isinstance(video, Tensor) else video
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # same suffix: ffmpeg picks the container by it
    frames, size = 0, (0, 0)
    try:
        # format named: without imageio-ffmpeg, imageio says to install it instead of trying TIFF
        with (imageio.get_writer(partial, format="FFMPEG", fps=fps, codec=CODEC, quality=QUALITY) as writer,
              _PipeWriter(writer) as pipe):
            for piece in pieces:
                pipe.put(to_frames(piece))
                frames, size = frames + piece.shape[1], (piece.shape[3], piece.shape[2])
        if frames == 0:
            raise ValueError("video has no frames")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return SavedVideo(path, frames, *size)


class _PipeWriter:
    """Hands converted pieces to a thread that writes them into ffmpeg's pipe, in order.

    `put` blocks only while `PIECES_AHEAD` pieces wait; an error of the writing thread is raised
    by the next `put` or at the end. Leaving on an error stops the thread without writing the rest.
    """

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=PIECES_AHEAD)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wanops-mp4-writer", daemon=True)

    def __enter__(self) -> _PipeWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while (piece := self._queue.get()) is not None and not self._stop.is_set():
                for frame in piece:
                    self._writer.append_data(frame)
        except BaseException as error:  # handed to the caller's thread
            self._error = error

    def put(self, piece: np.ndarray) -> None:
        while True:
            self._raise_error()
            try:
                self._queue.put(piece, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the MP4 failed: {self._error}") from self._error

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:  # the caller failed: drop what waits, write nothing more
            self._stop.set()
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        if kind is None:
            self._raise_error()

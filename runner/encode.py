"""Frames → MP4 exactly as upstream writes them (`wan_core.video`, spec §7.4), checked by reading
the file back before it is published: a broken encoder must fail the attempt, not put a video
with missing frames at the final key."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import Tensor

from wan_core.video import save_video


def probe(path: str | Path) -> tuple[int, int, int]:
    """(frames, width, height) of an MP4, decoded with the same ffmpeg that wrote it."""
    import imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        width, height = reader.get_meta_data()["size"]
        return reader.count_frames(), width, height


def encode_mp4(video: Tensor | Iterable[Tensor], path: str | Path, fps: int) -> Path:
    """Write `video` ([3, F, H, W] in [−1, 1], or its [3, f, H, W] pieces in frame order as a
    decoder streams them) and check that the file holds every frame fed, at the size fed."""
    saved = save_video(video, path, fps)
    want = (saved.frames, saved.width, saved.height)
    got = probe(saved.path)
    if got != want:
        raise RuntimeError(f"{saved.path}: encoder wrote (frames, width, height) {got}, expected {want}")
    return saved.path

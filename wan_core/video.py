"""Frames → MP4 exactly as upstream writes them (spec §7.4); shared by the CLI and the runner.

Matches `save_video` in `wan/utils/utils.py` of Wan-Video/Wan2.2@42bf4cf: clamp to [−1, 1], map to
[0, 1] as torchvision's `make_grid(normalize=True, value_range=(-1, 1))` does for one image,
× 255 and cast to uint8 (truncation, not rounding), then `imageio.get_writer(path, fps=fps,
codec='libx264', quality=8)` — imageio-ffmpeg's H.264, yuv420p, crf 10. Unlike upstream, a failed
write raises instead of being logged and ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CODEC = "libx264"
QUALITY = 8  # imageio-ffmpeg quality 8 → crf = int((1 − 0.8)·51) = 10


def to_frames(video: Tensor) -> np.ndarray:
    """[3, F, H, W] in [−1, 1] → [F, H, W, 3] uint8, upstream's truncating conversion."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, F, H, W], got {list(video.shape)}")
    x = video.detach().float().cpu().clamp(-1.0, 1.0)
    x = (x + 1.0) / 2.0  # make_grid's (x − low) / (high − low) with (low, high) = (−1, 1)
    return (x * 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (F, H, W, 3)


def save_video(video: Tensor, path: str | Path, fps: int) -> Path:
    """Write `video` ([3, F, H, W] in [−1, 1]) as an H.264 MP4 at `fps`; returns the path."""
    import imageio

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save {path}: folder {path.parent} does not exist")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = to_frames(video)
    # format named: without imageio-ffmpeg, imageio says to install it instead of trying TIFF
    with imageio.get_writer(path, format="FFMPEG", fps=fps, codec=CODEC, quality=QUALITY) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path

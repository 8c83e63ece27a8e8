"""GPU benchmark: where the streamed decode → MP4 of a run's end spends its time.

`bench/decode_to_mp4.py` times the whole phase; this takes it apart on the same random Wan2.2 VAE
and latent (TI2V-5B: 1280*704, 121 frames, 24 fps), host clock, each part `--runs` times:

- the process's first decode of a few latent frames, then again (what a run's one decode pays
  once: kernel loads, cuDNN plans), then a whole decode: the VAE alone;
- the whole decode with each piece converted to uint8 frames on the host (`to_frames`);
- libx264 alone on those frames (imageio-ffmpeg, crf 10, as `save_video`), at x264's default
  thread count and at `--threads` given ones;
- the streamed decode → MP4 (`save_video(decode_pieces)`), as runs do, and with ffmpeg started at
  a lower CPU priority (`nice`), which would help if x264's threads starved the decoding thread.

    python bench/mp4_parts.py --out bench.jsonl
    python bench/mp4_parts.py --tiny            # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio
import imageio_ffmpeg._io as ffmpeg_io
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae_decode import VAES, random_vae  # noqa: E402  (bench/vae_decode.py)

from wan_core.video import CODEC, QUALITY, save_video, to_frames  # noqa: E402

FPS = 24


def host_clock(fn: Callable[[], Any], runs: int, device: torch.device) -> list[float]:
    """`runs` host-clock timings of `fn`, GPU work included. No warm-up, unlike bench/timing.py's
    `timed` and decode_to_mp4.py's `wall`: the process's first decode is one of the parts."""
    out = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(round(time.perf_counter() - begin, 3))
    return out


def niced_ffmpeg(nice: int) -> Callable[..., subprocess.Popen]:
    """imageio-ffmpeg's Popen, starting ffmpeg at `nice` (0: as is)."""
    popen = subprocess.Popen

    def start(*args: Any, **kwargs: Any) -> subprocess.Popen:
        if nice:
            kwargs["preexec_fn"] = lambda: os.nice(nice)
        return popen(*args, **kwargs)

    return start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--warm-frames", type=int, default=3, help="latent frames of the first decode")
    parser.add_argument("--threads", nargs="*", default=["8", "16", "32"], help="x264 thread counts to try alone")
    parser.add_argument("--nice", type=int, default=10, help="ffmpeg's niceness in the last streamed variant")
    parser.add_argument("--tiny", action="store_true", help="tiny config, a tiny video on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()

    model_cls, config_cls, size, frames = VAES["2.2"]
    config = config_cls.tiny() if args.tiny else config_cls()
    size, frames = ("48*32", 9) if args.tiny else (size, frames)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    width, height = (int(v) for v in size.split("*"))
    st, sh, sw = config.stride
    latents = torch.randn((1, config.z_dim, (frames - 1) // st + 1, height // sh, width // sw), device=device,
                          generator=torch.Generator(device).manual_seed(1))
    vae = random_vae(model_cls, config, device, torch.bfloat16, seed=0).set_fast(torch.bfloat16)
    work = Path(tempfile.mkdtemp(prefix="mp4-parts-"))
    parts: dict[str, list[float]] = {}

    def part(name: str, fn: Callable[[], Any], runs: int = args.runs) -> None:
        parts[name] = host_clock(fn, runs, device)
        print(f"{name:>40}: {' '.join(f'{s:.2f}' for s in parts[name])} s", flush=True)

    def encode(frames_uint8: np.ndarray, params: list[str] | None) -> None:
        with imageio.get_writer(work / "alone.mp4", format="FFMPEG", fps=FPS, codec=CODEC, quality=QUALITY,
                                ffmpeg_params=params) as writer:
            for frame in frames_uint8:
                writer.append_data(frame)

    def streamed() -> None:
        save_video((piece[0] for piece in vae.decode_pieces(latents)), work / "streamed.mp4", FPS)

    with torch.inference_mode():
        first = latents[:, :, : args.warm_frames]
        part(f"first decode of {first.shape[2]} latent frames", lambda: list(vae.decode_pieces(first)), 1)
        part(f"again, {first.shape[2]} latent frames", lambda: list(vae.decode_pieces(first)), 1)
        part("whole decode", lambda: list(vae.decode_pieces(latents)))
        part("whole decode + uint8 frames on the host", lambda: [to_frames(p[0]) for p in vae.decode_pieces(latents)])
        video = np.concatenate([to_frames(p[0]) for p in vae.decode_pieces(latents)])
        part("x264 alone, default threads", lambda: encode(video, None))
        for threads in args.threads:
            part(f"x264 alone, -threads {threads}", lambda: encode(video, ["-threads", threads]))
        part("streamed decode -> MP4", streamed)
        ffmpeg_io.subprocess.Popen = niced_ffmpeg(args.nice)
        try:
            part(f"streamed, ffmpeg at nice {args.nice}", streamed)
        finally:
            ffmpeg_io.subprocess.Popen = subprocess.Popen
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cpus": os.cpu_count(), "size": size, "frames": frames,
            "mp4_mb": (work / "streamed.mp4").stat().st_size / 1e6, "parts_s": parts}
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

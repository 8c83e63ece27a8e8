"""GPU benchmark: the last phase of a run, final latent → MP4 on disk, three ways in one process.

- `diffusers_then_save`: the peer, diffusers' AutoencoderKLWan in bf16, then upstream's
  `save_video` (whole video to the host in fp32, uint8 conversion on the CPU, imageio-ffmpeg's
  libx264 at crf 10), the writer upstream and we both use.
- `ours_then_save`: our VAE fast path (the pipelines' bf16 setting), then the same upstream save:
  what our generate command did before it streamed.
- `ours_streamed`: what it does now: `save_video(vae.decode_pieces(...))`, each latent frame's
  video frames converted to uint8 on the GPU and handed to ffmpeg while the next ones decode.

Wall time on the host clock (the phase ends when ffmpeg has closed the file), median of `--runs`
after one warm-up each; on CUDA also the memory each way allocates at its peak beyond the resident
weights and latents (`wanspec.memory` fits its decode phase on ours' streamed peak). The two MP4s
of ours must hold the same frames (read back and compared; exit status 1 otherwise). Random
weights decode to noise-like video, the slowest content for x264 at crf 10: a real video encodes
faster, so these are upper bounds of the encode's share.

    python bench/decode_to_mp4.py --vae 2.1 --out bench.jsonl   # t2v/i2v-A14B: 1280*720, 81 frames, 16 fps
    python bench/decode_to_mp4.py --vae 2.2 --out bench.jsonl   # ti2v-5B: 1280*704, 121 frames, 24 fps
    python bench/decode_to_mp4.py --vae 2.1 --tiny              # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imageio
import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vae_decode import VAES, random_vae  # noqa: E402  (bench/vae_decode.py)

from wan_core.testing.diffusers_vae import diffusers_vae, to_diffusers_state_dict  # noqa: E402
from wan_core.video import CODEC, QUALITY, save_video, to_frames  # noqa: E402

FPS = {"2.1": 16, "2.2": 24}  # the tasks' frame rates (spec §1.2)


def upstream_save(video: Tensor, path: Path, fps: int) -> None:
    """Upstream's order: the whole [3, F, H, W] video to the host in fp32, converted there, then encoded."""
    frames = to_frames(video.float().cpu())  # on the host, where the tensor now is
    with imageio.get_writer(path, format="FFMPEG", fps=fps, codec=CODEC, quality=QUALITY) as writer:
        for frame in frames:
            writer.append_data(frame)


def wall(fn: Callable[[], None], runs: int, device: torch.device) -> tuple[list[float], float | None]:
    """One warm-up, then `runs` host-clock timings of `fn` (which ends with the file closed); and
    on CUDA the GiB that `fn` allocated at its peak beyond what was allocated before it."""
    fn()
    seconds = []
    extra = None
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        begin = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - begin)
        if device.type == "cuda":
            extra = (torch.cuda.max_memory_allocated(device) - before) / 2**30
    return seconds, extra


def read_frames(path: Path) -> np.ndarray:
    with imageio.get_reader(path, format="FFMPEG") as reader:
        return np.stack(list(reader.iter_data()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", choices=sorted(VAES), required=True)
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--tiny", action="store_true", help="tiny config, a tiny video on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()

    model_cls, config_cls, size, frames = VAES[args.vae]
    config = config_cls.tiny() if args.tiny else config_cls()
    size, frames = ("48*32", 5) if args.tiny else (size, frames)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    width, height = (int(v) for v in size.split("*"))
    st, sh, sw = config.stride
    shape = (1, config.z_dim, (frames - 1) // st + 1, height // sh, width // sw)
    fps = FPS[args.vae]
    latents = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(1))

    import diffusers

    ours = random_vae(model_cls, config, device, torch.bfloat16, seed=0).set_fast(torch.bfloat16)
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    raw = (latents / inv_std + mean).to(torch.bfloat16)  # diffusers decodes un-normalised latents (§5.5)
    peer = diffusers_vae(ours, to_diffusers_state_dict(ours))  # the same bf16 tensors
    work = Path(tempfile.mkdtemp(prefix="decode-to-mp4-"))
    paths = {name: work / f"{name}.mp4" for name in ("diffusers_then_save", "ours_then_save", "ours_streamed")}

    def streamed() -> None:
        save_video((piece[0] for piece in ours.decode_pieces(latents)), paths["ours_streamed"], fps)

    with torch.inference_mode():
        ways: dict[str, Callable[[], None]] = {
            "diffusers_then_save": lambda: upstream_save(peer.decode(raw).sample[0], paths["diffusers_then_save"], fps),
            "ours_then_save": lambda: upstream_save(ours.decode(latents)[0], paths["ours_then_save"], fps),
            "ours_streamed": streamed,
        }
        info: dict[str, object] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "diffusers_version": diffusers.__version__,
            "vae": f"Wan{args.vae}" + (" (tiny config)" if args.tiny else ""),
            "size": size, "frames": frames, "fps": fps,
        }
        # ours' weights, so that a peak of ours reads as weights + extra (what wanspec.memory fits)
        info["ours_weights_gib"] = sum(t.numel() * t.element_size() for t in ours.state_dict().values()) / 2**30
        for name, fn in ways.items():
            seconds, extra = wall(fn, args.runs, device)
            info[name] = {"median_s": statistics.median(seconds), "runs_s": seconds,
                          "mp4_mb": paths[name].stat().st_size / 1e6, "peak_extra_gib": extra}
            peak = f", {extra:.2f} GiB allocated at the peak beyond the resident weights and latents" if extra is not None else ""
            print(f"{name:>20}: median {statistics.median(seconds):.2f} s ({', '.join(f'{s:.2f}' for s in seconds)}), "
                  f"{info[name]['mp4_mb']:.1f} MB{peak}", flush=True)
    same = np.array_equal(read_frames(paths["ours_then_save"]), read_frames(paths["ours_streamed"]))
    info["streamed_frames_equal"] = same
    print(f"streamed MP4 holds the same frames as decode-then-save: {same}")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

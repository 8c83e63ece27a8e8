"""GPU benchmark: one full-size VAE encode as the image tasks run it, ours vs diffusers, one process.

I2V-A14B encodes its conditioning video with the Wan2.1 VAE: the image, then F − 1 zero frames
(81 at 1280×720); TI2V-5B encodes the image alone (1 frame, 1280×704) with the Wan2.2 VAE. The
input is that video with a random image. Our exact fp32 encode is the reference; diffusers'
`AutoencoderKLWan` in bf16 (same weight tensors, with and without cuDNN's autotuner) and our fast
path (`ChunkedVAE.set_fast`) are scored against it by the relative L2 error and cosine of the
normalised latents. Times: median of the warm runs (CUDA events); peaks: `max_memory_allocated`.

    python bench/vae_encode.py --vae 2.1 --out bench.jsonl      # I2V: 1280*720, 81 frames
    python bench/vae_encode.py --vae 2.2 --out bench.jsonl      # TI2V: 1280*704, 1 frame
    python bench/vae_encode.py --vae 2.1 --tiny                 # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402  (bench/timing.py)
from vae_decode import VAES, cudnn_autotune, random_vae  # noqa: E402  (bench/vae_decode.py)

from wan_core.testing.diffusers_vae import diffusers_vae, to_diffusers_state_dict  # noqa: E402

FRAMES = {"2.1": 81, "2.2": 1}  # what i2v-A14B / ti2v-5B encode (spec §6)
MAX_REL_L2 = 0.02  # bf16 activations: ~1e-2 is expected, more means a wrong fast path


def score(latents: Tensor, reference: Tensor) -> dict[str, float]:
    a, b = latents.double().flatten(), reference.double().flatten()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0)
    return {"rel_l2": float((a - b).norm() / b.norm()), "cosine": float(cosine)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", choices=sorted(VAES), required=True)
    parser.add_argument("--size", help="W*H in pixels (default: the task's 720p-class size)")
    parser.add_argument("--frames", type=int, help="frames, 4n+1 (default: 81 for 2.1 as i2v, 1 for 2.2 as ti2v)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up (≥ 2)")
    parser.add_argument("--tiny", action="store_true", help="tiny config, a tiny video on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")

    model_cls, config_cls, size, _ = VAES[args.vae]
    config = config_cls.tiny() if args.tiny else config_cls()
    size, frames = args.size or ("48*32" if args.tiny else size), args.frames or (5 if args.tiny else FRAMES[args.vae])
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    width, height = (int(v) for v in size.split("*"))

    import diffusers

    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "diffusers_version": diffusers.__version__,
        "vae": f"Wan{args.vae}" + (" (tiny config)" if args.tiny else ""),
        "op": "encode",
        "size": size,
        "frames": frames,
    }
    for key, value in info.items():
        print(f"{key:>17}: {value}")

    video = torch.zeros(1, 3, frames, height, width, device=device)  # the image, then zero frames
    gen = torch.Generator(device).manual_seed(1)
    video[:, :, 0] = torch.rand(1, 3, height, width, device=device, generator=gen) * 2 - 1

    ours = random_vae(model_cls, config, device, torch.float32, seed=0)
    with torch.inference_mode():
        reference, sec, peak = timed(lambda: ours.encode(video), 1, device)
    info["fp32_exact"] = {"median_s": statistics.median(sec), "runs_s": sec, "peak_gib": peak}
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)

    ours.to(torch.bfloat16)
    ref = diffusers_vae(ours, to_diffusers_state_dict(ours))  # the same bf16 tensors
    pixels = video.to(torch.bfloat16)
    for name, autotune in (("diffusers_bf16", False), ("diffusers_bf16_autotune", True)):
        with torch.inference_mode(), cudnn_autotune(autotune):
            mu, sec, peak = timed(lambda: ref.encode(pixels).latent_dist.mode(), args.runs, device)
        latents = (mu - mean.cpu()) * inv_std.cpu()  # diffusers returns raw μ (§2.5)
        info[name] = {"median_s": statistics.median(sec), "runs_s": sec, "peak_gib": peak, **score(latents, reference)}
    del ref

    ours.set_fast(torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with torch.inference_mode():
        latents, sec, peak = timed(lambda: ours.encode(video), args.runs, device)
    info["fast_variants"] = {"fast": {"autotune": ours.autotune, "frames_per_piece": ours.frames_per_piece}}
    info["fast"] = {"median_s": statistics.median(sec), "runs_s": sec, "peak_gib": peak, **score(latents, reference)}
    info["ok"] = info["fast"]["rel_l2"] <= MAX_REL_L2

    for name in ("fp32_exact", "diffusers_bf16", "diffusers_bf16_autotune", "fast"):
        r = info[name]
        peak_txt = "n/a on CPU" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        quality = f", rel L2 {r['rel_l2']:.2e} vs fp32" if "rel_l2" in r else ""
        print(f"{name:>23}: median {r['median_s']:.3f} s, peak {peak_txt}{quality}")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0 if info["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

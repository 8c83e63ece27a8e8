"""GPU benchmark: one full-size VAE decode, ours vs diffusers' AutoencoderKLWan, in one process.

Builds a random-weight Wan2.1 or Wan2.2 VAE directly on the GPU and decodes one random normalised
latent of the shape the task produces; diffusers' model gets the very same weight tensors (renamed,
not copied) and the same latent. Times are the median of the warm runs (CUDA events), peaks the
`max_memory_allocated` of the timed runs (reset between models).

Parity (default): ours and diffusers in one dtype; the cosine of the two videos must be ≥ 0.9999
(exit status 1 otherwise). fp32 is the official precision (spec §5.5; TF32 convolutions by
PyTorch default, printed below).

`--fast`: our fast path (`ChunkedVAE.set_fast`: bf16, channels-last, fused RMS-norm + SiLU, frame
pieces) against the peer's fastest setting, diffusers in bf16 (with and without
cuDNN's autotuner). Every video is scored against our exact fp32 decode of the same latent by PSNR
over the [−1, 1] range (10·log10(2² / MSE)); our fast path must reach 40 dB (exit status 1
otherwise). Variants of the fast path (cuDNN's autotuner on, whole 4-frame chunks) are timed too.

    python bench/vae_decode.py --vae 2.1 --size 1280*720 --frames 81 --out bench.jsonl
    python bench/vae_decode.py --vae 2.2 --size 1280*704 --frames 121 --out bench.jsonl
    python bench/vae_decode.py --vae 2.2 --dtype bfloat16 --out bench.jsonl
    python bench/vae_decode.py --vae 2.1 --fast --out bench.jsonl
    python bench/vae_decode.py --vae 2.1 --tiny [--fast]   # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402  (bench/timing.py)

from wan_core.models.vae2_1 import Wan21VAE, Wan21VAEConfig  # noqa: E402
from wan_core.models.vae2_2 import Wan22VAE, Wan22VAEConfig  # noqa: E402
from wan_core.testing.diffusers_vae import diffusers_vae, to_diffusers_state_dict  # noqa: E402

# vae → (model class, config class, default size, default frames); spec §1.2, §1.4
VAES = {
    "2.1": (Wan21VAE, Wan21VAEConfig, "1280*720", 81),  # t2v-A14B / i2v-A14B
    "2.2": (Wan22VAE, Wan22VAEConfig, "1280*704", 121),  # ti2v-5B
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MIN_COSINE = 0.9999
MIN_PSNR = 40.0
# --fast: our variants, name → `set_fast` options; the first is the one the pipelines use.
FAST_VARIANTS = {
    "fast": {"autotune": False, "frames_per_piece": 2},
    "fast_whole_chunks": {"autotune": False, "frames_per_piece": None},
    "fast_autotune": {"autotune": True, "frames_per_piece": 2},
}


def random_vae(model_cls: type[Wan21VAE] | type[Wan22VAE], config: Wan21VAEConfig | Wan22VAEConfig,
               device: torch.device, dtype: torch.dtype, seed: int) -> Wan21VAE | Wan22VAE:
    """Weights drawn on the device (meta → to_empty → normal_): conv weights N(0, (0.5/√fan_in)²),
    zero biases, unit gains, so activations stay O(1) and few output pixels hit the [−1, 1] clamp."""
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to_empty(device=device).eval().requires_grad_(False)
    gen = torch.Generator(device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, 0.5 / math.sqrt(p[0].numel()), generator=gen)
    return model.to(dtype)


def psnr(video: Tensor, reference: Tensor) -> float:
    """PSNR in dB over the [−1, 1] range (peak-to-peak 2), float64 accumulation."""
    mse = float(((video.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@contextmanager
def cudnn_autotune(on: bool) -> Iterator[None]:
    """`torch.backends.cudnn.benchmark` set for the block, put back after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def result(video: Tensor, seconds: list[float], peak: float | None, reference: Tensor) -> dict[str, object]:
    return {"median_s": statistics.median(seconds), "runs_s": seconds, "peak_gib": peak,
            "psnr_db": psnr(video, reference), "max_abs": float((video - reference).abs().max())}


def fast_bench(args: argparse.Namespace, model_cls, config, latents: Tensor, device: torch.device) -> dict:
    """--fast: exact fp32 reference, diffusers bf16 (two cuDNN settings), our fast variants."""
    ours = random_vae(model_cls, config, device, torch.float32, seed=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    begin = time.perf_counter()
    with torch.inference_mode():
        reference = ours.decode(latents).cpu()  # one cold run: the reference, timed only roughly
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    out: dict[str, object] = {"fp32_exact": {"median_s": time.perf_counter() - begin, "peak_gib": peak,
                                             "note": "one cold run, host clock, output copy included"}}
    ours.to(torch.bfloat16)
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    raw = (latents / inv_std + mean).to(torch.bfloat16)  # diffusers decodes un-normalised latents (§5.5)
    ref = diffusers_vae(ours, to_diffusers_state_dict(ours))  # the same bf16 tensors
    for name, autotune in (("diffusers_bf16", False), ("diffusers_bf16_autotune", True)):
        with torch.inference_mode(), cudnn_autotune(autotune):
            video, sec, peak = timed(lambda: ref.decode(raw).sample, args.runs, device)
        out[name] = result(video, sec, peak, reference)
        del video
    del ref
    for name, options in FAST_VARIANTS.items():
        ours.set_fast(torch.bfloat16, **options)  # weights already bf16: only the options change
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with torch.inference_mode():
            video, sec, peak = timed(lambda: ours.decode(latents), args.runs, device)
        out[name] = result(video, sec, peak, reference)
        del video
    out["video_std"] = float(reference.std())  # random weights: shows the video is not ~0 or all clamped
    out["clamped_fraction"] = float((reference.abs() >= 1.0).float().mean())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", choices=sorted(VAES), required=True)
    parser.add_argument("--size", help="W*H in pixels (default: the task's 720p-class size)")
    parser.add_argument("--frames", type=int, help="video frames, 4n+1 (default 81 for 2.1, 121 for 2.2)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="float32 = official")
    parser.add_argument("--fast", action="store_true", help="our fast path vs diffusers bf16, PSNR vs our fp32")
    parser.add_argument("--runs", type=int, default=2, help="timed runs after one warm-up (≥ 2)")
    parser.add_argument("--tiny", action="store_true", help="tiny config, a tiny video on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2")

    model_cls, config_cls, size, frames = VAES[args.vae]
    config = config_cls.tiny() if args.tiny else config_cls()
    size, frames = args.size or ("48*32" if args.tiny else size), args.frames or (5 if args.tiny else frames)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = DTYPES[args.dtype]
    width, height = (int(v) for v in size.split("*"))
    st, sh, sw = config.stride
    if (frames - 1) % st or height % sh or width % sw:
        raise SystemExit(f"size {size} / {frames} frames do not fit the VAE stride {config.stride}")
    shape = (1, config.z_dim, (frames - 1) // st + 1, height // sh, width // sw)

    import diffusers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "diffusers_version": diffusers.__version__,
        "vae": f"Wan{args.vae}" + (" (tiny config)" if args.tiny else ""),
        "size": size,
        "frames": frames,
        "latent": list(shape),
        "dtype": "fast (bfloat16)" if args.fast else args.dtype,
    }
    for key, value in info.items():
        print(f"{key:>17}: {value}")

    gen = torch.Generator(device).manual_seed(1)
    latents = torch.randn(shape, device=device, generator=gen)  # normalised latents, fp32 as the sampler hands them
    if args.fast:
        info["fast_variants"] = FAST_VARIANTS  # `set_fast` options of each variant below
        info.update(fast_bench(args, model_cls, config, latents, device))
        for name in ("fp32_exact", "diffusers_bf16", "diffusers_bf16_autotune", *FAST_VARIANTS):
            r = info[name]
            peak = "n/a on CPU" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
            quality = f", PSNR {r['psnr_db']:.1f} dB vs fp32" if "psnr_db" in r else ""
            print(f"{name:>23}: median {r['median_s']:.3f} s, peak {peak}{quality}")
        info["ok"] = info["fast"]["psnr_db"] >= MIN_PSNR
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(info) + "\n")
        return 0 if info["ok"] else 1

    # 1. ours
    ours = random_vae(model_cls, config, device, dtype, seed=0)
    with torch.inference_mode():
        video_ours, sec_ours, peak_ours = timed(lambda: ours.decode(latents), args.runs, device)
    state = to_diffusers_state_dict(ours)  # the same tensors under diffusers' names
    mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in ours.scale)
    raw = (latents / inv_std + mean).to(dtype)  # diffusers decodes un-normalised latents (§5.5)
    ref = diffusers_vae(ours, state)
    del ours, state
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 2. diffusers, same weights, same latent
    with torch.inference_mode():
        video_ref, sec_ref, peak_ref = timed(lambda: ref.decode(raw).sample, args.runs, device)
    del ref

    # float64: an fp32 reduction over ~10^8 values drifts far enough to report a cosine above 1.
    cosine = float(
        torch.nn.functional.cosine_similarity(
            video_ours.flatten().double(), video_ref.flatten().double(), dim=0
        )
    )
    max_abs = float((video_ours - video_ref).abs().max())
    info.update(
        ours={"median_s": statistics.median(sec_ours), "runs_s": sec_ours, "peak_gib": peak_ours},
        diffusers={"median_s": statistics.median(sec_ref), "runs_s": sec_ref, "peak_gib": peak_ref},
        cosine=cosine,
        max_abs=max_abs,
        video_std=float(video_ref.std()),  # random weights: shows the video is not ~0 or all clamped
        clamped_fraction=float((video_ref.abs() >= 1.0).float().mean()),
        ok=cosine >= MIN_COSINE,
    )
    for name in ("ours", "diffusers"):
        r = info[name]
        peak = "n/a on CPU" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        print(f"{name:>17}: median {r['median_s']:.3f} s over {args.runs} runs, peak {peak}")
    verdict = "OK" if info["ok"] else f"BELOW {MIN_COSINE}"
    spread = f"video std {info['video_std']:.3f}, {info['clamped_fraction']:.1%} clamped"
    print(f"{'cosine':>17}: {cosine:.7f} (max abs {max_abs:.2e}; {spread}) {verdict}")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0 if info["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

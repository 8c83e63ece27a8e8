"""GPU smoke benchmark: one full-size DiT forward, ours vs diffusers' WanTransformer3DModel.

Builds a random-weight DiT (T2V-A14B expert or TI2V-5B) directly on the GPU in bf16, runs one
forward (one CFG branch, batch 1, a random 512×4096 text context) with our `WanModel` as the
pipelines run it (per-block torch.compile on CUDA; `--no-compile` for eager), then hands the very
same tensors to diffusers' model (eager, its fastest lossless setting) and runs it; reports the
median of the warm runs (CUDA events), the peak memory of each, our first-call (compile) time and
the cosine similarity of the two outputs (≥ 0.9999 required; exit status 1 otherwise). Diffusers
runs torch SDPA with its fastest kernel (cuDNN where it works); ours runs the attention backend
the pipelines pick (`--attention` forces one), then is timed again with each backend of
`--compare-attention` (default: SDPA under the same kernel as diffusers), so every kernel's
figure comes from one process.

    python bench/dit_forward.py --model a14b --size 1280*720 --frames 81 --out bench.jsonl
    python bench/dit_forward.py --model 5b --size 1280*704 --frames 121 --out bench.jsonl
    python bench/dit_forward.py --model 5b --tiny            # CPU check that the script runs
    python bench/dit_forward.py --model a14b --quant fp8     # also the lossy FP8 mode vs exact
    python bench/dit_forward.py --model a14b --attention flash4 --compare-attention flashinfer sdpa

With `--quant`, ours is then rebuilt from the same weights in that lossy mode (`quantize_dit`,
compiled) and timed too; its quality is the cosine / PSNR of its output against our exact output.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402  (bench/timing.py)

from wan_core.models.dit import DiTConfig, WanModel  # noqa: E402
from wan_core.ops.compile import compile_blocks  # noqa: E402
from wan_core.ops.attention import BACKENDS, attention_backend, select_backend  # noqa: E402
from wan_core.ops.quant import QUANT_MODES, quantize_dit  # noqa: E402
from wan_core.testing.diffusers_wan import diffusers_wan  # noqa: E402

# model → (config flavor, tiny flavor, VAE z_dim, VAE stride (t, h, w), default size, default frames); spec §1.2, §1.4
MODELS = {
    "a14b": ("t2v-A14B", "tiny-t2v", 16, (4, 8, 8), "1280*720", 81),
    "5b": ("ti2v-5B", "tiny-ti2v", 48, (4, 16, 16), "1280*704", 121),
}
SDPA_PREFERENCE = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
MIN_COSINE = 0.9999


def latent_shape(z_dim: int, stride: tuple[int, int, int], size: str, frames: int) -> tuple[int, int, int, int]:
    """'W*H' and a 4n+1 frame count → [z, (F−1)/4+1, H/s, W/s] (spec §1.4)."""
    width, height = (int(v) for v in size.split("*"))
    st, sh, sw = stride
    if (frames - 1) % st or height % (2 * sh) or width % (2 * sw):
        raise SystemExit(f"size {size} / {frames} frames do not fit the VAE stride {stride} and 2×2 patches")
    return z_dim, (frames - 1) // st + 1, height // sh, width // sw


class Workload(NamedTuple):
    """What a bench run of one model measures: config, video size, device, latent shape, tokens."""

    flavor: str
    cfg: DiTConfig
    size: str
    frames: int
    device: torch.device
    shape: tuple[int, int, int, int]
    tokens: int


def workload(model: str, size: str | None, frames: int | None, tiny: bool) -> Workload:
    """`model`'s config and default 720p-class size and frames unless given; `tiny`: the tiny
    config at 64×64×5 on the CPU (a check that a script runs), else CUDA when there is one."""
    flavor, tiny_flavor, z_dim, stride, default_size, default_frames = MODELS[model]
    cfg = DiTConfig.flavor(tiny_flavor if tiny else flavor)
    size, frames = size or ("64*64" if tiny else default_size), frames or (5 if tiny else default_frames)
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    shape = latent_shape(z_dim, stride, size, frames)
    return Workload(flavor, cfg, size, frames, device, shape, shape[1] * (shape[2] // 2) * (shape[3] // 2))


def diffusers_peer(cfg: DiTConfig, state: dict[str, Tensor], device: torch.device) -> torch.nn.Module:
    """diffusers' `WanTransformer3DModel` on the same tensors (assigned, not copied), with its
    `_keep_in_fp32_modules` in fp32 as its `from_pretrained` keeps them: a like-for-like peer."""
    ref = diffusers_wan(cfg, state, device)
    for name, module in ref.named_modules():
        if any(part in ref._keep_in_fp32_modules for part in name.split(".")):
            module.float()
    return ref


def random_dit(cfg: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int) -> WanModel:
    """Weights drawn on the device (meta → to_empty → normal_), ~100× faster than default init."""
    with torch.device("meta"):
        model = WanModel(cfg)
    model = model.to(dtype).to_empty(device=device).eval().requires_grad_(False)  # no fp32 copy on the device
    gen = torch.Generator(device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return model


def pick_sdpa(cfg: DiTConfig, tokens: int, device: torch.device, dtype: torch.dtype) -> SDPBackend | None:
    """First SDPA kernel of SDPA_PREFERENCE that runs both attention shapes of the model."""
    if device.type != "cuda":
        return None
    shapes = [(tokens, tokens), (tokens, cfg.text_len)]
    for backend in SDPA_PREFERENCE:
        try:
            with sdpa_kernel(backend):
                for lq, lk in shapes:
                    q = torch.randn(1, cfg.num_heads, lq, cfg.head_dim, device=device, dtype=dtype)
                    k = torch.randn(1, cfg.num_heads, lk, cfg.head_dim, device=device, dtype=dtype)
                    torch.nn.functional.scaled_dot_product_attention(q, k, k)
            return backend
        except RuntimeError:
            continue
        finally:
            q = k = None
            torch.cuda.empty_cache()
    raise SystemExit(f"none of {[b.name for b in SDPA_PREFERENCE]} runs these attention shapes")


@contextlib.contextmanager
def attention_kernels(sdpa: SDPBackend | None, ours: str | None = "sdpa") -> Iterator[None]:
    """SDPA held to `sdpa` (diffusers calls it directly) and our backend forced to `ours` (None:
    chosen as the pipelines choose it) on CUDA; the exact math path on CPU."""
    if sdpa is None:
        yield
        return
    with sdpa_kernel(sdpa), (attention_backend(ours) if ours else contextlib.nullcontext()):
        yield


def rel_l2(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (fp32 sums over 10⁸ elements drift by ~1e-4)."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def fp32_reference(cfg: DiTConfig, state: dict[str, Tensor], x: Tensor, t: Tensor, context: Tensor, device: torch.device) -> Tensor:
    """Ours with the bf16 weights upcast to fp32 and TF32 off: what both bf16 runs approximate.

    Converts `state` in place, tensor by tensor, so the bf16 and fp32 copies never coexist whole.
    """
    for key in list(state):
        state[key] = state[key].float()
    with torch.device("meta"):
        model = WanModel(cfg)
    model.load_state_dict(state, assign=True)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            return model(x.float(), t, context.float()).float().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def psnr(a: Tensor, reference: Tensor) -> float:
    """PSNR in dB of `a` against `reference`, peak = the reference's max |value|."""
    mse = float((a.double() - reference.double()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(float(reference.double().abs().max()) ** 2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--size", help="W*H in pixels (default: the model's 720p-class size)")
    parser.add_argument("--frames", type=int, help="video frames, 4n+1 (default 81 for a14b, 121 for 5b)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up (≥ 3)")
    parser.add_argument("--tiny", action="store_true", help="tiny config and a few tokens on CPU: checks the script")
    parser.add_argument("--out", type=Path, help="append one JSON line with the results here")
    parser.add_argument("--no-compile", action="store_true", help="run our blocks eagerly (default: compiled on CUDA)")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument(
        "--fp32-reference",
        action="store_true",
        help="also run ours with the same weights in fp32 (no TF32) and report each bf16 output's distance to it",
    )
    reference.add_argument("--quant", choices=QUANT_MODES, help="also time ours in this lossy mode and measure its cost against exact")
    exact = sorted(name for name, b in BACKENDS.items() if b.exact)
    parser.add_argument("--attention", choices=exact, help="force our exact attention backend (default: the pipelines' choice)")
    parser.add_argument("--compare-attention", nargs="*", choices=exact, default=["sdpa"],
                        help="also time ours with each of these exact backends, in the same process (CUDA)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3")

    flavor, cfg, size, frames, device, shape, tokens = workload(args.model, args.size, args.frames, args.tiny)
    dtype = torch.bfloat16

    import diffusers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers_version": diffusers.__version__,
        "model": flavor + (" (tiny config)" if args.tiny else ""),
        "size": size,
        "frames": frames,
        "latent": list(shape),
        "tokens": tokens,
        "dtype": str(dtype).removeprefix("torch."),
    }
    sdpa = pick_sdpa(cfg, tokens, device, dtype)
    if sdpa:
        probe = torch.empty(1, tokens, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype)
        ours_attention = select_backend(probe, probe, probe, args.attention).name
        del probe
        info["attention"] = {"ours": ours_attention, "diffusers": f"torch SDPA {sdpa.name}"}
    else:
        ours_attention = None
        info["attention"] = "CPU: ours math (fp32), diffusers native SDPA"
    for key, value in info.items():
        print(f"{key:>10}: {value}")

    # Inputs: batch 1, one CFG branch. TI2V passes per-token timesteps (first latent frame clean).
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, *shape, device=device, generator=gen).to(dtype)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen).to(dtype)
    t = torch.tensor([999.0], device=device)
    if cfg.model_type == "ti2v":
        t = t[:, None].repeat(1, tokens)
        t[:, : tokens // shape[1]] = 0

    # 1. ours; the first call compiles the blocks (timed apart: part of a run's start-up)
    ours = random_dit(cfg, device, dtype, seed=0)
    compiled = device.type == "cuda" and not args.no_compile
    info["ours_compiled"] = compiled
    if compiled:
        compile_blocks(ours)
    with torch.inference_mode(), attention_kernels(sdpa, ours_attention):
        begin = time.perf_counter()
        ours(x, t, context)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        info["ours_first_call_s"] = time.perf_counter() - begin
        info["ours_compiled_graphs"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        out_ours, sec_ours, peak_ours = timed(lambda: ours(x, t, context), args.runs, device, warmup=False)
    # the same compiled blocks with another attention kernel (the attention call is outside the graphs)
    for other in (a for a in args.compare_attention if sdpa and a != ours_attention):
        with torch.inference_mode(), attention_kernels(sdpa, other):
            out_other, sec_other, peak_other = timed(lambda: ours(x, t, context), args.runs, device)
        info[f"ours_{other}"] = {"median_s": statistics.median(sec_other), "runs_s": sec_other, "peak_gib": peak_other,
                                 "cosine_vs_ours": float(torch.nn.functional.cosine_similarity(
                                     out_other.double().flatten(), out_ours.double().flatten(), dim=0))}
        del out_other
    state = ours.state_dict()  # the same tensors; kept for the fp32 reference
    del ours

    # 2. diffusers, on the same tensors
    ref = diffusers_peer(cfg, state, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with torch.inference_mode(), attention_kernels(sdpa):
        out_ref, sec_ref, peak_ref = timed(lambda: ref(x, t, context, return_dict=False)[0], args.runs, device)
    del ref

    if args.quant:
        with torch.device("meta"):
            lossy = WanModel(cfg)
        lossy.load_state_dict(state, assign=True)  # shares the bf16 tensors; quantizing replaces them
        del state
        quantize_dit(lossy, args.quant)
        if compiled:
            compile_blocks(lossy)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with torch.inference_mode(), attention_kernels(sdpa, ours_attention):
            out_q, sec_q, peak_q = timed(lambda: lossy(x, t, context), args.runs, device)
        del lossy
        q_cos = float(torch.nn.functional.cosine_similarity(out_q.double().flatten(), out_ours.double().flatten(), dim=0))
        info[args.quant] = {"median_s": statistics.median(sec_q), "runs_s": sec_q, "peak_gib": peak_q,
                            "cosine_vs_exact": q_cos, "psnr_vs_exact_db": psnr(out_q, out_ours),
                            "rel_l2_vs_exact": rel_l2(out_q, out_ours)}
        r = info[args.quant]
        print(f"{args.quant:>10}: median {r['median_s']:.4f} s, peak {r['peak_gib']:.2f} GiB, cosine vs exact "
              f"{q_cos:.6f}, PSNR {r['psnr_vs_exact_db']:.1f} dB, rel L2 {r['rel_l2_vs_exact']:.2e}")
    elif args.fp32_reference:
        truth = fp32_reference(cfg, state, x, t, context, device)
        info["rel_l2_to_fp32"] = {"ours": rel_l2(out_ours, truth), "diffusers": rel_l2(out_ref, truth)}
        print(f"{'vs fp32':>10}: rel L2 ours {info['rel_l2_to_fp32']['ours']:.2e}, diffusers {info['rel_l2_to_fp32']['diffusers']:.2e}")
    else:
        del state

    cosine = float(torch.nn.functional.cosine_similarity(out_ours.double().flatten(), out_ref.double().flatten(), dim=0))
    info.update(
        ours={"median_s": statistics.median(sec_ours), "runs_s": sec_ours, "peak_gib": peak_ours},
        diffusers={"median_s": statistics.median(sec_ref), "runs_s": sec_ref, "peak_gib": peak_ref},
        cosine=cosine,
        rel_l2=rel_l2(out_ours, out_ref),
        ok=cosine >= MIN_COSINE,
    )
    for name in ["ours", *(f"ours_{a}" for a in args.compare_attention), "diffusers"]:
        if name not in info:
            continue
        r = info[name]
        peak = "n/a on CPU" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        print(f"{name:>10}: median {r['median_s']:.4f} s over {args.runs} runs, peak {peak}")
    print(f"{'cosine':>10}: {cosine:.7f} (rel L2 {info['rel_l2']:.2e}) {'OK' if info['ok'] else f'BELOW {MIN_COSINE}'}")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0 if info["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a DiT forward's time and memory go: GPU kernel time by kind, and the tensors alive at the peak.

    python bench/profile_dit.py --model a14b --size 1280*720 --snapshot a14b.pickle
    python bench/profile_dit.py --model 5b --quant fp8
    python bench/profile_dit.py --model 5b --tiny                  # CPU check that the script runs

Builds the same random full-size model as `dit_forward.py` (compiled on CUDA, as the pipelines
run it), warms it up, then
1. profiles one forward with torch.profiler and sums kernel time into attention / GEMM / Triton
   (Inductor's fused element-wise kernels and our fused norms) / other, with the achieved TFLOP/s of attention and
   GEMMs from their analytic FLOPs, and the 12 costliest kernels;
2. records the allocator's history over one more forward and prints the memory alive at the
   peak: the resident part (weights, inputs) and each live allocation ≥ 32 MiB made during the
   forward, with the Python line that made it. `--snapshot` keeps the raw history for
   https://pytorch.org/memory_viz.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_forward import MODELS, attention_kernels, pick_sdpa, random_dit, workload  # noqa: E402

from wan_core.models.dit import DiTConfig  # noqa: E402
from wan_core.ops.attention import BACKENDS  # noqa: E402
from wan_core.ops.compile import compile_blocks  # noqa: E402
from wan_core.ops.quant import QUANT_MODES, quantize_dit  # noqa: E402

GIB, MIB = 2**30, 2**20
KINDS = (  # first match wins; names of cuDNN/flash attention, cuBLAS(Lt)/CUTLASS GEMMs, Triton kernels
    ("attention", ("fmha", "flash", "sdpa", "attention", "attn", "prefill")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "scaled_mm")),
    ("triton", ("triton", "_residual_norm_kernel")),  # Inductor's, and wan_core.ops.fused_norm's
)


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "other")


def flops(cfg: DiTConfig, tokens: int) -> dict[str, float]:
    """Analytic FLOPs of one forward (batch 1): attention (QKᵀ and PV of self- and cross-attention)
    and the blocks' GEMMs (2·m·n·k each)."""
    d, f, text = cfg.dim, cfg.ffn_dim, cfg.text_len
    attention = 4 * tokens * (tokens + text) * d
    gemm = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * f) + 2 * text * 2 * d * d
    return {"attention": attention * cfg.num_layers, "gemm": gemm * cfg.num_layers}


def kernel_table(prof: torch.profiler.profile, cfg: DiTConfig, tokens: int) -> None:
    per_kernel: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[event.name]
            entry[0] += event.device_time_total / 1e6  # µs → s
            entry[1] += 1
    per_kind: dict[str, float] = collections.Counter()
    for name, (seconds, _) in per_kernel.items():
        per_kind[kind_of(name)] += seconds
    total = sum(per_kind.values())
    work = flops(cfg, tokens)
    print(f"\nGPU kernel time, one forward: {total:.3f} s")
    for kind, seconds in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        rate = f", {work[kind] / seconds / 1e12:.0f} TFLOP/s" if kind in work and seconds else ""
        print(f"  {kind:>10}: {seconds:7.3f} s  {100 * seconds / total:5.1f}%{rate}")
    print("\ncostliest kernels (s, calls, kind, name):")
    for name, (seconds, calls) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {seconds:7.3f} {calls:5d} {kind_of(name):>9}  {name[:110]}")


def where(frames: list[dict]) -> str:
    """The innermost frames that are ours or Inductor's generated code, else the innermost."""
    picked = [f for f in frames if "wan_core" in f["filename"] or "torchinductor" in f["filename"]][:2] or frames[:1]
    return " ← ".join(f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in picked) or "?"


def peak_report(snapshot: dict, resident: int, device: int) -> None:
    """Replay the allocator's trace: the peak of (resident + live allocations) and what is live then."""
    live: dict[int, tuple[int, str]] = {}
    current = best = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for event in snapshot["device_traces"][device]:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], where(event.get("frames", [])))
            current += event["size"]
            if current > best:
                best, at_peak = current, dict(live)
        elif event["action"] == "free_requested" and event["addr"] in live:
            current -= live.pop(event["addr"])[0]
    print(f"\nmemory at the forward's peak: {(resident + best) / GIB:.2f} GiB = resident {resident / GIB:.2f} GiB "
          f"(weights, inputs) + {best / GIB:.2f} GiB allocated during the forward")
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for size, site in at_peak.values():
        groups[site].append(size)
    small = sum(size for size, _ in at_peak.values() if size < 32 * MIB)
    for site, sizes in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        big = [s for s in sizes if s >= 32 * MIB]
        if big:
            print(f"  {sum(big) / GIB:6.2f} GiB  {len(big):3d} × {max(big) / MIB:7.0f} MiB max  {site}")
    print(f"  {small / GIB:6.2f} GiB  in allocations under 32 MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--size", help="W*H in pixels (default: the model's 720p-class size)")
    parser.add_argument("--frames", type=int)
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU: checks the script (no memory part)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--quant", choices=QUANT_MODES, help="profile this lossy mode instead of exact")
    parser.add_argument("--snapshot", type=Path, help="save the allocator history (pickle) here")
    parser.add_argument("--attention", choices=sorted(n for n, b in BACKENDS.items() if b.exact),
                        help="force our exact attention backend (default: the pipelines' choice)")
    args = parser.parse_args()

    flavor, cfg, size, frames, device, shape, tokens = workload(args.model, args.size, args.frames, args.tiny)
    print(f"{flavor} {size}×{frames}: {tokens} tokens on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, {args.quant or 'exact'}")

    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, *shape, device=device, generator=gen).to(torch.bfloat16)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, generator=gen).to(torch.bfloat16)
    t = torch.tensor([999.0], device=device)
    if cfg.model_type == "ti2v":
        t = t[:, None].repeat(1, tokens)
        t[:, : tokens // shape[1]] = 0
    model = random_dit(cfg, device, torch.bfloat16, seed=0)
    if args.quant:
        quantize_dit(model, args.quant)
    if device.type == "cuda" and not args.no_compile:
        compile_blocks(model)
    sdpa = pick_sdpa(cfg, tokens, device, torch.bfloat16)

    with torch.inference_mode(), attention_kernels(sdpa, args.attention):
        model(x, t, context)  # warm-up (compiles)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            model(x, t, context)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if device.type == "cuda":
            kernel_table(prof, cfg, tokens)
            torch.cuda.empty_cache()
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
            model(x, t, context)
            torch.cuda.synchronize(device)
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            print(f"\nallocator peak {torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB")
            peak_report(snapshot, resident, device.index or 0)
            if args.snapshot:
                with args.snapshot.open("wb") as f:
                    pickle.dump(snapshot, f)
        else:
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

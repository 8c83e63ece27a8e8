"""Attention kernels alone at Wan's shapes: time, TFLOP/s and error per backend.

For each workload (batch 1, the DiT's heads × 128, its token count; the `-cross` ones attend to
the 512 text tokens, as cross-attention does) every requested backend of
`wan_core.ops.attention` runs the same random q/k/v (q/k RMS-normalised per token like the DiT's,
times a gain; optionally a per-channel offset on k and v); the median of the warm runs (CUDA
events) is reported with 4·Lq·Lk·dim FLOPs, and each output's cosine / relative L2 / PSNR against the
`sdpa` (cuDNN bf16) output. `fp8:cudnn` and `fp8:flashinfer` run the `fp8` backend with its
kernel forced (by default it takes FlashInfer's where that loads).

    python bench/attention.py --backends sdpa flashinfer fp8:cudnn fp8:flashinfer --out bench.jsonl
    python bench/attention.py --workloads a14b-480p --offset 2   # keys and values with channel bias
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_forward import psnr, rel_l2  # noqa: E402  (bench/dit_forward.py)
from timing import timed  # noqa: E402  (bench/timing.py)

from wan_core.ops import fp8_attention  # noqa: E402
from wan_core.ops.attention import BACKENDS, attention  # noqa: E402

# workload → (heads, query tokens, key tokens): the DiT's self-attention at the sizes
# (spec §1.2, §1.4) and its cross-attention to the zero-padded text (text_len 512)
WORKLOADS = {
    "a14b-720p": (40, 21 * 45 * 80, 21 * 45 * 80),  # 1280×720×81
    "a14b-480p": (40, 21 * 30 * 52, 21 * 30 * 52),  # 832×480×81
    "5b-720p": (24, 31 * 22 * 40, 31 * 22 * 40),  # 1280×704×121
    "a14b-720p-cross": (40, 21 * 45 * 80, 512),
    "5b-720p-cross": (24, 31 * 22 * 40, 512),
}
HEAD_DIM = 128


def inputs(heads: int, tokens: int, keys: int, device: torch.device, gain: float, offset: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """q, k RMS-normalised per token times `gain`; v standard normal; k and v plus a per-channel
    offset of scale `offset` shared by all tokens (the channel bias real DiTs' keys carry)."""
    gen = torch.Generator(device).manual_seed(0)

    def randn(n: int = keys) -> Tensor:
        return torch.randn(1, n, heads, HEAD_DIM, device=device, generator=gen)

    def normed(n: int = keys) -> Tensor:
        x = randn(n)
        return x * torch.rsqrt(x.pow(2).mean((-2, -1), keepdim=True)) * gain

    def channel_offset() -> Tensor:
        return offset * torch.randn(1, 1, heads, HEAD_DIM, device=device, generator=gen)

    q, k, v = normed(tokens), normed() + channel_offset(), randn() + channel_offset()
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def compare(out: Tensor, ref: Tensor) -> dict[str, float]:
    cosine = torch.nn.functional.cosine_similarity(out.double().flatten(), ref.double().flatten(), dim=0)
    return {"cosine": float(cosine), "rel_l2": rel_l2(out, ref), "psnr_db": psnr(out, ref)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    fp8_kernels = [f"fp8:{kernel}" for kernel in fp8_attention.KERNELS]
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS) + fp8_kernels, default=["sdpa", "fp8"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gain", type=float, default=2.0, help="q/k RMS; logits' spread grows as gain²")
    parser.add_argument("--offset", type=float, default=0.0, help="scale of a per-channel offset added to k and v")
    parser.add_argument("--out", type=Path, help="append one JSON line per workload here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    device = torch.device("cuda")
    for workload in args.workloads:
        heads, tokens, keys = WORKLOADS[workload]
        flops = 4 * tokens * keys * heads * HEAD_DIM
        q, k, v = inputs(heads, tokens, keys, device, args.gain, args.offset)
        info = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "workload": workload, "heads": heads, "tokens": tokens, "keys": keys,
            "gain": args.gain, "offset": args.offset,
        }
        outputs = {}
        for name in args.backends:
            if name in fp8_kernels:
                call = partial(fp8_attention.run, q, k, v, kernel=name.removeprefix("fp8:"))
            else:
                call = partial(attention, q, k, v, backend=name)
            with torch.inference_mode():
                out, seconds, peak = timed(call, args.runs, device)
            median = statistics.median(seconds)
            outputs[name] = out
            info[name] = {"median_s": median, "runs_s": seconds, "tflops": flops / median / 1e12, "peak_gib": peak}
        reference = outputs.get("sdpa")
        for name, out in outputs.items():
            if reference is not None and name != "sdpa":
                info[name]["vs_sdpa"] = compare(out, reference)
            r = info[name]
            error = "".join(f", {key} {value:.5g}" for key, value in r.get("vs_sdpa", {}).items())
            print(f"{workload:>10} {name:>10}: {r['median_s'] * 1e3:8.2f} ms  {r['tflops']:6.1f} TFLOP/s  peak {r['peak_gib']:.2f} GiB{error}")
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(info) + "\n")
        del q, k, v, outputs
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU benchmark: one umT5-XXL prompt encode (the two CFG prompts), ours vs the peer, one process.

Builds the full-size encoder (spec §4.1: 24 layers, 4096 wide, 64 heads, 256,384 rows) with random
bf16 weights on the GPU and encodes a batch of two prompts padded to 512 tokens (a 120-token prompt
and the 36-token-class default negative prompt length), as every generation does once. Ours is
`wan_core.models.t5.UMT5Encoder` (the official code's math op by op, bit-exact to it); the peer is
transformers' `UMT5EncoderModel` as diffusers' Wan pipelines load it, with transformers' SDPA
attention where that class supports it, on the very same weight tensors. Reports
the median of the warm runs (CUDA events), peaks, and the cosine of the two outputs on real tokens.

    python bench/t5_encode.py --out bench.jsonl
    python bench/t5_encode.py --tiny          # CPU check that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402  (bench/timing.py)

from wan_core.models.t5 import T5Config, build_umt5  # noqa: E402
from wan_core.testing.hf_umt5 import hf_umt5  # noqa: E402
from wanspec.tasks import TEXT_LEN  # noqa: E402

PROMPT_TOKENS = (120, 36)  # a long-ish user prompt and the default negative prompt's length class


def random_official(config: T5Config, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Official-layout umT5 weights drawn on the device in bf16: N(0, 1/fan_in), unit norms."""
    gen = torch.Generator(device).manual_seed(seed)
    weights = {}
    for name, shape in config.official_shapes().items():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            weights[name] = torch.ones(shape, dtype=torch.bfloat16, device=device)
        else:
            std = 1.0 if name == "token_embedding.weight" else shape[-1] ** -0.5
            weights[name] = (torch.randn(shape, device=device, generator=gen, dtype=torch.bfloat16) * std)
    return weights


def contender(
    name: str, config: T5Config, weights: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor,
    device: torch.device,
) -> tuple[str, Callable[[], torch.Tensor]]:
    """(attention used, a call giving [B, L, dim]) for ours or the peer, on the same weight tensors."""
    if name == "ours":
        return "einsum (official)", partial(build_umt5(config, weights, device=device, dtype=torch.bfloat16), ids, mask)
    peer = hf_umt5(config, weights, attention="sdpa")
    return peer.config._attn_implementation, lambda: peer(input_ids=ids, attention_mask=mask).last_hidden_state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU: checks the script")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    config = T5Config.tiny() if args.tiny else T5Config()
    weights = random_official(config, device, seed=0)

    ids = torch.randint(1, min(config.vocab_size, 256300), (2, TEXT_LEN), device=device)
    mask = torch.zeros(2, TEXT_LEN, dtype=torch.long, device=device)
    for row, n in enumerate(PROMPT_TOKENS):
        mask[row, :n] = 1
    ids = ids * mask  # pad id 0 after each prompt

    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "model": "umt5-xxl encoder" + (" (tiny config)" if args.tiny else ""), "batch": 2,
        "text_len": TEXT_LEN, "prompt_tokens": PROMPT_TOKENS,
    }
    outputs = {}
    for name in ("ours", "peer"):
        used, run = contender(name, config, weights, ids, mask, device)
        with torch.inference_mode():
            out, seconds, peak = timed(run, args.runs, device)
        outputs[name] = out
        info[name] = {"attention": used, "median_s": statistics.median(seconds), "runs_s": seconds, "peak_gib": peak}
        del run  # the model goes with it before the next one is built
    real = mask.bool().cpu()
    a, b = outputs["ours"][real].double().flatten(), outputs["peer"][real].double().flatten()
    info["cosine"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    for name in ("ours", "peer"):
        r = info[name]
        peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
        print(f"{name:>5} ({r['attention']}): median {r['median_s'] * 1e3:.1f} ms, peak {peak}")
    print(f"cosine on real tokens: {info['cosine']:.6f}")
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

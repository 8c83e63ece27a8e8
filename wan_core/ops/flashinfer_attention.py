"""Attention on Hopper through FlashInfer's FA3-class kernels (the `flashinfer` extra).

Attention is ~74% of a 720P A14B forward. cuDNN's bf16 flash forward, the fastest kernel torch
ships, runs ≈570 TFLOP/s at Wan's shapes; FlashInfer's sm90 prefill kernel (FlashAttention-3's
design: warp-specialised, TMA + wgmma, softmax overlapped with the GEMMs) runs the same
attention at ≈640 (BENCHMARKS.md). Same numerics class as cuDNN's: bf16 Q·Kᵀ and P·V with fp32
accumulation and an fp32 online softmax, so it is an exact backend (cosine 0.999995 to cuDNN).
FlashAttention-3 itself installs from no package index; FlashInfer does (`flashinfer-python`),
and builds its kernels with nvcc on first use (`build`, below, does it ahead of time for images).

Its FP8 variant (e4m3 Q, K, V with one dequantization scale per head, bf16/fp16 out) is the
kernel `wan_core.ops.fp8_attention` prefers for the lossy `fp8-full` mode: 2.5% faster than
cuDNN's FP8 kernel at A14B 720P with the same quantization and the same measured error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

HOPPER = (9, 0)  # FA3's kernels use sm90a-only instructions (wgmma, setmaxnreg)
HEAD_DIMS = (64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16)
E4M3 = torch.float8_e4m3fn


@cache
def _import() -> tuple[Any | None, str | None]:
    """(flashinfer.prefill, None), or (None, why it cannot be used)."""
    try:
        return importlib.import_module("flashinfer.prefill"), None
    except ImportError:
        return None, "flashinfer is not importable: pip install 'wanops[flashinfer]' (flashinfer-python)"
    except (OSError, RuntimeError) as e:  # its import makes its cache dir and probes CUDA libraries
        return None, f"flashinfer failed to import ({type(e).__name__}: {e}; FLASHINFER_WORKSPACE_BASE must be writable)"


def _flashinfer() -> Any | None:
    return _import()[0]


def _module_args(dtype: torch.dtype, head_dim: int, out_dtype: torch.dtype | None = None) -> tuple:
    """FlashInfer's key for a module we use: q/k/v in `dtype`, o in `out_dtype` (default: the
    same), no RoPE, sliding window, soft cap or fp16 QK reduction."""
    return ("fa3", dtype, dtype, out_dtype or dtype, head_dim, head_dim, 0, False, False, False)


@cache
def _load(dtype: torch.dtype, head_dim: int, out_dtype: torch.dtype | None = None) -> str | None:
    """Load (building it first if it is not in FlashInfer's cache) the kernel module; None on
    success, else the reason in one line. Cached: a failed build is not retried every call."""
    prefill, why = _import()
    if prefill is None:
        return why
    args = _module_args(dtype, head_dim, out_dtype)
    log.info("loading FlashInfer's FA3 kernel %s (the first use on a machine compiles it: 1-2 min on 16 cores)",
             prefill.get_single_prefill_uri(*args))
    try:
        prefill.get_single_prefill_module(*args)
    except Exception as e:  # noqa: BLE001  (nvcc missing, compile error, ABI mismatch: all mean "fall back")
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return f"FlashInfer could not build or load its FA3 kernel ({type(e).__name__}: {first[:200]})"
    return None


def device_problem(device: torch.device) -> str | None:
    """None when the device can run FA3's kernels, else why not."""
    if device.type != "cuda":
        return f"needs CUDA tensors, got {device.type}"
    if torch.cuda.get_device_capability(device) != HOPPER:
        return f"needs a Hopper GPU (H100/H200, compute capability 9.0), got {torch.cuda.get_device_capability(device)}"
    return None


def check(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """None when FlashInfer's FA3 kernel can run (B, L, N, D) q/k/v, else why not."""
    if problem := device_problem(q.device):
        return problem
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"needs fp16/bf16 q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {HEAD_DIMS}"
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        return "needs the head dim contiguous"
    return _load(q.dtype, q.shape[-1])


def _per_sample(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> Tensor:
    """FlashInfer's single-request prefill on each sample of (B, L, N, D) tensors (its API is per
    request; at Wan's sizes each call is milliseconds to seconds of work, so the loop costs nothing)."""
    prefill = _flashinfer()
    out = [prefill.single_prefill_with_kv_cache(q[b], k[b], v[b], causal=False, kv_layout="NHD", backend="fa3", **kwargs)
           for b in range(q.shape[0])]
    return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)


def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q·kᵀ/√D)·v on (B, L, N, D) q/k/v; (B, Lq, N, D) in q's dtype."""
    return _per_sample(q, k, v)


def fp8_problem(device: torch.device, head_dim: int, out_dtype: torch.dtype) -> str | None:
    """None when the FP8 kernel (e4m3 in, `out_dtype` out) runs on `device`, else why not."""
    return device_problem(device) or _load(E4M3, head_dim, out_dtype)


def run_fp8(q8: Tensor, k8: Tensor, v8: Tensor, descales: tuple[Tensor, Tensor, Tensor], out_dtype: torch.dtype) -> Tensor:
    """softmax(q·kᵀ/√D)·v of e4m3 (B, L, N, D) q8/k8/v8, each dequantized by its one-element
    descale (FlashInfer takes one per head: the same value repeated), in `out_dtype`."""
    heads = q8.shape[2]
    scale_q, scale_k, scale_v = (d.reshape(1).expand(heads).contiguous() for d in descales)
    return _per_sample(q8, k8, v8, scale_q=scale_q, scale_k=scale_k, scale_v=scale_v, o_dtype=out_dtype)


# What the runner image builds: exact bf16/fp16 and the FP8 kernel with bf16/fp16 out.
PREBUILT = {"bfloat16": [(torch.bfloat16, None), (E4M3, torch.bfloat16)], "float16": [(torch.float16, None), (E4M3, torch.float16)]}


def build(modules: list[tuple[torch.dtype, torch.dtype | None]], head_dim: int, install: bool) -> list[Path]:
    """Compile the modules ahead of time (no GPU needed: nvcc targets sm90a); with `install`, copy
    each into FlashInfer's in-package AOT folder, which it loads without nvcc or ninja — how the
    runner image ships them, since its final stage has no CUDA compiler."""
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0a")
    prefill, why = _import()
    if prefill is None:
        raise SystemExit(why)
    from flashinfer.jit import env  # FlashInfer's cache layout (pinned <0.8 in pyproject)

    built = []
    for dtype, out_dtype in modules:
        args = _module_args(dtype, head_dim, out_dtype)
        uri = prefill.get_single_prefill_uri(*args)
        installed = env.FLASHINFER_AOT_DIR / uri / f"{uri}.so"
        if installed.exists():  # FlashInfer loads this one first: nothing to build
            built.append(installed)
            continue
        prefill.get_single_prefill_module(*args)
        path = env.FLASHINFER_JIT_DIR / uri / f"{uri}.so"
        if install:
            installed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, installed)
            path = installed
        built.append(path)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build FlashInfer's FA3 attention kernels for Wan's DiT ahead of time.")
    parser.add_argument("--dtype", nargs="+", choices=sorted(PREBUILT), default=["bfloat16"],
                        help="the model's dtype: builds its exact kernel and the FP8 kernel writing it")
    parser.add_argument("--head-dim", type=int, choices=HEAD_DIMS, default=128, help="128 for every Wan2.2 DiT")
    parser.add_argument("--install", action="store_true", help="copy into FlashInfer's package (its AOT folder)")
    args = parser.parse_args(argv)
    for path in build([m for d in args.dtype for m in PREBUILT[d]], args.head_dim, args.install):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

A module the image installed in FlashInfer's AOT folder is loaded by path through `tvm_ffi`,
without importing the `flashinfer` package: its `__init__` imports every subpackage (MoE, GEMM,
MLA, an HTTP client, …), ≈0.6 s on the path to a process's first denoising step. `_run_module`
then calls the module's `run` with the arguments the package's API passes it (FlashInfer 0.7.2's
interface: other versions, and modules built at run time, go through the package).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

HOPPER = (9, 0)  # FA3's kernels use sm90a-only instructions (wgmma, setmaxnreg)
HEAD_DIMS = (64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16)
E4M3 = torch.float8_e4m3fn


@functools.cache
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


# FlashInfer versions whose module `run` takes `_run_module`'s arguments (its internal interface,
# read off 0.7.2's `prefill.run_single_prefill`). Other versions go through the package's API.
_DIRECT_VERSIONS = frozenset({"0.7.2", "0.7.2.post1"})
_DTYPE_NAMES = {torch.float16: "f16", torch.bfloat16: "bf16", E4M3: "e4m3"}
_TMP_BYTES = 32 << 20  # FlashInfer's SINGLE_KERNEL_TMP_SIZE
Scales = tuple[Tensor, Tensor, Tensor]  # e4m3 q, k, v: one dequantization scale per head
Kernel = Callable[[Tensor, Tensor, Tensor, torch.dtype, Scales | None], Tensor]  # one request's (L, N, D) q, k, v → o


def _uri(args: tuple) -> str:
    """FlashInfer's name for the module of `_module_args` (`prefill.get_single_prefill_uri`)."""
    backend, q, kv, o, d_qk, d_vo, posenc, swa, cap, f16qk = args
    return (f"single_prefill_with_kv_cache_dtype_q_{_DTYPE_NAMES[q]}_dtype_kv_{_DTYPE_NAMES[kv]}_"
            f"dtype_o_{_DTYPE_NAMES[o]}_head_dim_qk_{d_qk}_head_dim_vo_{d_vo}_posenc_{posenc}_"
            f"use_swa_{swa}_use_logits_cap_{cap}_f16qk_{f16qk}" + ("_sm90" if backend == "fa3" else ""))


def _installed_path(args: tuple) -> Path | None:
    """The module in FlashInfer's in-package AOT folder, where the runner image installs it
    (`build --install`), found without importing the package; None if absent or another version."""
    try:
        version = importlib.metadata.version("flashinfer-python")
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec("flashinfer")  # finds the package without running its __init__
    if version not in _DIRECT_VERSIONS or spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "aot" / _uri(args) / f"{_uri(args)}.so"
    return path if path.is_file() else None


def _run_module(run: Callable[..., None], q: Tensor, k: Tensor, v: Tensor, out_dtype: torch.dtype,
                scales: Scales | None) -> Tensor:
    """One request through the module's `run` with what `flashinfer.single_prefill_with_kv_cache(q,
    k, v, causal=False, kv_layout="NHD", backend="fa3"[, scale_q=, scale_k=, scale_v=], o_dtype=)`
    passes it: non-causal, NHD layout, no window, no LSE, softmax scale 1/√D."""
    tmp = torch.empty(_TMP_BYTES, dtype=torch.uint8, device=q.device)
    out = torch.empty(q.shape, dtype=out_dtype, device=q.device)
    sm_scale = 1.0 / math.sqrt(q.shape[-1])
    non_causal, nhd, no_window, no_lse = 0, 0, -1, None
    if scales is None:  # fp16/bf16: no V scale tensor, no logits soft cap, scalar V scale 1
        run(q, k, v, tmp, out, no_lse, non_causal, nhd, no_window, None, 0.0, sm_scale, 1.0)
    else:  # e4m3: the per-head scale tensors, scalar scales 1
        run(q, k, v, tmp, out, no_lse, non_causal, nhd, no_window, *scales, sm_scale, 1.0, 1.0, 1.0)
    return out


def _run_package(prefill: Any, q: Tensor, k: Tensor, v: Tensor, out_dtype: torch.dtype, scales: Scales | None) -> Tensor:
    """One request through the package's API."""
    fp8 = {} if scales is None else dict(zip(("scale_q", "scale_k", "scale_v"), scales, strict=True))
    return prefill.single_prefill_with_kv_cache(q, k, v, causal=False, kv_layout="NHD", backend="fa3", o_dtype=out_dtype, **fp8)


@functools.cache
def _load(args: tuple) -> tuple[Kernel | None, str | None]:
    """(the kernel of `_module_args`, None), or (None, why not in one line). An installed module
    of a known version loads by path; otherwise the package loads the module, building it first if
    it is not in its cache. Cached: a failed build is not retried every call."""
    if (path := _installed_path(args)) is not None:
        try:
            import tvm_ffi  # FlashInfer's module loader, one of its dependencies

            run = tvm_ffi.load_module(str(path)).run
            log.info("FlashInfer's FA3 kernel loaded from %s", path)
            return functools.partial(_run_module, run), None
        except Exception as e:  # noqa: BLE001  (a broken file or library: the package's way may still work)
            log.warning("cannot load FlashInfer's module %s directly (%s: %s); importing the package", path, type(e).__name__, e)
    prefill, why = _import()
    if prefill is None:
        return None, why
    log.info("loading FlashInfer's FA3 kernel %s (the first use on a machine compiles it: 1-2 min on 16 cores)", _uri(args))
    try:
        prefill.get_single_prefill_module(*args)
    except Exception as e:  # noqa: BLE001  (nvcc missing, compile error, ABI mismatch: all mean "fall back")
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return None, f"FlashInfer could not build or load its FA3 kernel ({type(e).__name__}: {first[:200]})"
    return functools.partial(_run_package, prefill), None


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
    return _load(_module_args(q.dtype, q.shape[-1]))[1]


def _per_sample(q: Tensor, k: Tensor, v: Tensor, out_dtype: torch.dtype, scales: Scales | None = None) -> Tensor:
    """The single-request kernel on each sample of (B, L, N, D) tensors (its interface is per
    request; at Wan's sizes each call is milliseconds to seconds of work, so the loop costs nothing)."""
    kernel, _ = _load(_module_args(q.dtype, q.shape[-1], out_dtype))
    out = [kernel(q[b], k[b], v[b], out_dtype, scales) for b in range(q.shape[0])]
    return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)


def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q·kᵀ/√D)·v on (B, L, N, D) q/k/v; (B, Lq, N, D) in q's dtype."""
    return _per_sample(q, k, v, q.dtype)


def fp8_problem(device: torch.device, head_dim: int, out_dtype: torch.dtype) -> str | None:
    """None when the FP8 kernel (e4m3 in, `out_dtype` out) runs on `device`, else why not."""
    return device_problem(device) or _load(_module_args(E4M3, head_dim, out_dtype))[1]


def run_fp8(q8: Tensor, k8: Tensor, v8: Tensor, descales: tuple[Tensor, Tensor, Tensor], out_dtype: torch.dtype) -> Tensor:
    """softmax(q·kᵀ/√D)·v of e4m3 (B, L, N, D) q8/k8/v8, each dequantized by its one-element
    descale (FlashInfer takes one per head: the same value repeated), in `out_dtype`."""
    heads = q8.shape[2]
    scales = tuple(d.reshape(1).expand(heads).contiguous() for d in descales)
    return _per_sample(q8, k8, v8, out_dtype, scales)


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
    modules = [m for d in args.dtype for m in PREBUILT[d]]
    for path in build(modules, args.head_dim, args.install):
        print(path)
    if args.install and any(_installed_path(_module_args(d, args.head_dim, o)) is None for d, o in modules):
        log.warning("this FlashInfer is not one whose modules load by path (%s): each process imports its "
                    "package to load them (≈0.6 s more at the first step)", ", ".join(sorted(_DIRECT_VERSIONS)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

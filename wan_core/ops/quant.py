"""Opt-in lossy DiT precision modes, put on from outside the model like `compile_blocks`.

`fp8`: the transformer blocks' Linear layers run as FP8 (e4m3) GEMMs with one scale per row of
the activations and per output channel of the weights, quantized on the fly (torchao's
`Float8DynamicActivationFloat8WeightConfig(PerRow)`, Hopper/Ada `_scaled_mm`). GEMMs are ~29% of
a 720P A14B forward's FLOPs and FP8 runs them at ~1.7× bf16's rate on an H100; the stored weights
halve (an A14B expert: 26.6 → 13.3 GiB). The fp32 islands (time/text embeddings, modulation,
head) and attention stay as in exact mode. Not bit-compatible with exact mode: its cost is
measured in BENCHMARKS.md (cosine/PSNR against exact at the same seed).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from wanspec.tasks import PRECISIONS

QUANT_MODES = tuple(p for p in PRECISIONS if p != "exact")
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper: FP8 tensor cores, torch._scaled_mm


def check_quantization(mode: str, device: torch.device, dit_fsdp: bool) -> None:
    """Refuse, before anything loads, a precision mode this run cannot use; says what to change."""
    if mode == "exact":
        return
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown precision {mode!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        raise ValueError(f"precision {mode!r} needs a GPU with FP8 tensor cores (compute capability 8.9 or "
                         f"newer: L40S, RTX 4090, H100, H200, …); this run is on {where}: use precision 'exact'")
    if dit_fsdp:
        raise ValueError(f"precision {mode!r} cannot be combined with FSDP-sharded DiTs (--dit_fsdp): "
                         "drop --dit_fsdp (Ulysses and CFG-parallel work) or use precision 'exact'")
    if importlib.util.find_spec("torchao") is None:
        raise ValueError(f"precision {mode!r} needs torchao: pip install 'wanops[fp8]' (the runner image has it)")


def quantize_dit(model: nn.Module, mode: str) -> nn.Module:
    """Quantize `model.blocks`' Linear layers in place for `mode`; returns model.

    Call on the bf16 model (on the CPU or its GPU; the quantized weights move with `.to`, so
    offloading works) before `compile_blocks`, so the activation quantization fuses into the
    blocks' Triton kernels, and without FSDP (sharding torchao's tensor subclasses is not
    supported here). Needs `torchao` (the `fp8` extra); `check_quantization` first.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown DiT quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as e:
        raise RuntimeError("quantization 'fp8' needs torchao: pip install 'wanops[fp8]'") from e
    quantize_(
        model.blocks,
        # set_inductor_config=False: torchao would otherwise switch fp32 matmuls to TF32 process-wide
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False),
        filter_fn=lambda module, _name: isinstance(module, nn.Linear),
    )
    return model

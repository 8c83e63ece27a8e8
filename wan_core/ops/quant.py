"""Opt-in lossy DiT precision modes, put on from outside the model like `compile_blocks`.

`fp8`: the transformer blocks' Linear layers run as FP8 (e4m3) GEMMs with one scale per row of
the activations and per output channel of the weights (`wan_core.ops.fp8.Fp8Linear`, Hopper/Ada
`_scaled_mm`); the norms hand the projections their rows already quantized. GEMMs are ~29% of
a 720P A14B forward's FLOPs and FP8 runs them at ~1.7× bf16's rate on an H100; the stored weights
halve (an A14B expert: 26.6 → 13.3 GiB). The fp32 islands (time/text embeddings, modulation,
head) and attention stay as in exact mode.

`fp8-full`: `fp8`, and the blocks' self-attention through FP8 attention on Hopper
(`wan_core.ops.fp8_attention`: FlashInfer's kernel, else cuDNN's): attention is ~74% of a 720P
A14B forward, and FP8 runs it ~1.5× faster than bf16. Cross-attention (512 text keys) stays exact.

Neither is bit-compatible with exact mode: their cost is measured in BENCHMARKS.md (cosine/PSNR
against exact at the same seed).
"""

from __future__ import annotations

import torch
from torch import nn

from wan_core.models.dit import WanSelfAttention
from wan_core.ops import fp8_attention
from wan_core.ops.fp8 import Fp8Linear
from wanspec.tasks import FP8_ATTENTION_PRECISIONS, PRECISIONS

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
    if mode in FP8_ATTENTION_PRECISIONS:
        if reason := fp8_attention.device_problem(device):
            raise ValueError(f"precision {mode!r}: FP8 attention {reason}; use precision 'fp8' (FP8 GEMMs only) or 'exact'")


def quantize_dit(model: nn.Module, mode: str) -> nn.Module:
    """Replace `model.blocks`' Linear layers by FP8 ones in place for `mode` (and, for `fp8-full`,
    point their self-attention at the FP8 kernel); returns model.

    Call on the bf16 model (on the CPU or its GPU; the FP8 weights are buffers and move with
    `.to`, so offloading works) before `compile_blocks`, so the remaining activation
    quantization fuses into the blocks' kernels, and without FSDP (it shards parameters, and
    the FP8 weights are buffers: every rank would hold all of them; `check_quantization`
    refuses that first).
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown DiT quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    for parent in list(model.blocks.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, Fp8Linear(child))
    if mode in FP8_ATTENTION_PRECISIONS:
        for module in model.blocks.modules():
            if isinstance(module, WanSelfAttention):
                module.attention_backend = "fp8"
    return model

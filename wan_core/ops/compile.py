"""Per-block `torch.compile` of the DiT, put on from outside the model (as torchtitan does).

The block's non-GEMM work is long chains of element-wise fp32 ops over [L, dim] tensors
(LayerNorm, modulation, gated residuals, q/k RMSNorm, RoPE, casts): run eagerly each link reads
and writes the whole stream, ~1.5–2.5 s per 720P A14B forward. Inductor fuses each chain into one
kernel and gathers the per-token modulation rows inside it; GEMMs stay cuBLAS and attention stays
our eager kernel choice (`attention` is excluded from tracing). All blocks share code and shapes,
and parameters are graph inputs, so one compile serves every block and both A14B experts.

`WANOPS_COMPILE=0` turns it off (debugging, or a platform where Triton cannot build kernels).
"""

from __future__ import annotations

import os

import torch
from torch import nn

ENV_VAR = "WANOPS_COMPILE"


def compile_wanted(device: torch.device) -> bool:
    """Default: on for CUDA (Triton kernels), off for the CPU (tests, tiny models: compile would
    cost more than it saves); `WANOPS_COMPILE=0|1` overrides."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return device.type == "cuda"


def compile_blocks(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile each of `model.blocks` in place (hooks included, so Ulysses' run inside); returns model.

    Call after the Ulysses hooks and before FSDP2 wraps the blocks (torchtitan's order). `backend`
    is torch.compile's; tests use "aot_eager" to check tracing without generating kernels.
    """
    for block in model.blocks:
        block.compile(backend=backend, dynamic=False)
    return model

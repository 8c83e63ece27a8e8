"""What the pipelines call: build the DiT(s) and umT5 for a layout, and make room for the decode.

Order of `parallelize_dit` (fixed, as torchtitan's parallelize files fix theirs): Ulysses hooks
first (they hold no weights and see the model's own module names), then per-block torch.compile
(which traces the hooks with the block), then FSDP2 (which wraps the compiled blocks).
"""

from __future__ import annotations

from pathlib import Path

import torch

from wan_core.checkpoint.dit import expert_folders, load_dit_experts
from wan_core.models.dit import WanModel
from wan_core.models.t5 import T5Encoder
from wan_core.ops.compile import compile_blocks
from wan_core.ops.quant import quantize_dit
from wan_core.parallel.fsdp import load_sharded_dit, shard_dit, shard_t5
from wan_core.parallel.mesh import ParallelLayout
from wan_core.parallel.ulysses import apply_ulysses


def _prepare(model: WanModel, layout: ParallelLayout, compile: bool, precision: str = "exact") -> WanModel:
    """The steps before FSDP: Ulysses hooks (ulysses > 1), quantization, then per-block compile."""
    model = apply_ulysses(model, layout.ulysses_group) if layout.ulysses > 1 else model
    model = quantize_dit(model, precision) if precision != "exact" else model
    return compile_blocks(model) if compile else model


def parallelize_dit(model: WanModel, layout: ParallelLayout, param_dtype: torch.dtype | None = None,
                    compile: bool = False, precision: str = "exact") -> WanModel:
    """Ulysses (ulysses > 1), quantization, compile, then FSDP2 (dit_fsdp) on a built DiT, meta or loaded.

    A quantized `precision` is refused with dit_fsdp by `check_quantization`, before loading."""
    model = _prepare(model, layout, compile, precision)
    return shard_dit(model, layout.fsdp_mesh, param_dtype) if layout.dit_fsdp else model


def load_parallel_dits(
    ckpt_dir: str | Path,
    layout: ParallelLayout,
    *,
    dtype: torch.dtype | None,
    param_dtype: torch.dtype | None,
    model_type: str | None,
    compile: bool = False,
    precision: str = "exact",
) -> dict[str, WanModel]:
    """Every DiT of a checkpoint (both A14B experts alike), parallelized for `layout`.

    With dit_fsdp each rank reads only its shard, straight to its device; otherwise each rank
    loads the whole DiT to the CPU as one process does (the pipeline moves the active expert to
    the device) and gets the Ulysses hooks. dtype: stored dtype (None: as in the file);
    param_dtype: FSDP compute dtype; compile: per-block torch.compile (`wan_core.ops.compile`);
    precision: a quantized mode (`wan_core.ops.quant`) for replicas, never with dit_fsdp.
    """
    if not layout.dit_fsdp:
        experts = load_dit_experts(ckpt_dir, device="cpu", dtype=dtype, model_type=model_type)
        return {name: parallelize_dit(model, layout, compile=compile, precision=precision)
                for name, model in experts.items()}
    return {
        name: load_sharded_dit(folder, layout.fsdp_mesh, device=layout.device, dtype=dtype, param_dtype=param_dtype,
                               model_type=model_type, prepare=lambda model: _prepare(model, layout, compile))
        for name, folder in expert_folders(ckpt_dir).items()
    }


def parallelize_t5(encoder: T5Encoder, layout: ParallelLayout) -> T5Encoder:
    """FSDP2 on umT5 when t5_fsdp (it then lives on the device, sharded); else unchanged."""
    return shard_t5(encoder, layout.fsdp_mesh) if layout.t5_fsdp else encoder

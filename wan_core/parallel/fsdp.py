"""FSDP2 (`fully_shard`) for the DiT and umT5, and DiT loading that reads only a rank's own rows.

One helper for every model, as upstream's `shard_model` (spec §9.1): each transformer block is
one FSDP unit, the rest (embeddings, head; umT5's token embedding and final norm) is the root
unit, all sharded over every rank on dim 0.

Reshard policy: `reshard_after_forward=True` everywhere, root included (upstream's FULL_SHARD).
Inference never runs a backward that would reuse the gathered weights, so keeping them costs a
whole unsharded model per rank for no saving; resharding costs one all-gather per unit per
forward (two forwards per step with CFG), which overlaps the previous unit's compute on GPUs.
`False` would hold full weights after the first forward (no memory saving at all in steady state).

Mixed precision: `param_dtype` is the pipeline's compute dtype (bf16 on CUDA, as upstream's
`MixedPrecision(param_dtype=bf16)`; with it the DiT's fp32 islands compute with bf16-rounded
weights, exactly as upstream under FSDP, spec §3.8), None keeps the stored dtype (the fp32 CPU
parity path). `reduce_dtype` fp32 applies only to gradient reduction, which inference never runs.
`cast_forward_inputs=False`: the DiT's residual stream enters every block in fp32 and must stay so.

Sharded loading (DiT, safetensors): the model is built on the meta device, sharded, then each
rank reads from the safetensors files only the dim-0 rows of each tensor it keeps (the format
allows per-tensor slices) straight onto its device, and wraps them as DTensor shards. No rank ever
holds a full copy. umT5 (`.pth`, a pickle) is memory-mapped by its loader and moved to the device
unit by unit by `fully_shard`, which keeps 1/N of each unit: host memory is the shared page cache
of the file, never a private full copy per rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

from wan_core.checkpoint.dit import CONFIG_NAME, read_shapes, shard_keys
from wan_core.checkpoint.errors import CheckpointError, check_shapes
from wan_core.models.dit import DiTConfig, WanModel
from wan_core.models.t5 import T5Encoder


def apply_fsdp(
    root: nn.Module,
    blocks: Iterable[nn.Module],
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard each of `blocks` as its own unit, then `root` (the rest); see the module docstring."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return root


def shard_dit(model: WanModel, mesh: DeviceMesh, param_dtype: torch.dtype | None = None) -> WanModel:
    """FSDP2 on a DiT: one unit per `blocks.N`, embeddings and head in the root unit."""
    apply_fsdp(model, model.blocks, mesh, param_dtype=param_dtype)
    return model


def shard_t5(encoder: T5Encoder, mesh: DeviceMesh) -> T5Encoder:
    """FSDP2 on umT5: one unit per encoder block; computes in its stored dtype (bf16 officially)."""
    apply_fsdp(encoder.model, encoder.model.blocks, mesh)
    return encoder


_FILE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _local_rows(full: tuple[int, ...], target: DTensor) -> tuple[int, int]:
    """The dim-0 rows [start, stop) this rank keeps of a `full`-shaped tensor: `torch.chunk`
    over the mesh, as FSDP2 shards (trailing ranks may keep none)."""
    if tuple(target.placements) != (Shard(0),):
        raise ValueError(f"expected a dim-0 shard, got {target.placements}")
    ranks = target.device_mesh.size()
    chunk = math.ceil(full[0] / ranks)
    start = min(target.device_mesh.get_local_rank() * chunk, full[0])
    return start, min(start + chunk, full[0])


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))


def load_sharded_dit(
    folder: str | Path,
    mesh: DeviceMesh,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    param_dtype: torch.dtype | None = None,
    model_type: str | None = None,
    prepare: Callable[[WanModel], WanModel] = lambda model: model,
) -> WanModel:
    """One official DiT folder, FSDP-sharded over `mesh`, each rank reading only its own rows.

    dtype: stored dtype of the shards (None keeps the file's fp32; bf16 = --convert_model_dtype).
    prepare: applied to the meta model before sharding (Ulysses hooks), so the order of
    `parallelize_dit` holds. Keys and shapes are checked from the headers before any data is read.
    """
    folder = Path(folder)
    cfg = DiTConfig.from_json(folder / CONFIG_NAME)
    if model_type is not None and cfg.model_type != model_type:
        raise CheckpointError(folder, f"{CONFIG_NAME} says model_type {cfg.model_type}", f"a {model_type} DiT")
    shards = shard_keys(folder)
    found = read_shapes(shards)
    with torch.device("meta"):
        model = WanModel(cfg)
    check_shapes(folder, {k: tuple(v.shape) for k, v in model.state_dict().items()}, found)
    model = shard_dit(prepare(model.requires_grad_(False)), mesh, param_dtype)
    targets = model.state_dict()  # DTensors on the meta device, placements Shard(0)

    state: dict[str, Tensor] = {}
    for shard, keys in shards.items():
        try:
            with safe_open(shard, framework="pt", device=str(device)) as f:
                for key in keys:
                    shape, rows = found[key], f.get_slice(key)
                    start, stop = _local_rows(shape, targets[key])
                    if stop > start:
                        local = rows[start:stop]
                    else:  # this rank keeps no rows of a tensor with fewer rows than ranks
                        local = torch.empty((0, *shape[1:]), dtype=_FILE_DTYPES[rows.get_dtype()], device=device)
                    local = local.to(dtype) if dtype is not None else local
                    state[key] = DTensor.from_local(local, targets[key].device_mesh, targets[key].placements,
                                                    run_check=False, shape=torch.Size(shape), stride=_contiguous_stride(shape))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(shard, f"could not read tensor data, truncated or corrupt? ({err})") from None
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()

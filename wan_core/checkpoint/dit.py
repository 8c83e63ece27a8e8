"""Official Wan2.2 DiT folders → `WanModel`, strict and without a second copy in host RAM.

A folder (spec §2.1) holds `config.json` and either `diffusion_pytorch_model.safetensors.index.json`
plus the shards its `weight_map` names, or one unsharded `diffusion_pytorch_model.safetensors`.
Every key and shape is checked from the safetensors headers before any tensor data is read; then
each tensor is read memory-mapped straight to the target device and dtype and assigned into a
model built on the meta device. A14B checkpoints hold two such folders (the MoE experts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wan_core.checkpoint.errors import CheckpointError, check_shapes
from wan_core.models.dit import DiTConfig, WanModel, is_fp32_island
from wanspec.tasks import DIT_INDEX, DIT_SINGLE

CONFIG_NAME = "config.json"
INDEX_NAME, SINGLE_NAME = DIT_INDEX, DIT_SINGLE
EXPERT_SUBFOLDERS = ("high_noise_model", "low_noise_model")  # A14B MoE experts (§2.1, §6.5)
_TASK_BY_IN_DIM = {16: "t2v", 36: "i2v", 48: "ti2v"}  # patch_embedding input channels (§1.2)


def shard_keys(folder: str | Path) -> dict[Path, list[str]]:
    """Which keys each safetensors file holds, following the index's `weight_map`."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if not index.is_file():
        single = folder / SINGLE_NAME
        if single.is_file():
            return {single: sorted(_header(single))}
        raise CheckpointError(folder, f"neither {INDEX_NAME} nor {SINGLE_NAME} is here", "an official DiT folder (spec §2.1)")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not an object of file names")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(index, f"not a safetensors index ({type(err).__name__}: {err})", '{"weight_map": {key: shard file}}') from None
    shards: dict[Path, list[str]] = {}
    for key, name in weight_map.items():
        shards.setdefault(folder / name, []).append(key)
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(shard, f"listed in {INDEX_NAME} but not in the folder")
    return shards


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Key → shape from a safetensors header; no tensor data is read."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(path, f"unreadable safetensors file, truncated or corrupt? ({err})") from None


def read_shapes(shards: dict[Path, list[str]]) -> dict[str, tuple[int, ...]]:
    """All key → shape from the headers, checking each shard holds exactly what the index says."""
    found: dict[str, tuple[int, ...]] = {}
    for shard, keys in shards.items():
        header = _header(shard)
        if set(header) != set(keys):
            absent = sorted(set(keys) - set(header))
            extra = sorted(set(header) - set(keys))
            raise CheckpointError(shard, f"holds other keys than {INDEX_NAME} says (absent: {absent[:4]}, not indexed: {extra[:4]})")
        found.update(header)
    return found


def _another_layout(folder: Path, cfg: DiTConfig, found: dict[str, tuple[int, ...]], model_type: str | None) -> None:
    """Name the likely mix-up (other task, Wan2.1, diffusers layout) before the generic key check."""
    if any(k.startswith("condition_embedder.") for k in found):
        raise CheckpointError(folder, "this looks like a diffusers-format WanTransformer3DModel checkpoint", "the official Wan-AI layout (spec §2.2)")
    if any(k.startswith("img_emb.") for k in found):
        raise CheckpointError(folder, "has img_emb.* keys: this looks like a Wan2.1 image-to-video checkpoint", "a Wan2.2 DiT (no CLIP branch, spec §2.2)")
    patch = found.get("patch_embedding.weight")
    if patch is not None and len(patch) == 5 and patch[1] != cfg.in_dim:
        task = _TASK_BY_IN_DIM.get(patch[1], "unknown")
        raise CheckpointError(folder, f"patch_embedding has {patch[1]} input channels: this looks like {_an(task)} checkpoint, but {CONFIG_NAME} says {cfg.model_type} (in_dim {cfg.in_dim})")
    if model_type is not None and cfg.model_type != model_type:
        raise CheckpointError(folder, f"this looks like {_an(cfg.model_type)} checkpoint ({CONFIG_NAME} model_type, in_dim {cfg.in_dim})", f"{_an(model_type)} DiT")


def _an(task: str) -> str:
    return ("an " if task[0] in "aeiou" else "a ") + task


def load_dit(
    folder: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    model_type: str | None = None,
    keep_fp32_islands: bool = False,
) -> WanModel:
    """Load one official DiT folder onto `device`, in inference mode.

    dtype: target dtype of every parameter (None keeps the stored fp32; bf16 is upstream's
    `--convert_model_dtype`). keep_fp32_islands: leave the `FP32_ISLANDS` parameters in fp32 when
    converting, which costs a little memory and is slightly more exact than upstream.
    model_type: the task the caller expects; another one is refused with a clear message.
    """
    folder = Path(folder)
    cfg = DiTConfig.from_json(folder / CONFIG_NAME)
    shards = shard_keys(folder)
    found = read_shapes(shards)
    _another_layout(folder, cfg, found, model_type)
    with torch.device("meta"):
        model = WanModel(cfg)
    check_shapes(folder, {k: tuple(v.shape) for k, v in model.state_dict().items()}, found)

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # safetensors wants an index
    for shard, keys in shards.items():
        tensors = {}
        try:
            with safe_open(shard, framework="pt", device=str(device)) as f:
                for key in keys:
                    target = torch.float32 if keep_fp32_islands and is_fp32_island(key) else dtype
                    tensor = f.get_tensor(key)
                    tensors[key] = tensor if target is None else tensor.to(target)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(shard, f"could not read tensor data, truncated or corrupt? ({err})") from None
        model.load_state_dict(tensors, strict=False, assign=True)
        del tensors
    return model.eval().requires_grad_(False)


def expert_folders(ckpt_dir: str | Path) -> dict[str, Path]:
    """The DiT folders of a checkpoint: both A14B experts by subfolder name, or the 5B root as ''."""
    ckpt_dir = Path(ckpt_dir)
    present = [name for name in EXPERT_SUBFOLDERS if (ckpt_dir / name).is_dir()]
    if present:
        missing = [name for name in EXPERT_SUBFOLDERS if name not in present]
        if missing:
            raise CheckpointError(ckpt_dir / missing[0], "expert folder missing", f"both {' and '.join(EXPERT_SUBFOLDERS)} (A14B, spec §2.1)")
        return {name: ckpt_dir / name for name in EXPERT_SUBFOLDERS}
    if (ckpt_dir / CONFIG_NAME).is_file():
        return {"": ckpt_dir}
    raise CheckpointError(ckpt_dir, "no DiT here", f"{' and '.join(EXPERT_SUBFOLDERS)} subfolders (A14B) or {CONFIG_NAME} with weights at the root (5B)")


def load_dit_experts(
    ckpt_dir: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    model_type: str | None = None,
    keep_fp32_islands: bool = False,
) -> dict[str, WanModel]:
    """Load every DiT of a checkpoint, keyed as `expert_folders` names them."""
    return {
        name: load_dit(folder, device=device, dtype=dtype, model_type=model_type, keep_fp32_islands=keep_fp32_islands)
        for name, folder in expert_folders(ckpt_dir).items()
    }

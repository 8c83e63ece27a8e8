"""Random checkpoints in the exact layout of the published Wan2.2 folders (spec §2.1).

Tests, fixtures and the default demo load these through the same loaders as the real folders:
the same file names, the same sharded-safetensors DiT with index and `config.json`, a bf16 `.pth`
umT5 encoder with official key names, fp32 `.pth` VAEs and a `google/umt5-xxl` tokenizer folder
(the tiny stand-in from `assets/umt5-tiny/`, see `tiny_tokenizer.py`). Weights are drawn from one
seeded generator in key order, so a seed gives byte-identical files.

    python -m wan_core.testing.tiny_checkpoint --task {t2v-A14B,i2v-A14B,ti2v-5B,all} --out DIR [--seed 0]

`--full-size` writes the published architecture instead (ti2v-5B: 19 GB DiT + 11 GB T5 + 2.7 GB
VAE, ≈6.5 min on 2 cores; an A14B task ≈126 GB, 69 GB with `--dit-dtype bfloat16`), for load
and end-to-end benchmarks; `--device cuda` draws the weights on a GPU (a 69 GB A14B folder in
82–106 s on an H100 host, mostly writing). The DiT shards and the
`.pth` files are streamed tensor by tensor, so host memory holds one tensor at a time: the peak
(≈6–9 GB) is the fp32 draw of the 256384×4096 T5 embedding and its bf16 cast. The tokenizer is
the tiny stand-in either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from wan_core.models.dit import DiTConfig, WanModel
from wan_core.models.t5 import T5Config
from wan_core.testing.tiny_tokenizer import ASSET_DIR as TINY_TOKENIZER
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER, TASKS, TaskSpec, get_task

DIT_WEIGHTS = "diffusion_pytorch_model"  # diffusers file stem (§2.1)
TINY_DIT_SHARDS = 2  # ≥ 2 so loaders are exercised on the index, as with the published folders
FULL_DIT_SHARDS = {"t2v-A14B": 6, "i2v-A14B": 6, "ti2v-5B": 3}  # published counts (§2.1, inferred)
TINY_T5 = T5Config.tiny()
_STREAM_PTH_BYTES = 1 << 30  # .pth files above this are streamed (see write_pth)


def tiny_dit_config(task: TaskSpec) -> DiTConfig:
    """The DiT engineer's tiny flavor widened to 4 heads of 16 so Ulysses can split by 2 and 4.

    head_dim 16 keeps the uneven RoPE split (8 temporal, 4 + 4 spatial); text_dim = the tiny T5's.
    """
    base = DiTConfig.flavor(f"tiny-{task.model_type}")
    return dataclasses.replace(base, dim=64, ffn_dim=128, num_heads=4, text_dim=TINY_T5.dim)


def _vae(task: TaskSpec, full_size: bool) -> nn.Module:
    """The task's VAE module (tiny or published config), built on the meta device: shapes only."""
    with torch.device("meta"):
        if task.vae_checkpoint == "Wan2.1_VAE.pth":
            from wan_core.models.vae2_1 import Wan21VAE, Wan21VAEConfig

            return Wan21VAE(Wan21VAEConfig() if full_size else Wan21VAEConfig.tiny())
        from wan_core.models.vae2_2 import Wan22VAE, Wan22VAEConfig

        return Wan22VAE(Wan22VAEConfig() if full_size else Wan22VAEConfig.tiny())


def _meta_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- random weights ----------------------------------------------------------------------------

def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """fp32 weights that keep activations O(1): norm gains ≈ 1, matrices N(0, 0.5²/fan_in), biases ≈ 0.

    Drawn on the generator's device (a CUDA generator draws a full-size A14B folder's weights in
    seconds where the CPU's takes minutes; the files then differ from the CPU-drawn ones)."""
    noise = torch.randn(shape, generator=generator, device=generator.device)
    leaf = name.rsplit(".", 2)
    if leaf[-1] == "gamma" or (len(shape) == 1 and "norm" in name and leaf[-1] == "weight"):
        return noise.mul_(0.05).add_(1.0)
    if len(shape) == 1:
        return noise.mul_(0.02)
    return noise.mul_(0.5 / math.sqrt(math.prod(shape[1:])))


def random_state_dict(
    shapes: Mapping[str, tuple[int, ...]], generator: torch.Generator
) -> Iterable[tuple[str, Tensor]]:
    """(key, tensor) in key order, drawn one at a time so a full-size model never sits in memory."""
    for name, shape in shapes.items():
        yield name, random_tensor(name, shape, generator)


# ---- file writers (streaming) ------------------------------------------------------------------

def _host_bytes(tensor: Tensor, dtype: torch.dtype) -> memoryview:
    """The tensor's bytes in `dtype`, cast where it was drawn (half the copy for bf16 from a GPU)."""
    return memoryview(tensor.to(dtype).contiguous().cpu().view(torch.uint8).numpy())


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _write_safetensors(
    path: Path, shapes: Mapping[str, tuple[int, ...]], tensors: Iterable[tuple[str, Tensor]],
    dtype: torch.dtype,
) -> int:
    """Write a .safetensors file from a stream of tensors; returns its data bytes.

    The header is computed from the shapes first, then each tensor's bytes are appended as it
    arrives, so only one tensor is held at a time (`safetensors.torch.save_file` needs them all).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for (name, tensor), expected in zip(tensors, shapes, strict=True):
            if name != expected or tuple(tensor.shape) != tuple(shapes[name]):
                raise RuntimeError(f"stream out of order: got {name}, expected {expected}")
            f.write(_host_bytes(tensor, dtype))
    return offset


def write_sharded_dit(
    folder: Path, config: DiTConfig, generator: torch.Generator, num_shards: int,
    dtype: torch.dtype = torch.float32,
) -> None:
    """config.json + `diffusion_pytorch_model.safetensors.index.json` + shards (§2.1), fp32 as
    published unless `dtype` says otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json(folder / "config.json")
    with torch.device("meta"):
        shapes = _meta_shapes(WanModel(config))
    # Split in key order into shards of about equal bytes, as diffusers' `max_shard_size` does.
    sizes = [math.prod(s) * torch.empty((), dtype=dtype).element_size() for s in shapes.values()]
    target = sum(sizes) / num_shards
    groups: list[dict[str, tuple[int, ...]]] = [{} for _ in range(num_shards)]
    done = 0
    for (name, shape), size in zip(shapes.items(), sizes):
        index = min(int(done // target), num_shards - 1)
        groups[index][name] = shape
        done += size
    if any(not g for g in groups):
        raise ValueError(f"{len(shapes)} tensors cannot fill {num_shards} shards")
    stream = iter(random_state_dict(shapes, generator))
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        shard = f"{DIT_WEIGHTS}-{i:05d}-of-{num_shards:05d}.safetensors"
        total += _write_safetensors(
            folder / shard, group, (next(stream) for _ in range(len(group))), dtype
        )
        weight_map.update(dict.fromkeys(group, shard))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{DIT_WEIGHTS}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_pth(
    path: Path, shapes: Mapping[str, tuple[int, ...]], tensors: Iterable[tuple[str, Tensor]],
    dtype: torch.dtype,
) -> None:
    """A `torch.save`d state dict as the published `.pth` files are.

    Small files are saved whole. Large ones (full-size T5: 11.4 GB) are streamed:
    `torch.serialization.skip_data` writes the archive with the right record sizes and no bytes,
    then each record is filled in place, one tensor in memory at a time. Their zip CRC32s are
    left at 0 (saved with CRCs off); torch.load does not check them.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    if sum(math.prod(s) for s in shapes.values()) * itemsize < _STREAM_PTH_BYTES:
        torch.save({name: t.to(dtype).cpu() for name, t in tensors}, path)
        return
    with FakeTensorMode():  # tensors with shapes and no memory, saved as CPU tensors
        fake = {k: torch.empty(s, dtype=dtype) for k, s in shapes.items()}
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        with torch.serialization.skip_data(materialize_fake_tensors=True):
            torch.save(fake, path)
    finally:
        torch.serialization.set_crc32_options(crc)
    offsets = _record_offsets(path)  # storage records are data/0, data/1, … in the dict's order
    with open(path, "r+b") as f:
        for i, ((name, tensor), expected) in enumerate(zip(tensors, shapes, strict=True)):
            if name != expected:
                raise RuntimeError(f"stream out of order: got {name}, expected {expected}")
            f.seek(offsets[str(i)])
            f.write(_host_bytes(tensor, dtype))


def _record_offsets(path: Path) -> dict[str, int]:
    """Byte offset of each storage record's data inside a torch zip archive."""
    reader = torch._C.PyTorchFileReader(str(path))
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if "/data/" in n and not n.endswith("/")]
    prefix = names[0].split("/", 1)[0] + "/"
    return {n.rsplit("/", 1)[1]: reader.get_record_offset(n[len(prefix):]) for n in names}


def write_t5(out_dir: Path, config: T5Config, generator: torch.Generator) -> None:
    """`models_t5_umt5-xxl-enc-bf16.pth` (bf16, official keys) and the `google/umt5-xxl` folder.

    The tokenizer is always the tiny stand-in (the real one cannot be shipped); its 467 tokens
    fit any encoder with at least that many embedding rows.
    """
    shapes = config.official_shapes()
    write_pth(out_dir / T5_CHECKPOINT, shapes, random_state_dict(shapes, generator), torch.bfloat16)
    tokenizer = out_dir / T5_TOKENIZER
    if tokenizer.exists():
        shutil.rmtree(tokenizer)
    shutil.copytree(TINY_TOKENIZER, tokenizer)


# ---- whole folders -----------------------------------------------------------------------------

def write_checkpoint(
    task: str, out_dir: str | Path, *, seed: int = 0, full_size: bool = False,
    dit_dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> Path:
    """Write a random checkpoint folder of `task` in the official layout; returns the folder.

    Tiny by default (seconds, a few MB); `full_size=True` uses the published architecture.
    `dit_dtype=torch.bfloat16` halves the DiT shards (an A14B folder: 126 → 69 GB), for machines
    whose disk cannot hold the published fp32 ones; the loaders read either. `device`: where the
    weights are drawn ("cuda" for full-size folders: minutes → seconds); a seed gives the same
    files on the same device kind.
    """
    spec = get_task(task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device).manual_seed(seed)
    dit = DiTConfig.flavor(task) if full_size else tiny_dit_config(spec)
    shards = FULL_DIT_SHARDS[task] if full_size else TINY_DIT_SHARDS
    for expert in spec.experts:  # ("high_noise_model", "low_noise_model") or ("",) = root
        write_sharded_dit(out / expert, dit, generator, shards, dit_dtype)

    write_t5(out, T5Config() if full_size else TINY_T5, generator)
    vae_shapes = _meta_shapes(_vae(spec, full_size))
    write_pth(out / spec.vae_checkpoint, vae_shapes, random_state_dict(vae_shapes, generator),
              torch.float32)
    return out


def write_tiny_checkpoint(task: str, out_dir: str | Path, seed: int = 0) -> Path:
    """The tiny random checkpoint of `task` used by tests and fixtures."""
    return write_checkpoint(task, out_dir, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write random Wan2.2 checkpoints in the official layout.")
    parser.add_argument("--task", required=True, choices=[*TASKS, "all"])
    parser.add_argument("--out", required=True, type=Path,
                        help="folder to write; with --task all, one subfolder per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-size", action="store_true",
                        help="published architecture (≈20 GB for ti2v-5B) instead of tiny")
    parser.add_argument("--dit-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="DiT shard dtype (published: float32; bfloat16 halves them)")
    parser.add_argument("--device", default="cpu",
                        help="where to draw the weights: cuda is much faster for --full-size")
    args = parser.parse_args(argv)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    for task in tasks:
        out = args.out / task if args.task == "all" else args.out
        print(write_checkpoint(task, out, seed=args.seed, full_size=args.full_size,
                               dit_dtype=getattr(torch, args.dit_dtype), device=args.device))


if __name__ == "__main__":
    main()

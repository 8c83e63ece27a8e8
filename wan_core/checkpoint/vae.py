"""`Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` → `Wan21VAE` / `Wan22VAE`, strict and without a second copy.

The files are plain `torch.save`d fp32 state dicts with the official names (spec §2.1, §2.4) and no
config: which VAE it is and its architecture are read off the tensor shapes (`from_state_dict`),
every key and shape is checked against a model built on the meta device from that architecture,
and the tensors — memory-mapped, not read into RAM first — are moved straight to the target device
and dtype and assigned. Every problem with the file is one `CheckpointError` naming it, raised by
`open_vae`, which checks without moving anything; `VAEFile.load` moves it, where and when the
caller wants (the pipelines: on a thread while the DiT samples).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from wan_core.checkpoint.errors import CheckpointError, check_shapes
from wan_core.models.vae2_1 import Wan21VAE, Wan21VAEConfig
from wan_core.models.vae2_2 import Wan22VAE, Wan22VAEConfig

VAEKind = Literal["2.1", "2.2"]
_KINDS: dict[str, tuple[type[Wan21VAE] | type[Wan22VAE], type[Wan21VAEConfig] | type[Wan22VAEConfig], str]] = {
    "2.1": (Wan21VAE, Wan21VAEConfig, "Wan2.1_VAE.pth"),  # t2v-A14B, i2v-A14B (§1.2)
    "2.2": (Wan22VAE, Wan22VAEConfig, "Wan2.2_VAE.pth"),  # ti2v-5B (§1.2)
}
# `encoder.conv1` input channels tell the two apart: RGB (2.1) or 2×2-patchified RGB (2.2, §5.3).
_KIND_BY_IN_CHANNELS = {3: "2.1", 12: "2.2"}
_PROBE = "encoder.conv1.weight"


def _read(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load` the file as tensors only; memory-mapped when it is in the (default) zip format."""
    if not path.is_file():
        raise CheckpointError(path, "no such file", "Wan2.1_VAE.pth or Wan2.2_VAE.pth from the checkpoint folder")
    # mmap needs the zip container; a legacy-format save still loads, just read into RAM.
    mmap = zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            path, f"cannot be read by torch.load ({type(err).__name__}: {err})", "a torch.save'd state dict"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a state dict of tensors", "a VAE state dict")
    return state


@dataclass
class VAEFile:
    """A checked VAE file: its model built on the meta device and its tensors memory-mapped."""

    path: Path
    model: Wan21VAE | Wan22VAE
    state: dict[str, torch.Tensor]

    def load(self, *, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Wan21VAE | Wan22VAE:
        """The model on `device` in `dtype` (fp32 = official, §5.5; bf16 is opt-in). Once per file:
        each tensor goes from the mapped file straight to device and dtype (no staging copy there)
        and is assigned into the meta model, not copied again."""
        self.model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in self.state.items()}, strict=True, assign=True)
        return self.model.eval().requires_grad_(False)


def open_vae(path: str | Path, *, kind: VAEKind | None = None) -> VAEFile:
    """Check the VAE file (keys, shapes, dtypes, which VAE) without loading its tensors.

    `kind` ("2.1" or "2.2") is what the task needs; a file of the other kind is refused.
    """
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(_KINDS)}")
    path = Path(path)
    state = _read(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if _PROBE not in shapes or len(shapes[_PROBE]) != 5:
        sample = ", ".join(sorted(shapes)[:3]) or "none"
        raise CheckpointError(path, f"is not a Wan VAE state dict (no 5-D {_PROBE}; keys: {sample}, …)", "a VAE file")
    found = _KIND_BY_IN_CHANNELS.get(shapes[_PROBE][1])
    if found is None:
        raise CheckpointError(
            path, f"{_PROBE} takes {shapes[_PROBE][1]} input channels", "3 (Wan2.1 VAE) or 12 (Wan2.2 VAE)"
        )
    model_cls, config_cls, filename = _KINDS[found]
    if kind is not None and kind != found:
        raise CheckpointError(path, f"is a Wan{found} VAE ({filename})", f"the Wan{kind} VAE, {_KINDS[kind][2]}")
    try:
        config = config_cls.from_state_dict(shapes)
    except ValueError as err:
        raise CheckpointError(path, f"not a Wan{found} VAE layout: {err}", filename) from err
    with torch.device("meta"):
        model = model_cls(config)
    check_shapes(path, {k: tuple(v.shape) for k, v in model.state_dict().items()}, shapes)
    not_float = sorted(k for k, v in state.items() if not v.is_floating_point())
    if not_float:
        raise CheckpointError(path, f"non-floating tensors: {', '.join(not_float[:8])}", "fp32 weights")
    return VAEFile(path, model, state)


def load_vae(
    path: str | Path,
    *,
    kind: VAEKind | None = None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Wan21VAE | Wan22VAE:
    """Build the VAE the file holds on `device` in `dtype` (fp32 = official, §5.5; bf16 is opt-in).

    `kind` ("2.1" or "2.2") is what the task needs; a file of the other kind is refused.
    """
    return open_vae(path, kind=kind).load(device=device, dtype=dtype)

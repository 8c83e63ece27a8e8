"""Wan2.2 VAE (z_dim 48, stride 4×16×16), used by TI2V-5B.

Matches `wan/modules/vae2_2.py` of Wan-Video/Wan2.2 (`patchify`/`unpatchify`, `AvgDown3D`, `DupUp3D`,
`Down_ResidualBlock`, `Up_ResidualBlock`, `Encoder3d`, `Decoder3d`, `WanVAE_` and the `Wan2_2_VAE`
wrapper). Spec: shared/wan22-spec.md §5.3 (architecture), §2.4 (parameter names: `Wan2.2_VAE.pth`
loads unconverted), §2.5 (latent constants), §5.4–5.5 (chunking, scaling, dtype).
The blocks and the chunked encode/decode loops are in `vae_blocks.py`, shared with Wan2.1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from wan_core.models.vae_blocks import (
    Cache,
    CausalConv3d,
    ChunkedVAE,
    OutputHead,
    Resample,
    ResidualBlock,
    VAEConfig,
    child_indices,
    last_temporal_upsample,
    middle_blocks,
    run_layers,
    shape_of,
)

# Wan2_2_VAE.__init__ in wan/modules/vae2_2.py (spec §2.5): per-channel latent mean and std.
LATENT_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)  # fmt: skip
LATENT_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)  # fmt: skip

PATCH = 2  # 2×2 pixel patchify around the network (§5.3): RGB 3 → 12 channels
IN_CHANNELS = 3 * PATCH * PATCH


def patchify(x: Tensor) -> Tensor:
    """[B, 3, F, 2H, 2W] → [B, 12, F, H, W]; channel c·4 + r·2 + q holds row offset q, column offset r."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f, h // PATCH, PATCH, w // PATCH, PATCH)  # (B, C, F, H, q, W, r)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * PATCH * PATCH, f, h // PATCH, w // PATCH)


def unpatchify(x: Tensor) -> Tensor:
    """Exact inverse of `patchify`: [B, 12, F, H, W] → [B, 3, F, 2H, 2W]."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c // (PATCH * PATCH), PATCH, PATCH, f, h, w)  # (B, C, r, q, F, H, W)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, c // (PATCH * PATCH), f, h * PATCH, w * PATCH)


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of an encoder stage (§5.3): fold each f_t×f_s×f_s cell into channels,
    then average consecutive channel groups down to `out_dim`. Zero frames pad the front of each chunk."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.group = in_dim * factor_t * factor_s * factor_s // out_dim

    def forward(self, x: Tensor) -> Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)  # (B, C, T', ft, H', fs, W', fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, ft, fs, fs, T', H', W')
        return x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of a decoder stage (§5.3): repeat channels, unfold them into an
    f_t×f_s×f_s cell; on the first chunk the first f_t − 1 frames are dropped (1 frame stays 1)."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x: Tensor, first_chunk: bool) -> Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)  # (B, out·ft·fs·fs, T, H, W)
        x = x.reshape(b, self.out_dim, ft, fs, fs, t, h, w)  # channel ((o·ft + i_t)·fs + i_h)·fs + i_w
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, out, T, ft, H, fs, W, fs)
        x = x.reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first_chunk else x

    def add_to(self, out: Tensor, x: Tensor, first_chunk: bool) -> Tensor:
        """`out + self(x, first_chunk)`, added into `out` in place (the same sums).

        Where the repeat factor is a product of the fastest cell digits (i_w; i_h·i_w; all three —
        every stage of the published layout), repeated channel c·repeats + k holds x's channel c and
        k runs over those digits, so x is added through a broadcast view: the repeated and unfolded
        tensors (up to ~1 GB at 720P) are never made. Otherwise it falls back to `forward`.
        """
        ft, fs = self.factor_t, self.factor_s
        t, h, w = x.shape[2:]
        cell, rest = [ft, fs, fs], self.repeats  # digits (i_t, i_h, i_w), i_w the fastest
        for i in reversed(range(3)):
            if rest % cell[i] or rest == 1:
                break
            rest //= cell[i]
            cell[i] = 1  # broadcast over this digit
        if rest != 1 or (first_chunk and ft > 1 and t != 1):
            return out.add_(self(x, first_chunk))
        src = x.unflatten(1, (self.out_dim, *cell)).permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, out, T, i_t, H, i_h, W, i_w)
        frames = (t, ft)
        if first_chunk and ft > 1:  # one frame: the last of the cell (the first ft − 1 are dropped)
            src, frames = src[:, :, :, -1:], (t, 1)
        dst = out.unflatten(2, frames).unflatten(4, (h, fs)).unflatten(6, (w, fs))
        dst.add_(src)
        return out


class Down_ResidualBlock(nn.Module):  # noqa: N801 — official class name
    """Encoder stage: `downsamples` (ResidualBlocks, then an optional Resample) + AvgDown3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        return run_layers(self.downsamples, x, cache) + self.avg_shortcut(x)


class Up_ResidualBlock(nn.Module):  # noqa: N801 — official class name
    """Decoder stage: `upsamples` (ResidualBlocks, then an optional Resample) + DupUp3D shortcut where
    the stage upsamples (the last stage has neither)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2) if up else None
        layers: list[nn.Module] = []
        for _ in range(num_res_blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: Tensor, cache: Cache, first_chunk: bool) -> Tensor:
        out = run_layers(self.upsamples, x, cache)
        return self.avg_shortcut.add_to(out, x, first_chunk) if self.avg_shortcut is not None else out


@dataclass(frozen=True, kw_only=True)
class Wan22VAEConfig(VAEConfig):
    """Defaults = the published file (§5.3: `Wan2_2_VAE(z_dim=48, c_dim=160)`, decoder base 256)."""

    dim: int = 160
    z_dim: int = 48
    dec_dim: int = 256

    patch_size: ClassVar[int] = PATCH
    latent_channels: ClassVar[int] = len(LATENT_MEAN)

    @classmethod
    def tiny(cls) -> Wan22VAEConfig:
        """Base dims 8/16, same stages (so the same key pattern) and z_dim as the real file; for tests."""
        return cls(dim=8, dec_dim=16)

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, tuple[int, ...]]) -> Wan22VAEConfig:
        """Read the architecture off tensor shapes; ValueError if it is not a Wan2.2 VAE layout.

        `encoder.conv1` gives base dim and input channels, `conv2` z_dim; each `encoder.downsamples.i`
        is a stage whose inner `downsamples.j` are ResidualBlocks then a Resample (`time_conv` if
        temporal); the decoder head's input width gives the decoder base dim.
        """
        dim, in_channels = shape_of(shapes, "encoder.conv1.weight")[:2]
        if in_channels != IN_CHANNELS:
            raise ValueError(f"encoder.conv1 takes {in_channels} input channels, a Wan2.2 VAE takes {IN_CHANNELS}")
        stages = child_indices(shapes, "encoder.downsamples.")
        if not stages:
            raise ValueError("no encoder.downsamples.* stages")
        res_blocks, dim_mult, temporal = [], [], []
        for i in stages:
            inner = f"encoder.downsamples.{i}.downsamples."
            blocks = [j for j in child_indices(shapes, inner) if f"{inner}{j}.residual.2.weight" in shapes]
            if not blocks:
                raise ValueError(f"stage encoder.downsamples.{i} holds no residual blocks")
            res_blocks.append(len(blocks))
            dim_mult.append(shape_of(shapes, f"{inner}{blocks[-1]}.residual.2.weight")[0] // dim)
            if f"{inner}{len(blocks)}.resample.1.weight" in shapes:
                temporal.append(f"{inner}{len(blocks)}.time_conv.weight" in shapes)
        if len(set(res_blocks)) != 1:
            raise ValueError(f"encoder stages hold {res_blocks} residual blocks; expected the same number in each")
        return cls(
            dim=dim,
            z_dim=shape_of(shapes, "conv2.weight")[0],
            dec_dim=shape_of(shapes, "decoder.head.2.weight")[1] // dim_mult[0],
            dim_mult=tuple(dim_mult),
            num_res_blocks=res_blocks[0],
            temporal_downsample=tuple(temporal),
        )


class Encoder3d(nn.Module):
    """conv1 (12 channels in) → Down_ResidualBlock stages → middle → head (2z channels)."""

    def __init__(self, config: Wan22VAEConfig) -> None:
        super().__init__()
        dims = [config.dim * m for m in (1, *config.dim_mult)]
        last = len(config.dim_mult) - 1
        self.conv1 = CausalConv3d(IN_CHANNELS, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*(
            Down_ResidualBlock(
                dims[i], dims[i + 1], config.num_res_blocks,
                temporal=i < last and config.temporal_downsample[i], down=i < last,
            )
            for i in range(len(config.dim_mult))
        ))  # fmt: skip
        self.middle = middle_blocks(dims[-1])
        self.head = OutputHead(dims[-1], 2 * config.z_dim)

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        x = self.conv1(x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        x = run_layers(self.middle, x, cache)
        return self.head(x, cache)


class Decoder3d(nn.Module):
    """conv1 → middle → Up_ResidualBlock stages → head (12 channels out, un-patchified by the caller)."""

    def __init__(self, config: Wan22VAEConfig) -> None:
        super().__init__()
        dims = [config.dec_dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
        temporal_upsample = config.temporal_downsample[::-1]
        last = len(config.dim_mult) - 1
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        self.upsamples = nn.Sequential(*(
            Up_ResidualBlock(
                dims[i], dims[i + 1], config.num_res_blocks + 1,
                temporal=i < last and temporal_upsample[i], up=i < last,
            )
            for i in range(len(config.dim_mult))
        ))  # fmt: skip
        self.head = OutputHead(dims[-1], IN_CHANNELS)
        self.split = last_temporal_upsample(self.upsamples)

    def temporal(self, x: Tensor, cache: Cache, first_chunk: bool) -> Tensor:
        """conv1, middle and the stages up to the last temporal upsample."""
        x = self.conv1(x, cache)
        x = run_layers(self.middle, x, cache)
        for stage in self.upsamples[: self.split]:
            x = stage(x, cache, first_chunk)
        return x

    def spatial(self, x: Tensor, cache: Cache, first_chunk: bool) -> Tensor:
        """The rest: per-frame and causal layers, so any split of the frames gives the same result."""
        for stage in self.upsamples[self.split :]:
            x = stage(x, cache, first_chunk)
        return self.head(x, cache)

    def forward(self, x: Tensor, cache: Cache, first_chunk: bool) -> Tensor:
        return self.spatial(self.temporal(x, cache, first_chunk), cache, first_chunk)


class Wan22VAE(ChunkedVAE):
    """`WanVAE_` with the `Wan2_2_VAE` wrapper's normalisation: `encode`/`decode` of `ChunkedVAE`
    around a 2×2 pixel patchify."""

    latent_mean = LATENT_MEAN
    latent_std = LATENT_STD

    def __init__(self, config: Wan22VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or Wan22VAEConfig()
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    def _encoder_input(self, videos: Tensor) -> Tensor:
        return patchify(videos)

    def _decode_chunk(self, x: Tensor, cache: Cache, first_chunk: bool) -> Iterator[Tensor]:
        for piece in self._pieces(self.decoder.temporal(x, cache, first_chunk)):
            yield unpatchify(self.decoder.spatial(piece, cache, first_chunk))

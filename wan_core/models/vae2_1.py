"""Wan2.1 VAE (z_dim 16, stride 4×8×8), used by T2V-A14B and I2V-A14B.

Matches `wan/modules/vae2_1.py` of Wan-Video/Wan2.2 (`Encoder3d`, `Decoder3d`, `WanVAE_` and the
`Wan2_1_VAE` wrapper). Spec: shared/wan22-spec.md §5.2 (architecture), §2.4 (parameter names:
`Wan2.1_VAE.pth` loads unconverted), §2.5 (latent constants), §5.4–5.5 (chunking, scaling, dtype).
The blocks and the chunked encode/decode loops are in `vae_blocks.py`, shared with Wan2.2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

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

# Wan2_1_VAE.__init__ in wan/modules/vae2_1.py (spec §2.5): per-channel latent mean and std.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip

IN_CHANNELS = 3  # RGB straight into `encoder.conv1` (Wan2.2 patchifies to 12)


@dataclass(frozen=True, kw_only=True)
class Wan21VAEConfig(VAEConfig):
    """Defaults = the published file (§5.2: `_video_vae` cfg with dim 96, z_dim 16)."""

    dim: int = 96
    z_dim: int = 16

    latent_channels: ClassVar[int] = len(LATENT_MEAN)

    @classmethod
    def tiny(cls) -> Wan21VAEConfig:
        """Base dim 8, same stages (so the same key pattern) and z_dim as the real file; for tests."""
        return cls(dim=8)

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, tuple[int, ...]]) -> Wan21VAEConfig:
        """Read the architecture off tensor shapes; ValueError if it is not a Wan2.1 VAE layout.

        `encoder.conv1` gives base dim and input channels, `conv2` z_dim; `encoder.downsamples.N` is a
        flat list of ResidualBlocks cut into stages by Resamples (those with `time_conv` are temporal).
        """
        dim, in_channels = shape_of(shapes, "encoder.conv1.weight")[:2]
        if in_channels != IN_CHANNELS:
            raise ValueError(f"encoder.conv1 takes {in_channels} input channels, a Wan2.1 VAE takes {IN_CHANNELS}")
        stage_blocks, dim_mult, temporal = [], [], []
        blocks, width = 0, dim
        for n in child_indices(shapes, "encoder.downsamples."):
            prefix = f"encoder.downsamples.{n}."
            if prefix + "resample.1.weight" in shapes:
                stage_blocks.append(blocks)
                dim_mult.append(width // dim)
                temporal.append(prefix + "time_conv.weight" in shapes)
                blocks = 0
            else:
                width = shape_of(shapes, prefix + "residual.2.weight")[0]
                blocks += 1
        stage_blocks.append(blocks)
        dim_mult.append(width // dim)
        if len(set(stage_blocks)) != 1 or not stage_blocks[0]:
            raise ValueError(f"encoder stages hold {stage_blocks} residual blocks; expected the same number in each")
        return cls(
            dim=dim,
            z_dim=shape_of(shapes, "conv2.weight")[0],
            dim_mult=tuple(dim_mult),
            num_res_blocks=stage_blocks[0],
            temporal_downsample=tuple(temporal),
        )


class Encoder3d(nn.Module):
    """conv1 → stages of ResidualBlocks + Resample (flat `downsamples`) → middle → head (2z channels)."""

    def __init__(self, config: Wan21VAEConfig) -> None:
        super().__init__()
        dims = [config.dim * m for m in (1, *config.dim_mult)]
        self.conv1 = CausalConv3d(IN_CHANNELS, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(config.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if config.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle_blocks(dims[-1])
        self.head = OutputHead(dims[-1], 2 * config.z_dim)

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        x = self.conv1(x, cache)
        x = run_layers(self.downsamples, x, cache)
        x = run_layers(self.middle, x, cache)
        return self.head(x, cache)


class Decoder3d(nn.Module):
    """conv1 → middle → stages of ResidualBlocks + Resample (flat `upsamples`) → head (RGB).

    The upsample Conv2d halves the width, so every stage after the first starts at half width (§2.4).
    """

    def __init__(self, config: Wan21VAEConfig) -> None:
        super().__init__()
        dims = [config.dim * m for m in (config.dim_mult[-1], *reversed(config.dim_mult))]
        temporal_upsample = config.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            in_dim = in_dim // 2 if i > 0 else in_dim
            for _ in range(config.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(config.dim_mult) - 1:
                mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
                layers.append(Resample(out_dim, mode, up_dim=out_dim // 2))
        self.upsamples = nn.Sequential(*layers)
        self.head = OutputHead(dims[-1], IN_CHANNELS)
        self.split = last_temporal_upsample(self.upsamples)

    def temporal(self, x: Tensor, cache: Cache) -> Tensor:
        """conv1, middle and the upsamples up to the last temporal one."""
        x = self.conv1(x, cache)
        x = run_layers(self.middle, x, cache)
        return run_layers(self.upsamples[: self.split], x, cache)

    def spatial(self, x: Tensor, cache: Cache) -> Tensor:
        """The rest: per-frame and causal layers, so any split of the frames gives the same result."""
        return self.head(run_layers(self.upsamples[self.split :], x, cache), cache)

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        return self.spatial(self.temporal(x, cache), cache)


class Wan21VAE(ChunkedVAE):
    """`WanVAE_` with the `Wan2_1_VAE` wrapper's normalisation: `encode`/`decode` of `ChunkedVAE`."""

    latent_mean = LATENT_MEAN
    latent_std = LATENT_STD

    def __init__(self, config: Wan21VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or Wan21VAEConfig()
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    def _decode_chunk(self, x: Tensor, cache: Cache, first_chunk: bool) -> Iterator[Tensor]:
        # The first chunk needs no special case here (only Resample's).
        for piece in self._pieces(self.decoder.temporal(x, cache)):
            yield self.decoder.spatial(piece, cache)

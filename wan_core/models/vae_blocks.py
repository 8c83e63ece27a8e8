"""Building blocks shared by the Wan2.1 and Wan2.2 VAEs, and their chunked encode/decode loops.

Matches the classes both `wan/modules/vae2_1.py` and `wan/modules/vae2_2.py` of Wan-Video/Wan2.2
define (identically) — CausalConv3d, RMS_norm, ResidualBlock, AttentionBlock, Resample — and the
`encode`/`decode` bodies of their `WanVAE_`. Spec: shared/wan22-spec.md §5.1 (blocks), §5.4 (temporal
chunking and caches), §5.5 (scaling, dtype, I/O range), §2.4 (parameter names).

Temporal state. The official code walks a flat list of caches with a running index; here each
module that needs history keeps it in a `Cache` dict keyed by the module itself, so the rule for a
conv lives in that conv and the order of calls cannot drift out of step with the list.

Dtype. The official VAEs run in fp32 (§5.5). Running the modules in bf16 is an opt-in (the weights
are cast by the loader); in that mode fp32 is kept where a rounding would otherwise compound:
the RMS normalisation is computed in fp32 (`RMS_norm`), the latent mean/std normalisation is fp32
(`ChunkedVAE.encode`/`decode`) and the decoded video is returned in fp32. The official fp32 cast
around nearest-exact upsampling is dropped: a copy is exact in any dtype (`Resample`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per-chunk temporal state (§5.4): for a causal conv its last input frames (B, C, ≤2, H, W); for an
# encoder `downsample3d` the last frame after the spatial step (B, C, 1, H, W).
Cache = dict[nn.Module, Tensor]

ResampleMode = Literal["upsample2d", "upsample3d", "downsample2d", "downsample3d"]


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Architecture numbers common to both VAEs (official `_video_vae` cfg). No attention outside the
    middle blocks: the official `attn_scales=[]` is the only value the published files use."""

    dim: int
    z_dim: int
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    patch_size: ClassVar[int] = 1  # pixel patchify before the encoder (2.2: 2)
    latent_channels: ClassVar[int]  # channels of the published latent mean/std (§2.5)

    def __post_init__(self) -> None:
        if self.z_dim != self.latent_channels:
            raise ValueError(f"z_dim {self.z_dim}: the published latent mean/std (§2.5) have {self.latent_channels}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"{len(self.dim_mult)} stages need {len(self.dim_mult) - 1} temporal_downsample flags, "
                f"got {len(self.temporal_downsample)}"
            )

    @property
    def stride(self) -> tuple[int, int, int]:
        """(t, h, w) compression: one 2× per temporal / spatial encoder stage, times the patch."""
        spatial = self.patch_size * 2 ** (len(self.dim_mult) - 1)
        return (2 ** sum(self.temporal_downsample), spatial, spatial)


def shape_of(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    """The shape of `key`, or a ValueError naming the key (read by `from_state_dict`)."""
    if key not in shapes:
        raise ValueError(f"no tensor {key!r}")
    return tuple(shapes[key])


def child_indices(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[int]:
    """Sorted integer children of `prefix` (e.g. the N of every `encoder.downsamples.N.*`)."""
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    return sorted(found)


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding `2·p_t` frames in front only (§5.1); with a cache, the previous
    chunk's last input frames replace that front padding, so chunked = whole-sequence."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=0)
        p_t, p_h, p_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.front = 2 * p_t  # frames of history the conv needs (2 for k=3)
        self.spatial_pad = (p_w, p_w, p_h, p_h)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        front = self.front
        if cache is not None and front > 0:
            prev = cache.get(self)  # (B, C, ≤front, H, W) or None on the first chunk
            keep = x[:, :, -front:]
            if keep.shape[2] < front and prev is not None:
                keep = torch.cat([prev, keep], dim=2)[:, :, -front:]
            cache[self] = keep.clone()  # clone: a slice would pin the whole chunk in memory
            if prev is not None:
                x = torch.cat([prev, x], dim=2)  # (B, C, n_prev + T, H, W)
                front -= prev.shape[2]
        x = F.pad(x, (*self.spatial_pad, front, 0))
        return super().forward(x)


class RMS_norm(nn.Module):  # noqa: N801 — official class name
    """`F.normalize` over channels · √C · γ (§5.1); γ is [C,1,1,1] for videos, [C,1,1] per frame."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            # bf16 opt-in: normalise in fp32 so the norm is not rounded before the division.
            return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """`shortcut(x) + conv(SiLU(RMS(conv(SiLU(RMS(x))))))` with causal k=3 convs (§5.1)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Identity(),  # the official Dropout(0.0): keeps the second conv at `residual.6`
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame, plus residual (§5.1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B·T, C, H, W)
        qkv = self.to_qkv(self.norm(y)).reshape(b * t, 1, 3 * c, h * w)  # (B·T, 1, 3C, HW)
        q, k, v = qkv.permute(0, 1, 3, 2).contiguous().chunk(3, dim=-1)  # each (B·T, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/√C
        y = y.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)  # (B·T, C, H, W)
        y = self.proj(y).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        return x + y


class Resample(nn.Module):
    """Per-frame 2× spatial up/down step, with a temporal conv for the `*3d` modes (§5.1, §5.4).

    `up_dim` is the upsample Conv2d's output width: dim // 2 in Wan2.1, dim in Wan2.2 (§2.4).
    """

    def __init__(self, dim: int, mode: ResampleMode, up_dim: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            # Nearest-exact copies values, so it runs in the working dtype: bitwise the same as the
            # official fp32 round trip (`Upsample.forward(x.float()).type_as(x)`) without the fp32 copy.
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, up_dim if up_dim is not None else dim // 2, 3, padding=1),
            )
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        b, c, t, h, w = x.shape
        if self.mode == "upsample3d":
            if self.time_conv not in cache:
                # First chunk: the frame passes through (1 frame stays 1) and the next chunk's temporal
                # conv sees zero history, not this frame (the official "Rep" marker, §5.4).
                cache[self.time_conv] = torch.zeros_like(x[:, :, -1:])
            else:
                x = self.time_conv(x, cache)  # (B, 2C, T, H, W): channel half i = frame 2t+i
                x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        t = x.shape[2]
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # (B·T, C', H', W')
        x = y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C', T, H', W')
        if self.mode == "downsample3d":
            prev = cache.get(self)  # (B, C, 1, H', W'): last frame of the previous chunk
            cache[self] = x[:, :, -1:].clone()
            if prev is not None:  # first chunk: its one frame passes through (§5.4)
                x = self.time_conv(torch.cat([prev, x], dim=2))  # stride 2: (B, C, T/2, H', W')
        return x


def run_layers(layers: nn.Sequential, x: Tensor, cache: Cache) -> Tensor:
    """Apply `layers` in order, handing the cache to the ones that carry temporal state."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, (CausalConv3d, ResidualBlock, Resample)) else layer(x)
    return x


def middle_blocks(dim: int) -> nn.Sequential:
    """`middle.0/1/2` of encoder and decoder: ResidualBlock, AttentionBlock, ResidualBlock (§2.4)."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def output_head(dim: int, out_dim: int) -> nn.Sequential:
    """`head.0/.2`: RMS norm, SiLU, causal k=3 conv (§2.4)."""
    return nn.Sequential(RMS_norm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class ChunkedVAE(nn.Module):
    """Top level of both VAEs: `encoder`, `conv1`, `conv2`, `decoder` (official names, §2.4) and the
    chunked, normalised `encode`/`decode` of §5.4–5.5. Subclasses build the four modules."""

    config: VAEConfig
    encoder: nn.Module
    conv1: CausalConv3d
    conv2: CausalConv3d
    decoder: nn.Module
    latent_mean: ClassVar[tuple[float, ...]]
    latent_std: ClassVar[tuple[float, ...]]

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def stride(self) -> tuple[int, int, int]:
        return self.config.stride

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def scale(self) -> tuple[Tensor, Tensor]:
        """(mean, 1/std) in fp32, as the official wrapper's `scale` (§2.5): z_norm = (μ − mean)·(1/std)."""
        device = self.conv2.weight.device
        mean = torch.tensor(self.latent_mean, dtype=torch.float32, device=device)
        return mean, 1.0 / torch.tensor(self.latent_std, dtype=torch.float32, device=device)

    def _encoder_input(self, videos: Tensor) -> Tensor:
        """Pixels → encoder input (2.2 patchifies)."""
        return videos

    def _decode_chunk(self, x: Tensor, cache: Cache, first_chunk: bool) -> Tensor:
        """One latent frame (B, z, 1, h, w) → its video frames (B, 3, 1 or 4, H, W)."""
        raise NotImplementedError

    @torch.no_grad()  # the caches would otherwise keep every chunk's autograd graph alive
    def encode(self, videos: Tensor) -> Tensor:
        """[B, 3, F, H, W] in [−1, 1], F = 4n+1 → normalised latents [B, z, n+1, H/s, W/s], fp32."""
        b, c, f, h, w = videos.shape
        st, sh, sw = self.stride
        if c != 3 or (f - 1) % st or h % sh or w % sw:
            raise ValueError(
                f"videos of shape {tuple(videos.shape)}: expected [B, 3, F, H, W] with F = {st}n+1 "
                f"and H, W multiples of {sh}"
            )
        x = self._encoder_input(videos.to(self.dtype))  # (B, C_in, F, H/p, W/p)
        cache: Cache = {}
        # Chunks of frames [0], [1..4], [5..8], … each give one latent frame (§5.4).
        chunks = [x[:, :, :1], *x[:, :, 1:].split(st, dim=2)] if f > 1 else [x]
        out = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)  # (B, 2z, F_lat, h, w)
        mu = self.conv1(out)[:, : self.z_dim].float()  # μ = first z channels; log-variance unused
        mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in self.scale)
        return (mu - mean) * inv_std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, z, T, h, w] → video [B, 3, 4(T−1)+1, h·s, w·s] in [−1, 1], fp32."""
        b, z, t, h, w = latents.shape
        if z != self.z_dim:
            raise ValueError(f"latents of shape {tuple(latents.shape)}: expected {self.z_dim} channels")
        mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in self.scale)
        x = self.conv2((latents.float() / inv_std + mean).to(self.dtype))  # (B, z, T, h, w)
        st, sh, sw = self.stride
        # Written chunk by chunk into one fp32 buffer: no list of chunks and no final concatenation.
        video = torch.empty(b, 3, st * (t - 1) + 1, h * sh, w * sw, device=x.device, dtype=torch.float32)
        cache: Cache = {}
        start = 0
        for i in range(t):  # one latent frame per chunk → 1 video frame, then 4 each (§5.4)
            frames = self._decode_chunk(x[:, :, i : i + 1], cache, first_chunk=i == 0)
            video[:, :, start : start + frames.shape[2]] = frames
            start += frames.shape[2]
        return video.clamp_(-1.0, 1.0)

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

Fast path (`ChunkedVAE.set_fast`, used by the pipelines in bf16 mode). The exact path above is the
reference and stays as the official code computes it. The fast path computes the same function
with different kernels and layouts, so it agrees with the exact path to rounding only (bf16:
PSNR ≥ 40 dB against the fp32 decode at full size, `bench/vae_decode.py --fast`):
- activations and conv weights in channels-last layout (what cuDNN's Hopper kernels run natively);
- RMS-norm + SiLU fused into one Triton kernel (`vae_kernels.py`) that writes straight into the
  next causal conv's padded input buffer: the cache frames are copied in front, the spatial zero
  padding is the convolution's own, so neither `torch.cat` nor `F.pad` copies the activation;
- the decoder's stages after the last temporal upsample run on a few frames at a time (they are
  causal convs and per-frame ops, so any split gives the same function), which caps the activations
  of the full-resolution stages.
With fp32 weights (`set_fast(dtype=torch.float32)`, tests) it agrees with the exact path to ~1e-6.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wan_core.models.vae_kernels import CL3D, rms_norm_act


class Cache(dict[nn.Module, Tensor]):
    """Per-chunk temporal state (§5.4): for a causal conv its last input frames (B, C, ≤2, H, W); for
    an encoder `downsample3d` the last frame after the spatial step (B, C, 1, H, W). `fast` selects
    the fast path's kernels for the whole pass (module docstring)."""

    def __init__(self, fast: bool = False) -> None:
        super().__init__()
        self.fast = fast

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
        if cache is not None and cache.fast:
            if self.front == 0:
                return self._conv(x)
            buf, new = self.padded_input(x, cache)
            new.copy_(x)
            return self.conv_padded(buf, cache)
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

    # -- fast path ----------------------------------------------------------------------------------

    def padded_input(self, x: Tensor, cache: Cache | None) -> tuple[Tensor, Tensor]:
        """A channels-last buffer (B, C, front + T, H, W) with the cached frames (zeros where there is
        no history) in front, and the view of its last T frames, for the caller to fill with x's data."""
        b, c, t, h, w = x.shape
        buf = torch.empty((b, c, self.front + t, h, w), dtype=x.dtype, device=x.device, memory_format=CL3D)
        prev = cache.get(self) if cache is not None else None
        n_prev = 0 if prev is None else prev.shape[2]  # ≤ front; 1 after Resample's zero "Rep" frame
        if n_prev < self.front:
            buf[:, :, : self.front - n_prev].zero_()
        if prev is not None:
            buf[:, :, self.front - n_prev : self.front].copy_(prev)
        return buf, buf[:, :, self.front :]

    def conv_padded(self, buf: Tensor, cache: Cache | None) -> Tensor:
        """Keep the last `front` frames of a filled `padded_input` buffer as history; convolve it."""
        if cache is not None:
            cache[self] = buf[:, :, -self.front :].clone()  # clone: a slice would pin the whole buffer
        return self._conv(buf)

    def _conv(self, x: Tensor) -> Tensor:
        """The convolution with its spatial zero padding done by cuDNN instead of an `F.pad` copy."""
        p_w, _, p_h, _ = self.spatial_pad
        return F.conv3d(x, self.weight, self.bias, self.stride, (0, p_h, p_w))


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


def norm_silu_conv(norm: RMS_norm, conv: CausalConv3d, x: Tensor, cache: Cache) -> Tensor:
    """`conv(SiLU(norm(x)))`; on the fast path the fused kernel writes into conv's padded input."""
    if not cache.fast:
        return conv(F.silu(norm(x)), cache)
    buf, new = conv.padded_input(x, cache)
    rms_norm_act(x, norm.gamma, norm.scale, out=new)
    return conv.conv_padded(buf, cache)


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
        h = self.shortcut(x, cache) if isinstance(self.shortcut, CausalConv3d) else x
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        y = norm_silu_conv(norm1, conv1, x, cache)
        y = norm_silu_conv(norm2, conv2, y, cache)
        return y.add_(h)  # in place: the same sum as `y + h`, one activation less


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
                frames = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (B, C, T, 2, H, W)
                if cache.fast:  # one copy, straight into channels-last (a reshape would give NCDHW)
                    x = torch.empty((b, c, 2 * t, h, w), dtype=x.dtype, device=x.device, memory_format=CL3D)
                    x.unflatten(2, (t, 2)).copy_(frames)
                else:
                    x = frames.reshape(b, c, 2 * t, h, w)
        t = x.shape[2]
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))  # (B·T, C', H', W')
        x = y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C', T, H', W')
        if self.mode == "downsample3d":
            prev = cache.get(self)  # (B, C, 1, H', W'): last frame of the previous chunk
            cache[self] = x[:, :, -1:].clone()
            if prev is not None:  # first chunk: its one frame passes through (§5.4)
                x = self.time_conv(torch.cat([prev, x], dim=2))  # stride 2: (B, C, T/2, H', W')
        return x


class OutputHead(nn.Sequential):
    """`head.0/.2`: RMS norm, SiLU, causal k=3 conv (§2.4)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(RMS_norm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        return norm_silu_conv(self[0], self[2], x, cache)


def run_layers(layers: Iterable[nn.Module], x: Tensor, cache: Cache) -> Tensor:
    """Apply `layers` in order, handing the cache to the ones that carry temporal state."""
    for layer in layers:
        stateful = isinstance(layer, (CausalConv3d, ResidualBlock, Resample, OutputHead))
        x = layer(x, cache) if stateful else layer(x)
    return x


def middle_blocks(dim: int) -> nn.Sequential:
    """`middle.0/1/2` of encoder and decoder: ResidualBlock, AttentionBlock, ResidualBlock (§2.4)."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def last_temporal_upsample(layers: Iterable[nn.Module]) -> int:
    """1 + the index of the last layer of `layers` that holds an `upsample3d` Resample (0 if none):
    the decoder layers from there on are per-frame or causal, so they may run on any split of frames."""
    found = [i for i, layer in enumerate(layers)
             if any(isinstance(m, Resample) and m.mode == "upsample3d" for m in layer.modules())]  # fmt: skip
    return found[-1] + 1 if found else 0


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
    # Fast path (module docstring), switched on by `set_fast`.
    fast: bool = False
    autotune: bool = False
    frames_per_piece: int | None = None

    def set_fast(
        self, dtype: torch.dtype = torch.bfloat16, *, autotune: bool = False, frames_per_piece: int | None = 2
    ) -> Self:
        """Run encode/decode on the fast path: weights cast to `dtype`, conv weights channels-last.

        autotune: cuDNN's benchmark mode during encode/decode (the first call at each new shape
        times the candidate algorithms); off by default: at 720P it gained nothing (H100, both
        VAEs, within 0.2%). frames_per_piece: frames per step of the decoder stages after the last
        temporal upsample; 2 costs 3–4% of the time of whole 4-frame chunks (None) and saves
        1.1–1.3 GiB of peak (bench/results/2026-11-25-h100-vae-fast.jsonl).
        """
        self.to(dtype)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                layout = CL3D if module.weight.dim() == 5 else torch.channels_last
                module.weight.data = module.weight.data.contiguous(memory_format=layout)
        self.fast, self.autotune, self.frames_per_piece = True, autotune, frames_per_piece
        return self

    @contextmanager
    def _backend(self) -> Iterator[None]:
        """cuDNN's autotuner on for encode/decode if asked (`set_fast`); the global flag is put back after."""
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = before or (self.fast and self.autotune)
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=CL3D) if self.fast else x

    def _pieces(self, x: Tensor) -> tuple[Tensor, ...]:
        """x split into frame pieces for the decoder stages after the last temporal upsample."""
        return x.split(self.frames_per_piece, dim=2) if self.fast and self.frames_per_piece else (x,)

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

    def _decode_chunk(self, x: Tensor, cache: Cache, first_chunk: bool) -> Iterator[Tensor]:
        """One latent frame (B, z, 1, h, w) → its video frames (B, 3, 1 or 4, H, W), in pieces."""
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
        x = self._layout(self._encoder_input(videos.to(self.dtype)))  # (B, C_in, F, H/p, W/p)
        cache = Cache(self.fast)
        # Chunks of frames [0], [1..4], [5..8], … each give one latent frame (§5.4).
        chunks = [x[:, :, :1], *x[:, :, 1:].split(st, dim=2)] if f > 1 else [x]
        with self._backend():
            out = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)  # (B, 2z, F_lat, h, w)
            mu = self.conv1(out)[:, : self.z_dim].float()  # μ = first z channels; log-variance unused
        mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in self.scale)
        return (mu - mean) * inv_std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, z, T, h, w] → video [B, 3, 4(T−1)+1, h·s, w·s] in [−1, 1], fp32."""
        b, _, t, h, w = latents.shape
        st, sh, sw = self.stride
        # Written piece by piece into one fp32 buffer: no list of chunks and no final concatenation.
        video = torch.empty(b, 3, st * (t - 1) + 1, h * sh, w * sw, device=latents.device, dtype=torch.float32)
        start = 0
        for frames in self.decode_pieces(latents):
            video[:, :, start : start + frames.shape[2]] = frames
            start += frames.shape[2]
        return video

    @torch.no_grad()  # on a generator: held while it runs, released at each yield
    def decode_pieces(self, latents: Tensor) -> Iterator[Tensor]:
        """`decode` as it is computed: its frames in order, [B, 3, f, H, W] fp32 clamped pieces of
        one latent frame's 1 or 4 video frames, so a caller can encode a piece while the next decodes."""
        if latents.shape[1] != self.z_dim:
            raise ValueError(f"latents of shape {tuple(latents.shape)}: expected {self.z_dim} channels")
        mean, inv_std = (s.view(1, -1, 1, 1, 1) for s in self.scale)
        cache = Cache(self.fast)
        with self._backend():
            x = self.conv2(self._layout((latents.float() / inv_std + mean).to(self.dtype)))  # (B, z, T, h, w)
        for i in range(latents.shape[2]):  # one latent frame per chunk → 1 video frame, then 4 each (§5.4)
            with self._backend():  # the autotuner flag only while decoding, not while the caller holds a piece
                pieces = list(self._decode_chunk(x[:, :, i : i + 1], cache, first_chunk=i == 0))
            yield torch.cat(pieces, dim=2).float().clamp(-1.0, 1.0)

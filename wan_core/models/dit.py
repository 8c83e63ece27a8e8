"""The Wan2.2 diffusion transformer (DiT) for T2V-A14B, I2V-A14B and TI2V-5B, in one file.

Matches `wan/modules/model.py` (`WanModel`) of Wan-Video/Wan2.2 @ 42bf4cf; implements
shared/wan22-spec.md §2.1 (config.json), §2.2 (parameter names), §3 (forward pass) and the
precision map of §3.8 / §12. Parameter names are exactly the official ones, so the published
safetensors load without a rename table and `WanModel(cfg).state_dict()` writes official files.

Precision (§3.8): the time embedding, modulation, LayerNorms, residual stream and head run in
fp32 whatever the weights' dtype (weights are upcast on the fly, as the official fp32 autocast
regions do); q/k/v/o, cross-attention, the text embedding and the FFN run in the weights' dtype
(bf16 after conversion). RoPE tables are built in float64 on the CPU and applied in fp32.

The model knows no parallelism: self-attention takes explicit (B, L, N, D) tensors, the RoPE
multipliers of exactly those tokens and the key lengths, so a sequence-parallel wrapper can shard
tokens from outside and hand each shard the multipliers of its true grid positions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wan_core.checkpoint.errors import CheckpointError
from wan_core.ops import fused_norm
from wan_core.ops.attention import attention, attention_with_shift
from wan_core.ops.fp8 import E4M3, RowScaled, quantize_rows, split_rows
from wan_core.ops.fp8_attention import add_shift

# Parameters whose computation the official forward keeps in fp32 (§3.8): the time embedding and
# its projection, the per-block and head modulation tables, the affine LayerNorm before
# cross-attention and the head (globs over parameter names). The forward below upcasts them
# itself; the loader can also keep their weights in fp32 when converting the rest to bf16
# (`load_dit(..., keep_fp32_islands=True)`).
FP32_ISLANDS: tuple[str, ...] = (
    "time_embedding.*",
    "time_projection.*",
    "blocks.*.modulation",
    "blocks.*.norm3.*",
    "head.*",
)


def is_fp32_island(name: str) -> bool:
    """Whether parameter `name` belongs to a part the official forward computes in fp32."""
    return any(fnmatchcase(name, pattern) for pattern in FP32_ISLANDS)


MODEL_TYPES = ("t2v", "i2v", "ti2v")  # s2v shares the class upstream but is out of scope (§1.1)
ROPE_MAX_POSITIONS = 1024  # official table covers positions 0..1023 on each grid axis (§3.4)
ROPE_THETA = 10000.0
FFN_CHUNK_TOKENS = 16_384  # FFN rows per chunk: caps the hidden activation (0.45 GB at A14B width)
_CONFIG_CLASS_NAME = "WanModel"  # diffusers ConfigMixin metadata in the official config.json (§2.1)
_CONFIG_DIFFUSERS_VERSION = "0.33.0"
# Upstream constructor arguments every in-scope model leaves at these values (§1.2); a config.json
# may carry them, with exactly these values, since this implementation has no other variant.
_FIXED_UPSTREAM_ARGS: dict[str, Any] = {"window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True}


@dataclass(frozen=True)
class DiTConfig:
    """Architecture numbers of one DiT, as in the official `config.json` (§1.2, §2.1).

    `patch_size` and `text_dim` are not in the official file (diffusers `ignore_for_config`);
    they keep their constructor defaults there and are written only when they differ (tiny models).
    """

    model_type: str
    in_dim: int
    dim: int
    ffn_dim: int
    out_dim: int
    num_heads: int
    num_layers: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512  # umT5 context length; shorter prompts are zero-padded to it (§3.3)
    freq_dim: int = 256
    text_dim: int = 4096  # umT5-XXL width
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size")
        object.__setattr__(self, "patch_size", tuple(self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_json(cls, path: str | Path) -> DiTConfig:
        """Read an official diffusers-style `config.json`; underscore keys are metadata."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(path, "file not found", "the DiT config.json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(path, f"not readable JSON ({err})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(path, "not a JSON object")
        fields = dataclasses.fields(cls)
        wrong = {k: raw[k] for k, v in _FIXED_UPSTREAM_ARGS.items() if k in raw and raw[k] != v}
        if wrong:
            raise CheckpointError(path, f"unsupported {wrong}", f"{_FIXED_UPSTREAM_ARGS} (all in-scope models)")
        values = {k: v for k, v in raw.items() if not k.startswith("_") and k not in _FIXED_UPSTREAM_ARGS}
        unknown = sorted(set(values) - {f.name for f in fields})
        missing = sorted(f.name for f in fields if f.default is dataclasses.MISSING and f.name not in values)
        problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        if problems:
            raise CheckpointError(path, "; ".join(problems), "the WanModel config keys of spec §2.1")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise CheckpointError(path, str(err)) from None

    def to_json(self, path: str | Path | None = None) -> str:
        """Write the official `config.json` (same keys and metadata); returns the text."""
        out: dict[str, Any] = {
            "_class_name": _CONFIG_CLASS_NAME,
            "_diffusers_version": _CONFIG_DIFFUSERS_VERSION,
        }
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("model_type", "dim", "ffn_dim", "freq_dim", "in_dim", "out_dim", "num_heads", "num_layers", "eps", "text_len"):
            out[name] = getattr(self, name)
        for name in ("patch_size", "text_dim"):  # absent from official files; only tiny models differ
            if getattr(self, name) != defaults[name]:
                out[name] = list(getattr(self, name)) if name == "patch_size" else getattr(self, name)
        text = json.dumps(out, indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def flavor(cls, name: str) -> DiTConfig:
        """Named configs: the three published DiTs (§1.2) and tiny ones for tests and demos."""
        return _FLAVORS[name]


_FLAVORS: dict[str, DiTConfig] = {
    "t2v-A14B": DiTConfig("t2v", in_dim=16, dim=5120, ffn_dim=13824, out_dim=16, num_heads=40, num_layers=40),
    "i2v-A14B": DiTConfig("i2v", in_dim=36, dim=5120, ffn_dim=13824, out_dim=16, num_heads=40, num_layers=40),
    "ti2v-5B": DiTConfig("ti2v", in_dim=48, dim=3072, ffn_dim=14336, out_dim=48, num_heads=24, num_layers=30),
    # head_dim 16 splits RoPE unevenly (8 temporal, 4 + 4 spatial dims), like 44/42/42 at full size.
    "tiny-t2v": DiTConfig("t2v", in_dim=16, dim=48, ffn_dim=96, out_dim=16, num_heads=3, num_layers=2, text_dim=32),
    "tiny-i2v": DiTConfig("i2v", in_dim=36, dim=48, ffn_dim=96, out_dim=16, num_heads=3, num_layers=2, text_dim=32),
    "tiny-ti2v": DiTConfig("ti2v", in_dim=48, dim=48, ffn_dim=96, out_dim=48, num_heads=3, num_layers=2, text_dim=32),
}


# ---------------------------------------------------------------------------------------------
# Sinusoidal time embedding and 3-D RoPE (§3.3, §3.4)
# ---------------------------------------------------------------------------------------------


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """[..., ] timesteps → [..., dim] fp32 as `[cos(t·ω), sin(t·ω)]`, ω_j = 10000^(−j/(dim/2)).

    Computed in float64 like upstream: t·ω reaches 1000, where fp32 would lose ~1e-4 of phase.
    It runs once per forward on (B, L) values, not per block, so float64 is not on the hot path.
    """
    half = dim // 2
    t = t.to(torch.float64)
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    phase = t[..., None] * omega  # (..., half)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).float()


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per grid axis (t, h, w): c − 2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋ with c = head_dim/2."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


@lru_cache(maxsize=16)
def _rope_axis_tables(head_dim: int, device: torch.device) -> tuple[Tensor, ...]:
    """Per axis: [cos, sin] of p·θ_k for p < 1024, [1024, pairs, 2] fp32, built in float64 on the CPU.

    Built once per (head_dim, device), so no float64 work ever runs on an accelerator. Real pairs
    rather than complex numbers, so torch.compile can fuse the rotation with the q/k RMSNorm.
    """
    tables = []
    for pairs in rope_axis_dims(head_dim):
        theta = ROPE_THETA ** -(torch.arange(pairs, dtype=torch.float64) * 2 / (2 * pairs))
        phase = torch.outer(torch.arange(ROPE_MAX_POSITIONS, dtype=torch.float64), theta)  # (1024, pairs)
        tables.append(torch.stack([phase.cos(), phase.sin()], dim=-1).float().to(device))
    return tuple(tables)


def grid_positions(grid: tuple[int, int, int], device: torch.device | str | None = None) -> Tensor:
    """(F', H', W') token grid → [L, 3] int64 (f, h, w) positions in row-major token order."""
    axes = [torch.arange(n, device=device) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (L, 3)


def rope_freqs(positions: Tensor, head_dim: int) -> Tensor:
    """[L, 3] grid positions (each < 1024) → [L, head_dim/2, 2] fp32 (cos, sin) rotations (§3.4).

    Takes positions rather than a length so a sequence shard gets the rows of its true tokens;
    position (0, 0, 0) is the identity rotation, which padding rows may use.
    """
    tables = _rope_axis_tables(head_dim, positions.device)
    return torch.cat([table[positions[:, axis]] for axis, table in enumerate(tables)], dim=1)  # (L, D/2, 2)


def swap_pairs(x: Tensor) -> Tensor:
    """(x[2k], x[2k+1]) → (x[2k+1], x[2k]) along the last dim."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def apply_rope(x: Tensor, freqs: Tensor, swapped: Tensor | None = None) -> Tensor:
    """Rotate interleaved pairs (x[2k], x[2k+1]) of [B, L, N, D] by the [L, D/2, 2] (cos, sin).

    The complex product (a + ib)(c + is) = (ac - bs, bc + as) written out in fp32 (upstream
    uses complex128; the difference is ~1e-7 relative, far below bf16 attention's); returned in
    fp32 like upstream, the caller casts to the weights' dtype. Written as x·(c, c) + swap(x)·(-s, s),
    one element-wise expression, not a stack of the two halves: under torch.compile a stack is a
    concatenation, which Inductor materialises in fp32 before the cast (1.4 GiB per q or k at
    720P A14B). `swapped`: `swap_pairs(x)` when the caller has a cheaper expression for it.
    """
    cos, sin = freqs[None, :, None].unbind(-1)  # (1, L, 1, D/2) each
    cos2 = torch.stack([cos, cos], dim=-1).flatten(-2)  # (1, L, 1, D)
    signed_sin = torch.stack([-sin, sin], dim=-1).flatten(-2)
    swapped = swap_pairs(x) if swapped is None else swapped
    return x.float() * cos2 + swapped.float() * signed_sin  # (B, L, N, D)


def per_token(rows: Tensor, token_rows: Tensor | None) -> Tensor:
    """The time-embedding rows each token uses: [B, 1, ...] (row b for sample b) or [B, L, ...].

    Call it where the rows are consumed, one modulation vector at a time: under torch.compile
    the gather then fuses into its consumer, so per-token modulation never exists as a
    [B, L, 6, dim] tensor (the official code keeps one: 2 GB per 5B 720P forward). Gathered up
    front, the rows used after the attention (opaque to the compiler) would be materialised.
    """
    return rows[:, None] if token_rows is None else rows[token_rows]


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def _fp32_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """A Linear computed in fp32 with upcast weights, as upstream's fp32 autocast regions do.

    Autocast is switched off here, so a caller's bf16 autocast (fp32 weights, bf16 compute)
    keeps the fp32 islands fp32 exactly as upstream's nested `autocast(dtype=float32)` does.
    """
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), layer.bias.float())


def _ffn(ffn: nn.Sequential, x: Tensor | RowScaled) -> Tensor:
    """`ffn` (Linear → GELU(tanh) → Linear) on x, with the GELU in the first GEMM's epilogue on CUDA.

    `torch._addmm_activation` runs bias and tanh-GELU on cuBLASLt's fp32 accumulator before the one
    rounding, so the [L, ffn_dim] hidden activation is written once instead of written, read and
    written again by a separate kernel (an H100 5B 720P forward: 0.865 → 0.851 s); Inductor keeps
    the call as is. Same numerics class as upstream's (which rounds to bf16 before the GELU).
    Plain bf16/fp16 weights in x's dtype only: FP8 layers (lossy precisions), fp32 weights
    (exact fp32, or autocast's bf16 casts; Dynamo does not guard on autocast state) take the
    modules, and so does the CPU, where the op's GELU is the erf one.
    """
    up, act, down = ffn
    if isinstance(x, RowScaled):  # FP8 layers: the rows come quantized from the norm
        return down(act(up(x)))
    weight = up.weight
    if (x.is_cuda and type(weight) is nn.Parameter and weight.dtype in (torch.bfloat16, torch.float16)
            and x.dtype == weight.dtype and up.bias is not None):
        hidden = torch._addmm_activation(up.bias, x.flatten(0, -2), weight.t(), use_gelu=True)
        return down(hidden.unflatten(0, x.shape[:-1]))
    return down(act(up(x)))


def _linear(layer: nn.Module, x: Tensor | RowScaled) -> Tensor:
    """A Linear in the weights' dtype: the input is rounded to it (upstream's bf16 autocast).
    The lossy precisions' FP8 layers (`wan_core.ops.fp8.Fp8Linear`) take x as it comes: rows
    already quantized by the norm, or a float tensor they quantize themselves."""
    if isinstance(layer, nn.Linear):
        return layer(x.to(layer.weight.dtype))
    return layer(x)


def _out_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype `_linear(layer, ·)` returns: the weights', or an FP8 layer's output dtype."""
    return layer.weight.dtype if isinstance(layer, nn.Linear) else layer.out_dtype


def _layer_norm(x: Tensor, eps: float) -> Tensor:
    """Non-affine LayerNorm in fp32 (`norm1`, `norm2`, head norm; no parameters upstream)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def _add_norm(
    x: Tensor,
    y: Tensor | None,
    gate: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    token_rows: Tensor | None,
    *,
    modulate: bool,
    eps: float,
    dtype: torch.dtype,
) -> Tensor | RowScaled:
    """The fp32 stream x += y (· gate) in place when y is given, then its LayerNorm in `dtype`:
    modulated ·(1 + weight) + bias with [R, dim] rows (`per_token`), or affine with [dim] ones.
    For e4m3 (FP8 layers) the fp32 rows are quantized, each with its scale (`RowScaled`).

    On CUDA one hand-written Triton kernel per call (`wan_core.ops.fused_norm`: 4–25% faster than
    Inductor's kernel for the same expression); elsewhere the same expressions eagerly.
    """
    if fused_norm.available(x):
        if y is None:
            return fused_norm.norm(x, weight, bias, token_rows, modulate=modulate, eps=eps, out_dtype=dtype)
        return fused_norm.add_norm_(x, y, gate, weight, bias, token_rows, modulate=modulate, eps=eps, out_dtype=dtype)
    if y is not None:
        x.add_(y.float() if gate is None else y.float() * per_token(gate, token_rows))
    if modulate:
        normed = _layer_norm(x, eps) * (1 + per_token(weight, token_rows)) + per_token(bias, token_rows)
    else:
        normed = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return quantize_rows(normed) if dtype == E4M3 else normed.to(dtype)


class WanRMSNorm(nn.Module):
    """RMSNorm over the whole width (all heads together, §13.8): fp32 math, then × weight.

    Upstream rounds the normalised value back to the input dtype before scaling, so bf16
    activations give a bf16 product.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):  # fp32 under any caller's autocast
            normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight

    def with_swapped_pairs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(x), swap_pairs(norm(x))), the second normalised again from swap_pairs(x).

        For RoPE after the norm: read at swapped indices, the normalised value would have to be
        written out (Inductor materialises it, 1.4 GiB per q or k at 720P A14B); as two
        expressions of x and the row's 1/rms it fuses into the rotation's one kernel. The
        official formula x·rsqrt(mean(x²) + eps), so both agree with `forward` to its rounding.
        """
        with torch.autocast(x.device.type, enabled=False):
            inv_rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # (..., 1)
            pairs = ((x, self.weight), (swap_pairs(x), swap_pairs(self.weight)))
            return tuple((u.float() * inv_rms).type_as(u) * w for u, w in pairs)


class _Projections(nn.Module):
    """The q/k/v/o projections and q/k RMSNorms both attentions of a block own (official names)."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)


class WanSelfAttention(_Projections):
    """Self-attention with RMS-normed q/k and 3-D RoPE (`blocks.N.self_attn`, §3.5 step 2)."""

    # A `wan_core.ops.attention` backend to force (set from outside, e.g. by a lossy precision
    # mode); None: the exact kernel the attention entry point picks.
    attention_backend: str | None = None

    def qkv(self, x: Tensor | RowScaled, freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, L, dim] → rotated q, k and v, each [B, L, N, D] in the projections' output dtype."""
        def rotated(proj: nn.Module, norm: WanRMSNorm) -> Tensor:
            normed, swapped = (t.unflatten(-1, (self.num_heads, -1)) for t in norm.with_swapped_pairs(_linear(proj, x)))
            return apply_rope(normed, freqs, swapped).to(_out_dtype(self.q))  # (B, L, N, D)

        v = _linear(self.v, x).unflatten(-1, (self.num_heads, -1))
        return rotated(self.q, self.norm_q), rotated(self.k, self.norm_k), v

    def forward(self, x: Tensor | RowScaled, freqs: Tensor, k_lens: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv(x, freqs)
        return self.project_out(*attention_with_shift(q, k, v, k_lens=k_lens, backend=self.attention_backend))

    def project_out(self, out: Tensor, shift: Tensor | None = None) -> Tensor:
        """The attention's (B, L, N, D) output, plus `shift` (B, 1, N, D) where the kernel left
        one to add (FP8 attention: V's mean), through `o`: [B, L, dim]."""
        if shift is not None:  # compiled, the add joins the kernel that quantizes o's rows
            out = add_shift(out, shift)
        return _linear(self.o, out.flatten(2))


class WanCrossAttention(_Projections):
    """Cross-attention to the embedded text (`blocks.N.cross_attn`): no RoPE, no key mask (§3.6)."""

    def forward(self, x: Tensor | RowScaled, context: Tensor) -> Tensor:
        q = self.norm_q(_linear(self.q, x)).unflatten(-1, (self.num_heads, -1))  # (B, L, N, D)
        k = self.norm_k(_linear(self.k, context)).unflatten(-1, (self.num_heads, -1))  # (B, 512, N, D)
        v = _linear(self.v, context).unflatten(-1, (self.num_heads, -1))
        return _linear(self.o, attention(q, k, v).flatten(2))


class WanAttentionBlock(nn.Module):
    """One transformer block (`blocks.N`, §3.5); modulation, norms and residual in fp32."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = WanSelfAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = WanCrossAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self,
        x: Tensor,
        e0: Tensor,
        context: Tensor,
        freqs: Tensor,
        token_rows: Tensor | None = None,
        k_lens: Tensor | None = None,
    ) -> Tensor:
        """x [B, L, dim] fp32; e0 [R, 6, dim] fp32 rows picked by `token_rows` (see `per_token`);
        context [B, text_len, dim]; freqs [L, D/2, 2].

        The residual stream is updated in place and returned (the caller's x is consumed): a new
        stream per residual would hold two or three [L, dim] fp32 copies at once (1.4 GB each at
        720P A14B). Inference only; nothing here keeps the input for a backward pass.
        """
        mod = self.modulation.float()[0] + e0  # (R, 6, dim): the official per-token sum, per row
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(1)  # (R, dim) each; per_token at use
        dtype = self.ffn[0].weight.dtype
        # 1. self-attention on the modulated, normalised stream, handed over in the weights' dtype
        #    (the projections round to it first anyway; an fp32 handover is 1.4 GiB at 720P A14B);
        #    FP8 layers' e4m3 weights take e4m3 rows with their scales, quantized once for q, k, v
        normed = _add_norm(x, None, None, scale1, shift1, token_rows, modulate=True, eps=self.eps, dtype=dtype)
        y = self.self_attn(normed, freqs, k_lens)
        # 2. cross-attention to the text after the gated residual: affine LayerNorm (fp32), no gate
        normed = _add_norm(x, y, gate1, self.norm3.weight.float(), self.norm3.bias.float(), token_rows,
                           modulate=False, eps=self.eps, dtype=dtype)
        y = self.cross_attn(normed, context)  # its own statement: Dynamo resumes here after attention
        # 3. feed-forward in the weights' dtype over token chunks (rows are independent, so this
        #    is exact; it caps the [L, ffn_dim] hidden activation), gated residual in fp32
        h = _add_norm(x, y, None, scale2, shift2, token_rows, modulate=True, eps=self.eps, dtype=dtype)
        chunks = split_rows(h, FFN_CHUNK_TOKENS, 1) if isinstance(h, RowScaled) else h.split(FFN_CHUNK_TOKENS, dim=1)
        y = torch.cat([_ffn(self.ffn, chunk) for chunk in chunks], dim=1)
        return x.add_(y.float() * per_token(gate2, token_rows))


class Head(nn.Module):
    """Output head (`head`, §3.7): modulated by `e` (not e0, no SiLU), fp32 throughout."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor, token_rows: Tensor | None = None) -> Tensor:
        """x [B, L, dim] fp32, e [R, dim] fp32 rows (see `per_token`) → [B, L, out_dim·prod(patch)] fp32."""
        mod = self.modulation.float()[0] + e[:, None, :]  # (R, 2, dim)
        shift, scale = mod.unbind(1)  # (R, dim) each
        normed = _layer_norm(x, self.eps) * (1 + per_token(scale, token_rows)) + per_token(shift, token_rows)
        return _fp32_linear(self.head, normed)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class WanModel(nn.Module):
    """Wan2.2 DiT with the official parameter names (§2.2); one device, batched tensors."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    def embed_time(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """t [B] or per-token [B, L] → (e [R, dim], e0 [R, 6, dim], token_rows), fp32 (§3.3).

        One row per sample for a [B] timestep (token_rows None), else one row per distinct value
        with token_rows [B, L] indexing them (TI2V has two: 0 for the image frame, t elsewhere).
        The official code embeds every token: identical values at L times the memory.
        """
        values, token_rows = (t, None) if t.ndim == 1 else torch.unique(t, return_inverse=True)
        emb = sinusoidal_embedding(values, self.cfg.freq_dim)  # (R, freq_dim)
        e = _fp32_linear(self.time_embedding[2], F.silu(_fp32_linear(self.time_embedding[0], emb)))
        e0 = _fp32_linear(self.time_projection[1], F.silu(e)).unflatten(-1, (6, -1))  # (R, 6, dim)
        return e, e0, token_rows

    def embed_text(self, context: Tensor) -> Tensor:
        """[B, text_len, text_dim] zero-padded umT5 states → [B, text_len, dim], weights' dtype."""
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))

    def forward(self, x: Tensor, t: Tensor, context: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict the flow velocity.

        x: latents [B, C_x, F, H, W]; y: I2V conditioning [B, 20, F, H, W] (mask + image latent),
        required for i2v and refused otherwise; t: [B] or per-token [B, F·H/2·W/2] timesteps;
        context: [B, text_len, text_dim], each prompt zero-padded to text_len (§3.3).
        Returns [B, out_dim, F, H, W] fp32.
        """
        cfg = self.cfg
        if (y is not None) != (cfg.model_type == "i2v"):
            raise ValueError(f"model_type {cfg.model_type!r}: y (I2V conditioning) must be given exactly for i2v")
        if context.shape[1:] != (cfg.text_len, cfg.text_dim):
            raise ValueError(f"context must be [B, {cfg.text_len}, {cfg.text_dim}] (zero-padded), got {list(context.shape)}")

        # 1. patchify: Conv3d with kernel = stride = patch, tokens in row-major (f, h, w) order
        if y is not None:
            x = torch.cat([x, y], dim=1)  # (B, in_dim, F, H, W)
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, dim, F', H', W')
        grid = tuple(x.shape[2:])
        if max(grid) > ROPE_MAX_POSITIONS:
            raise ValueError(f"token grid {grid} exceeds the {ROPE_MAX_POSITIONS} RoPE positions per axis (spec §3.4)")
        # (B, L, dim): the residual stream, fp32 and token-major in memory, so each token's row is
        # contiguous for the norms (as the transposed view it was, Inductor's norm kernels ran at
        # a third of the bandwidth they reach on contiguous rows)
        x = x.flatten(2).transpose(1, 2).contiguous().float()
        if t.ndim == 2 and t.shape[1] != x.shape[1]:
            raise ValueError(f"per-token t has {t.shape[1]} tokens, the latent has {x.shape[1]}")
        freqs = rope_freqs(grid_positions(grid, x.device), cfg.head_dim)  # (L, D/2, 2)

        # 2. time and text embedding
        e, e0, token_rows = self.embed_time(t)  # (R, dim), (R, 6, dim), None or (B, L)
        context = self.embed_text(context)  # (B, text_len, dim)

        # 3. transformer blocks
        for block in self.blocks:
            x = block(x, e0, context, freqs, token_rows)

        # 4. head: [B, L, p_t·p_h·p_w·out_dim], channel fastest
        x = self.head(x, e, token_rows)

        # 5. unpatchify
        return self.unpatchify(x, grid)

    def unpatchify(self, x: Tensor, grid: tuple[int, ...]) -> Tensor:
        """[B, L, p_t·p_h·p_w·C] → [B, C, F'·p_t, H'·p_h, W'·p_w] (§3.7)."""
        (pt, ph, pw), (f, h, w) = self.cfg.patch_size, grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1)  # (B, F', H', W', pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, F', pt, H', ph, W', pw)
        return x.reshape(x.shape[0], x.shape[1], f * pt, h * ph, w * pw)

    def forward_official(
        self,
        x: list[Tensor],
        t: Tensor,
        context: list[Tensor],
        seq_len: int,
        y: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """The official list interface: x/y lists of [C, F, H, W], contexts [L_i, text_dim].

        Latents of one call share a shape (as in every official pipeline) and are stacked;
        contexts are zero-padded to text_len. `seq_len` (≥ tokens) only pads upstream and padded
        keys are masked there, so it changes nothing except that a per-token t is cut to the tokens.
        """
        if len({tuple(v.shape) for v in x}) != 1:
            raise ValueError("forward_official: all latents of one call must have the same shape")
        tokens = math.prod(s // p for s, p in zip(x[0].shape[1:], self.cfg.patch_size))
        if seq_len < tokens:
            raise ValueError(f"seq_len {seq_len} is below the {tokens} tokens of the latent")
        padded = x[0].new_zeros(len(context), self.cfg.text_len, self.cfg.text_dim)
        for i, c in enumerate(context):
            padded[i, : c.shape[0]] = c
        out = self.forward(
            torch.stack(x),
            t[:, :tokens] if t.ndim == 2 else t,
            padded,
            torch.stack(y) if y is not None else None,
        )
        return list(out.unbind(0))

"""Ulysses sequence parallelism for the DiT, put on from outside with hooks (spec §9.2).

Each rank of a Ulysses group of P keeps S = ⌈L/P⌉ of the L tokens through every block; only
self-attention needs the whole sequence, so around it an all-to-all trades the sequence split for
a head split ([B, S, N, D] → [B, P·S, N/P, D]) and a second one trades it back. RoPE is applied
before the first all-to-all with each token's true (f, h, w) position. Cross-attention and the
FFN are local: every rank has the whole text context. The head's output is all-gathered along the
sequence before unpatchify, so every rank ends with the full velocity and the identical solver
step keeps the latents in sync with no further communication (as upstream).

L is padded to P·S with zero tokens, as upstream's `seq_len` rounding (spec §7.1 step 2);
padded keys are masked in attention (k_lens = L), padded rows are dropped after the gather, and
padding tokens rotate by 1 (upstream multiplies them by 1+0i). With these, the result equals the
one-device forward up to float summation order.

`SP_PLAN` is where the sequence is split and gathered, keyed by module names of `WanModel`
(diffusers' `_cp_plan`, kept here so `wan_core/models/dit.py` stays free of parallelism);
`apply_ulysses` installs exactly these hooks and `tests/wan_core/parallel/test_plan.py` checks
every name exists in the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MethodType
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from wan_core.models.dit import WanModel, WanSelfAttention, grid_positions, rope_freqs
from wan_core.ops.attention import attention


@dataclass(frozen=True)
class SplitPoint:
    """One place of the plan: a module name pattern (fnmatch; '' = the model itself), where the
    hook acts on it, and what it does."""

    module: str
    where: Literal["input", "around", "local", "output"]
    what: str


SP_PLAN: tuple[SplitPoint, ...] = (
    SplitPoint("", "input", "latent [B, C, F, H, W] → token grid, L, L_pad = P·⌈L/P⌉, this rank's rows "
               "[r·S, (r+1)·S) and their RoPE multipliers from true (f, h, w) positions"),
    SplitPoint("blocks.0", "input", "x [B, L, dim] → zero-padded to L_pad, this rank's S rows"),
    SplitPoint("blocks.*", "input", "freqs → this rank's rows; per-token token_rows [B, L] → its rows"),
    SplitPoint("blocks.*.self_attn", "around", "q/k/v [B, S, N, D] → all-to-all → [B, L_pad, N/P, D]; "
               "attention over the L real keys; all-to-all back to [B, S, N, D]; o-projection local"),
    SplitPoint("blocks.*.cross_attn", "local", "queries are this rank's tokens; the text is whole on every rank"),
    SplitPoint("head", "input", "per-token token_rows [B, L] → this rank's rows"),
    SplitPoint("head", "output", "[B, S, C·4] → all-gather along the sequence → first L rows → unpatchify"),
)


def plan_modules(model: nn.Module, pattern: str) -> list[str]:
    """Names of `model`'s modules matching a plan pattern, `*` standing for one name component
    (`blocks.*` is every block, not their children); '' is the model itself."""
    want = pattern.split(".") if pattern else []
    return [
        name for name, _ in model.named_modules()
        if len(parts := name.split(".") if name else []) == len(want) and all(map(fnmatchcase, parts, want))
    ]


@dataclass
class _Shard:
    """This rank's part of the sequence in the current forward (set by the model's pre-hook)."""

    tokens: int  # L: real tokens
    padded: int  # L_pad = P·S
    start: int  # first row of this rank
    size: int  # S
    freqs: Tensor  # [S, D/2, 2] RoPE rotations of this rank's rows

    def take_rows(self, token_rows: Tensor | None) -> Tensor | None:
        """This rank's part of per-token time-embedding indices (None: one row per sample)."""
        return None if token_rows is None else self.take(token_rows)

    def take(self, x: Tensor) -> Tensor:
        """Rows [start, start + S) of dim 1 of a [B, L, …] tensor, zero-padded past L."""
        if x.shape[1] != self.tokens:
            raise ValueError(f"expected {self.tokens} tokens on dim 1, got {list(x.shape)}")
        pad = self.padded - self.tokens
        if pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        return x[:, self.start : self.start + self.size]


class _Plan:
    """The hooks of `SP_PLAN` for one model and one process group."""

    def __init__(self, model: WanModel, group: dist.ProcessGroup) -> None:
        self.model = model
        self.group = group
        self.size = group.size()
        self.rank = dist.get_rank(group)
        self.shard: _Shard | None = None

    def current(self) -> _Shard:
        if self.shard is None:
            raise RuntimeError("Ulysses hooks ran outside a WanModel forward")
        return self.shard

    # "": fix the split for this forward
    def model_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]
        cfg = self.model.cfg
        grid = tuple(n // p for n, p in zip(x.shape[2:], cfg.patch_size))
        tokens = math.prod(grid)
        size = -(-tokens // self.size)
        start = self.rank * size
        positions = grid_positions(grid, x.device)[start : start + size]  # true (f, h, w) of real rows
        padding = positions.new_zeros(size - positions.shape[0], 3)  # position 0: identity rotation
        freqs = rope_freqs(torch.cat([positions, padding]), cfg.head_dim)  # (S, D/2, 2)
        self.shard = _Shard(tokens, size * self.size, start, size, freqs)

    # blocks.0: split the residual stream once
    def split_stream(self, module: nn.Module, args: tuple) -> tuple:
        return (self.current().take(args[0]), *args[1:])

    # blocks.*: this rank's RoPE rows and per-token modulation
    def block_input(self, module: nn.Module, args: tuple) -> tuple:
        x, e0, context, _freqs, token_rows, *rest = args
        shard = self.current()
        return (x, e0, context, shard.freqs, shard.take_rows(token_rows), *rest)

    # blocks.*.self_attn: all-to-all around attention
    def self_attention(self, attn: WanSelfAttention, x: Tensor, freqs: Tensor, k_lens: Tensor | None = None) -> Tensor:
        if k_lens is not None:
            raise ValueError("Ulysses self-attention masks padding itself; k_lens must not be passed")
        shard = self.current()
        q, k, v = attn.qkv(x, freqs)  # (B, S, N, D), rotated at true positions
        q, k, v = (self._sequence_to_heads(z) for z in (q, k, v))  # (B, L_pad, N/P, D)
        lens = None if shard.padded == shard.tokens else torch.full((q.shape[0],), shard.tokens)
        out = self._heads_to_sequence(attention(q, k, v, k_lens=lens, backend=attn.attention_backend))  # (B, S, N, D)
        return attn.project_out(out)

    # head: per-token rows in, gathered sequence out
    def head_input(self, module: nn.Module, args: tuple) -> tuple:
        x, e, token_rows = args
        return (x, e, self.current().take_rows(token_rows))

    def head_output(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        parts = [torch.empty_like(out) for _ in range(self.size)]
        dist.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self.current().tokens]  # (B, L, C·4)

    def _sequence_to_heads(self, x: Tensor) -> Tensor:
        """(B, S, N, D) → (B, P·S, N/P, D): send head chunk j to rank j, receive every rank's tokens."""
        p, (b, s, n, d) = self.size, x.shape
        send = x.reshape(b, s, p, n // p, d).permute(2, 0, 1, 3, 4).contiguous()  # (P, B, S, N/P, D)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # recv[i]: rank i's tokens, my heads
        return recv.permute(1, 0, 2, 3, 4).reshape(b, p * s, n // p, d)

    def _heads_to_sequence(self, x: Tensor) -> Tensor:
        """(B, P·S, N/P, D) → (B, S, N, D): send token chunk j to rank j, receive every rank's heads."""
        p, (b, length, h, d) = self.size, x.shape
        send = x.reshape(b, p, length // p, h, d).permute(1, 0, 2, 3, 4).contiguous()  # (P, B, S, N/P, D)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # recv[i]: my tokens, rank i's heads
        return recv.permute(1, 2, 0, 3, 4).reshape(b, length // p, p * h, d)


def apply_ulysses(model: WanModel, group: dist.ProcessGroup) -> WanModel:
    """Install `SP_PLAN` on `model` for the Ulysses `group`; works on meta or loaded models alike
    (hooks hold no weights) and before or after FSDP. Returns the same model."""
    size = group.size()
    if model.cfg.num_heads % size:
        raise ValueError(f"Ulysses degree {size} does not divide the DiT's {model.cfg.num_heads} attention heads")
    plan = _Plan(model, group)
    hooks: dict[tuple[str, str], Any] = {
        ("", "input"): lambda m: m.register_forward_pre_hook(plan.model_input, with_kwargs=True),
        ("blocks.0", "input"): lambda m: m.register_forward_pre_hook(plan.split_stream),
        ("blocks.*", "input"): lambda m: m.register_forward_pre_hook(plan.block_input),
        ("blocks.*.self_attn", "around"): lambda m: setattr(m, "forward", MethodType(plan.self_attention, m)),
        ("blocks.*.cross_attn", "local"): lambda m: None,
        ("head", "input"): lambda m: m.register_forward_pre_hook(plan.head_input),
        ("head", "output"): lambda m: m.register_forward_hook(plan.head_output),
    }
    modules = dict(model.named_modules())
    for point in SP_PLAN:  # in plan order: blocks.0 splits x before blocks.* swaps freqs
        for name in plan_modules(model, point.module):
            hooks[(point.module, point.where)](modules[name])
    return model

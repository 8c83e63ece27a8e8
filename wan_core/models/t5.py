"""umT5-XXL text encoder (encoder only) and its prompt tokenizer.

Matches `wan/modules/t5.py` (`umt5_xxl(encoder_only=True)`, `T5EncoderModel`) and
`wan/modules/tokenizers.py` of Wan-Video/Wan2.2@42bf4cf; implements `shared/wan22-spec.md` §4.

Written here rather than taken from transformers (`UMT5EncoderModel`, the same network: §4.5) for
the cold start: importing transformers' model and tokenizer stack cost ≈ 4 s of every process
start on the H100 hosts (BENCHMARKS.md), for a 24-layer encoder that runs once per video. The
modules carry the official `.pth` key names, so the file loads with no key table. The math is the
official code's op by op (no 1/√d scaling, per-layer relative buckets, the tanh-GELU written out,
fp32-variance RMS norm, scores and softmax rounded to the activation dtype as its einsums do), so
bf16 outputs match it bit for bit on CPU; `tests/wan_core/models/test_t5.py` checks this against a
direct implementation of §4.1 and against transformers' `UMT5EncoderModel`. The tokenizer is the
folder's `tokenizer.json` run by the `tokenizers` library: the very object transformers'
`T5TokenizerFast` (what upstream's `AutoTokenizer` loads) wraps.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ftfy
import regex  # the official cleaner uses `regex`; its `\s` is Unicode White_Space
import tokenizers
import torch
from torch import Tensor, nn

from wanspec.tasks import TEXT_LEN


@dataclass(frozen=True)
class T5Config:
    """umT5 encoder architecture (defaults: umt5-xxl, spec §4.1). Read from the file's shapes."""

    vocab_size: int = 256384  # embedding rows; the tokenizer has fewer (256300), padded upstream
    dim: int = 4096
    dim_attn: int = 4096  # heads × head dim
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128  # fixed in the official T5RelativeEmbedding, not stored
    eps: float = 1e-6

    @classmethod
    def tiny(cls) -> T5Config:
        """The test flavor: a few hundred rows for the tiny tokenizer, 2 layers, 4 heads of 8."""
        return cls(vocab_size=512, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> T5Config:
        """Infer the config from official key shapes; KeyError/ValueError if they are not umT5's."""
        vocab_size, dim = shapes["token_embedding.weight"]
        num_layers = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
        num_buckets, num_heads = shapes["blocks.0.pos_embedding.embedding.weight"]
        dim_attn = shapes["blocks.0.attn.q.weight"][0]
        dim_ffn = shapes["blocks.0.ffn.fc1.weight"][0]
        if dim_attn % num_heads:
            raise ValueError(f"attention width {dim_attn} is not a multiple of {num_heads} heads")
        return cls(vocab_size=vocab_size, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn,
                   num_heads=num_heads, num_layers=num_layers, num_buckets=num_buckets)

    def official_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key and shape of the official `.pth` for this config (spec §2.3)."""
        per_block = {
            "norm1.weight": (self.dim,),
            "attn.q.weight": (self.dim_attn, self.dim),
            "attn.k.weight": (self.dim_attn, self.dim),
            "attn.v.weight": (self.dim_attn, self.dim),
            "attn.o.weight": (self.dim, self.dim_attn),
            "pos_embedding.embedding.weight": (self.num_buckets, self.num_heads),
            "norm2.weight": (self.dim,),
            "ffn.gate.0.weight": (self.dim_ffn, self.dim),
            "ffn.fc1.weight": (self.dim_ffn, self.dim),
            "ffn.fc2.weight": (self.dim, self.dim_ffn),
        }
        shapes = {"token_embedding.weight": (self.vocab_size, self.dim)}
        for n in range(self.num_layers):
            shapes.update({f"blocks.{n}.{k}": s for k, s in per_block.items()})
        shapes["norm.weight"] = (self.dim,)
        return shapes


class RMSNorm(nn.Module):
    """T5's norm: no mean, no bias; the variance in fp32, the result cast to a half weight's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class Attention(nn.Module):
    """Self-attention without 1/√d scaling; `bias` holds the position bias and the key mask."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n = x.shape[0], self.num_heads
        q, k, v = (proj(x).view(b, -1, n, proj.out_features // n) for proj in (self.q, self.k, self.v))
        attn = torch.einsum("binc,bjnc->bnij", q, k) + bias
        attn = attn.float().softmax(dim=-1).type_as(attn)
        return self.o(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, -1, self.o.in_features))


class GELU(nn.Module):
    """The tanh approximation written out as the official module does (same rounding in bf16)."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class FeedForward(nn.Module):
    """`fc2(fc1(x) ⊙ gelu(gate(x)))`; `gate` is a Sequential so its key is `gate.0.weight`."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), GELU())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def relative_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """[L, L] bucket ids of the key − query offsets (§4.1); half the buckets for keys after the
    query. The same for every layer, so the encoder computes them once per forward."""
    rel = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = torch.min(large, torch.full_like(large, half - 1))
    return buckets + torch.where(rel < max_exact, rel, large)


class RelativeEmbedding(nn.Module):
    """A layer's own bias per relative-position bucket: `[1, heads, Lq, Lk]` (§4.1)."""

    def __init__(self, num_buckets: int, num_heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: Tensor) -> Tensor:
        return self.embedding(buckets).permute(2, 0, 1)[None]


class Block(nn.Module):
    """Pre-norm layer with its own position bias (umT5: `shared_pos=False`)."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.dim, config.eps)
        self.attn = Attention(config.dim, config.dim_attn, config.num_heads)
        self.norm2 = RMSNorm(config.dim, config.eps)
        self.ffn = FeedForward(config.dim, config.dim_ffn)
        self.pos_embedding = RelativeEmbedding(config.num_buckets, config.num_heads)

    def forward(self, x: Tensor, key_mask: Tensor, buckets: Tensor) -> Tensor:
        """x [B, L, dim]; key_mask [B, 1, 1, L], True where the key is padding; buckets [L, L]."""
        length = x.shape[1]
        bias = x.new_zeros(x.shape[0], self.attn.num_heads, length, length)
        bias += self.pos_embedding(buckets)
        bias.masked_fill_(key_mask, torch.finfo(x.dtype).min)
        x = x + self.attn(self.norm1(x), bias)
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(nn.Module):
    """The official `T5Encoder` (umT5-XXL flavour): ids and key mask → final-normed states."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.eps)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, L] ids and mask (1 = real token) → [B, L, dim] in the weights' dtype."""
        x = self.token_embedding(ids)
        key_mask = (mask == 0)[:, None, None, :]
        buckets = relative_buckets(ids.shape[1], self.config.num_buckets, self.config.max_distance, x.device)
        for block in self.blocks:
            x = block(x, key_mask, buckets)
        return self.norm(x)


def build_umt5(
    config: T5Config, official: Mapping[str, Tensor], *, device: torch.device | str, dtype: torch.dtype
) -> UMT5Encoder:
    """The encoder holding the official weights (moved to device/dtype), in eval mode.

    Built on the meta device and filled with `assign=True`, so the only copy of each weight is
    the one converted from `official` (none if the file is already in `dtype` on `device`).
    """
    with torch.device("meta"):
        model = UMT5Encoder(config)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in official.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def clean_prompt(text: str) -> str:
    """The official `whitespace` cleaning (§4.2): ftfy, html-unescape twice, collapse whitespace."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class T5Encoder(nn.Module):
    """Prompts → one `[n_i, dim]` context per prompt, as the official `T5EncoderModel` (§4.2–4.3)."""

    def __init__(self, model: UMT5Encoder, tokenizer: tokenizers.Tokenizer, text_len: int = TEXT_LEN) -> None:
        super().__init__()
        self.model = model
        # What upstream's `tokenizer(..., padding='max_length', truncation=True, max_length=512)`
        # sets on this backend: right truncation leaving room for `</s>`, right padding with id 0.
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=text_len)
        self.tokenizer.enable_padding(length=text_len, pad_id=0, pad_token="<pad>")
        self.text_len = text_len
        self.eval()  # inference only: upstream never trains the encoder

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Cleaned prompts → (ids, mask), each [B, text_len] int64; `</s>` appended, pad id 0."""
        batch = self.tokenizer.encode_batch([clean_prompt(p) for p in prompts], add_special_tokens=True)
        ids = torch.tensor([e.ids for e in batch], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in batch], dtype=torch.long)
        return ids, mask

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, L] ids and key mask → [B, L, dim] in the model's dtype."""
        return self.model(ids, mask)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device | str) -> list[Tensor]:
        """Run on `device` (where the model must be) and trim each row to its n_i real tokens."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        context = self(ids, mask)  # [B, text_len, dim]
        return [u[:n] for u, n in zip(context, mask.sum(dim=1).tolist())]

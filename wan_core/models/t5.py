"""umT5-XXL text encoder (encoder only) and its prompt tokenizer.

Matches `wan/modules/t5.py` (`umt5_xxl(encoder_only=True)`, `T5EncoderModel`) and
`wan/modules/tokenizers.py` of Wan-Video/Wan2.2@42bf4cf; implements `shared/wan22-spec.md` §4.

The network is transformers' `UMT5EncoderModel`: it is the same computation as the official
`T5Encoder` (§4.5; no 1/√d scaling, per-layer relative buckets, gated tanh-GELU written op by op,
fp32-variance RMS norm), so the official `.pth` is loaded through one key table instead of a
second copy of T5. Its *eager* attention is used on purpose: it rounds the scores and the softmax
to the activation dtype where the official einsum code does, and so matches it bit for bit in
bf16 on CPU; SDPA's fused kernel keeps them in fp32 and drifts by a few bf16 ulps (up to 0.08 on
outputs of size ~3). The [B, heads, 512, 512] score tensor it materialises is small.
`tests/wan_core/models/test_t5.py` checks all this against a direct implementation of §4.1.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ftfy
import regex  # the official cleaner uses `regex`; its `\s` is Unicode White_Space
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from wanspec.tasks import TEXT_LEN

# Official `.pth` key → transformers `UMT5EncoderModel` key (spec §4.5); `{n}` is the block index.
# `shared.weight` is tied to `encoder.embed_tokens.weight`; both are fed the same tensor.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{n}.norm1.weight", "encoder.block.{n}.layer.0.layer_norm.weight"),
    ("blocks.{n}.attn.q.weight", "encoder.block.{n}.layer.0.SelfAttention.q.weight"),
    ("blocks.{n}.attn.k.weight", "encoder.block.{n}.layer.0.SelfAttention.k.weight"),
    ("blocks.{n}.attn.v.weight", "encoder.block.{n}.layer.0.SelfAttention.v.weight"),
    ("blocks.{n}.attn.o.weight", "encoder.block.{n}.layer.0.SelfAttention.o.weight"),
    (
        "blocks.{n}.pos_embedding.embedding.weight",
        "encoder.block.{n}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{n}.norm2.weight", "encoder.block.{n}.layer.1.layer_norm.weight"),
    ("blocks.{n}.ffn.gate.0.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{n}.ffn.fc1.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{n}.ffn.fc2.weight", "encoder.block.{n}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)


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

    def to_hf(self) -> UMT5Config:
        return UMT5Config(
            vocab_size=self.vocab_size, d_model=self.dim, d_kv=self.dim_attn // self.num_heads,
            d_ff=self.dim_ffn, num_layers=self.num_layers, num_heads=self.num_heads,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance, feed_forward_proj="gated-gelu",
            layer_norm_epsilon=self.eps, dropout_rate=0.0, is_encoder_decoder=False,
            use_cache=False, attn_implementation="eager",
        )


def to_hf_state_dict(official: Mapping[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Rename an official state dict by `KEY_MAP` (plus the tied `encoder.embed_tokens`)."""
    out: dict[str, Tensor] = {}
    for src, dst in KEY_MAP:
        for n in range(num_layers) if "{n}" in src else (None,):
            out[dst.format(n=n)] = official[src.format(n=n)]
    out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def build_umt5(
    config: T5Config, official: Mapping[str, Tensor], *, device: torch.device | str, dtype: torch.dtype
) -> UMT5EncoderModel:
    """A `UMT5EncoderModel` holding the official weights (moved to device/dtype), in eval mode.

    Built on the meta device and filled with `assign=True`, so the only copy of each weight is
    the one converted from `official` (none if the file is already in `dtype` on `device`).
    """
    with torch.device("meta"):
        model = UMT5EncoderModel(config.to_hf())
    weights = {k: v.to(device=device, dtype=dtype) for k, v in official.items()}
    model.load_state_dict(to_hf_state_dict(weights, config.num_layers), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def clean_prompt(text: str) -> str:
    """The official `whitespace` cleaning (§4.2): ftfy, html-unescape twice, collapse whitespace."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class T5Encoder(nn.Module):
    """Prompts → one `[n_i, dim]` context per prompt, as the official `T5EncoderModel` (§4.2–4.3)."""

    def __init__(
        self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase, text_len: int = TEXT_LEN
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.eval()  # inference only: upstream never trains the encoder

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Cleaned prompts → (ids, mask), each [B, text_len]; `</s>` appended, pad id 0."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
            max_length=self.text_len, add_special_tokens=True, return_tensors="pt",
        )
        return batch.input_ids, batch.attention_mask

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, L] ids and key mask → [B, L, dim] in the model's dtype."""
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: torch.device | str) -> list[Tensor]:
        """Run on `device` (where the model must be) and trim each row to its n_i real tokens."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        context = self(ids, mask)  # [B, text_len, dim]
        return [u[:n] for u, n in zip(context, mask.sum(dim=1).tolist())]

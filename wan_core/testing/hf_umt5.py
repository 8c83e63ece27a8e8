"""transformers' umT5 as the independent peer of ours: the model and tokenizer upstream's code loads.

Used by tests and benchmarks only (`wan_core` itself does not import transformers). The key table
is spec §4.5: the official `.pth` names onto `UMT5EncoderModel`'s, checked there against the
official `T5Encoder`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from wan_core.models.t5 import T5Config

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


def hf_config(config: T5Config, attention: str = "eager") -> UMT5Config:
    return UMT5Config(
        vocab_size=config.vocab_size, d_model=config.dim, d_kv=config.dim_attn // config.num_heads,
        d_ff=config.dim_ffn, num_layers=config.num_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.num_buckets,
        relative_attention_max_distance=config.max_distance, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=config.eps, dropout_rate=0.0, is_encoder_decoder=False,
        use_cache=False, attn_implementation=attention,
    )


def hf_umt5(config: T5Config, official: Mapping[str, Tensor], attention: str = "eager") -> UMT5EncoderModel:
    """`UMT5EncoderModel` holding `official` (renamed, not copied), in eval mode.

    `attention="eager"` rounds as the official code does; "sdpa" is what diffusers' pipelines get.
    """
    with torch.device("meta"):
        model = UMT5EncoderModel(hf_config(config, attention))
    renamed: dict[str, Tensor] = {}
    for src, dst in KEY_MAP:
        for n in range(config.num_layers) if "{n}" in src else (None,):
            renamed[dst.format(n=n)] = official[src.format(n=n)]
    renamed["encoder.embed_tokens.weight"] = renamed["shared.weight"]
    model.load_state_dict(renamed, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def auto_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """What upstream's `HuggingfaceTokenizer` loads: `AutoTokenizer` on the folder, local files only."""
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

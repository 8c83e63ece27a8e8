"""diffusers' `WanTransformer3DModel` as an independent reference for our DiT, with our weights.

Used by the parity tests and `bench/dit_forward.py` only. The rename table is the one of
spec §2.2 (from diffusers' `scripts/convert_wan_to_diffusers.py`); diffusers fuses nothing else,
so the renamed tensors are views of ours, not copies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from wan_core.models.dit import DiTConfig

# official name fragment → diffusers name fragment, applied in order to each key
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"\.modulation$", ".scale_shift_table"),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.attn([12])\.q\.", r".attn\1.to_q."),
    (r"\.attn([12])\.k\.", r".attn\1.to_k."),
    (r"\.attn([12])\.v\.", r".attn\1.to_v."),
    (r"\.attn([12])\.o\.", r".attn\1.to_out.0."),
    (r"\.ffn\.0\.", ".ffn.net.0.proj."),
    (r"\.ffn\.2\.", ".ffn.net.2."),
    (r"\.norm3\.", ".norm2."),  # the affine cross-attention LayerNorm is norm3 upstream, norm2 in diffusers
)


def to_diffusers_name(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def to_diffusers_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our (official) parameter names → diffusers `WanTransformer3DModel` names, same tensors."""
    return {to_diffusers_name(k): v for k, v in state_dict.items()}


def diffusers_config(cfg: DiTConfig) -> dict[str, object]:
    """`WanTransformer3DModel` constructor arguments equivalent to `cfg`."""
    return dict(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
        image_dim=None,
        rope_max_seq_len=1024,
    )


def diffusers_wan(cfg: DiTConfig, state_dict: Mapping[str, Tensor], device: torch.device | str) -> torch.nn.Module:
    """Build `WanTransformer3DModel` on the meta device and assign our tensors (no copy).

    Only the non-persistent RoPE buffers are materialised, by re-running their module's
    constructor on `device`.
    """
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        model = WanTransformer3DModel(**diffusers_config(cfg))
    model.load_state_dict(to_diffusers_state_dict(state_dict), strict=True, assign=True)
    with torch.device(device):
        model.rope = WanRotaryPosEmbed(cfg.head_dim, cfg.patch_size, 1024)
    return model.eval().requires_grad_(False)

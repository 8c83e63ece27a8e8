"""Fixed DiT inputs shared by the torchrun worker and the one-process reference."""

from __future__ import annotations

import torch
from torch import Tensor

from wan_core.testing.tiny_checkpoint import TINY_T5
from wanspec.tasks import TASKS, TEXT_LEN

# 3 × 2 × 6 latent → grid (3, 1, 3): L = 9 tokens, padded to 10 (P = 2) and 12 (P = 4).
LATENT_FHW = (3, 2, 6)


def dit_inputs(task: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """(x, t, context, context_null, y): per-token t for ti2v (frame-0 tokens at 0), [B] t otherwise."""
    spec = TASKS[task]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, spec.z_dim, *LATENT_FHW, generator=g)
    context = torch.zeros(2, TEXT_LEN, TINY_T5.dim)
    context[0, :7] = torch.randn(7, TINY_T5.dim, generator=g)
    context[1, :11] = torch.randn(11, TINY_T5.dim, generator=g)
    y = torch.randn(1, 20, *LATENT_FHW, generator=g) if spec.model_type == "i2v" else None
    if spec.model_type == "ti2v":
        t = torch.full((1, 9), 700.0)
        t[:, :3] = 0.0
    else:
        t = torch.tensor([700])
    return x, t, context[:1], context[1:], y

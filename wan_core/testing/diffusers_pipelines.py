"""diffusers' Wan 2.2 pipelines as an independent reference for ours, holding our loaded weights.

Used by `tests/wan_core/pipelines/` only. `reference_pipeline(pipe, shift)` builds, from one of our
loaded pipelines, diffusers' `WanPipeline` (T2V-A14B: `transformer` = high-noise expert,
`transformer_2` = low-noise expert, `boundary_ratio`; TI2V text mode: `expand_timesteps=True`) or
`WanImageToVideoPipeline` (I2V-A14B; TI2V image mode with `expand_timesteps=True`), sharing our
tensors (renamed, not copied), with transformers' umT5 on our umT5 weights and `AutoTokenizer` on
the checkpoint's tokenizer folder (upstream's loaders).

Two deliberate alignments, so that what is compared is the pipeline and not known, documented
details of diffusers' building blocks:
- Scheduler: diffusers' `UniPCMultistepScheduler` in flow mode with the same settings as upstream,
  given upstream's base grid `linspace(0.999f, 0, N+1)[:-1]` (its own default grid differs, spec
  §6.1; `tests/wan_core/sampling/` shows the two solvers then agree bit for bit) and counting steps
  from 0 (`set_begin_index(0)`, spec §13.5).
- Time embedding: diffusers computes the sinusoid in fp32; upstream and we use float64 (§3.3), so
  its `timesteps_proj` is replaced by the float64 formula of §3.3 (as `tests/wan_core/models/test_dit.py` does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from wan_core.models.dit import WanModel
from wan_core.pipelines.common import WanPipeline
from wan_core.sampling.schedule import unipc_base_sigmas
from wan_core.testing.diffusers_vae import diffusers_vae
from wan_core.testing.diffusers_wan import diffusers_wan
from wan_core.testing.hf_umt5 import auto_tokenizer, hf_umt5
from wanspec.tasks import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT


class Float64Sinusoid(nn.Module):
    """Spec §3.3: ω_j = 10000^(−j/half), [cos(tω), sin(tω)] in float64, then fp32."""

    def __init__(self, freq_dim: int) -> None:
        super().__init__()
        self.half = freq_dim // 2

    def forward(self, t: Tensor) -> Tensor:
        omega = torch.pow(10000.0, -torch.arange(self.half, dtype=torch.float64) / self.half)
        phase = torch.outer(t.double().cpu(), omega)
        return torch.cat([phase.cos(), phase.sin()], dim=1).float().to(t.device)


def reference_transformer(model: WanModel) -> nn.Module:
    """diffusers' `WanTransformer3DModel` with `model`'s weights and the float64 sinusoid."""
    ref = diffusers_wan(model.cfg, model.state_dict(), "cpu")
    ref.condition_embedder.timesteps_proj = Float64Sinusoid(model.cfg.freq_dim)
    return ref


def unipc_settings(shift: float) -> dict[str, object]:
    """Upstream's flow UniPC settings (spec §6.2) as `UniPCMultistepScheduler` arguments."""
    return dict(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        predict_x0=True, solver_type="bh2", lower_order_final=True, disable_corrector=[],
        use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero",
    )  # fmt: skip


def upstream_grid_unipc(shift: float):
    """diffusers' flow UniPC with upstream's settings and sigma grid (spec §6.1–6.2)."""
    from diffusers import UniPCMultistepScheduler

    class UpstreamGridUniPC(UniPCMultistepScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):  # noqa: ANN001
            super().set_timesteps(sigmas=unipc_base_sigmas(num_inference_steps).copy(), device=device)
            self.set_begin_index(0)

    return UpstreamGridUniPC(**unipc_settings(shift))


def reference_pipeline(pipe: WanPipeline, shift: float, *, image: bool = False):
    """The diffusers pipeline equivalent to `pipe` (text or image mode), on the CPU."""
    from diffusers import WanImageToVideoPipeline
    from diffusers import WanPipeline as DiffusersWanPipeline

    task = pipe.task
    if task.is_moe:
        transformers = dict(
            transformer=reference_transformer(pipe.experts[HIGH_NOISE_EXPERT]),
            transformer_2=reference_transformer(pipe.experts[LOW_NOISE_EXPERT]),
            boundary_ratio=task.boundary,
        )
    else:
        transformers = dict(transformer=reference_transformer(pipe.experts[""]), expand_timesteps=True)
    t5 = pipe.text_encoder.model
    text_encoder = hf_umt5(t5.config, t5.state_dict())
    common = dict(
        tokenizer=auto_tokenizer(pipe.folder.tokenizer), text_encoder=text_encoder,
        vae=diffusers_vae(pipe.vae), scheduler=upstream_grid_unipc(shift), **transformers,
    )
    cls = WanImageToVideoPipeline if image or task.model_type == "i2v" else DiffusersWanPipeline
    ref = cls(**common)
    ref.set_progress_bar_config(disable=True)
    return ref


def to_unit_range(video: Tensor) -> np.ndarray:
    """Our [3, F, H, W] in [−1, 1] → diffusers' `output_type="np"` layout [F, H, W, 3] in [0, 1]."""
    return (video / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).numpy()

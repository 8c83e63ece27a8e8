"""Prompt extension (upstream `--use_prompt_extend`, spec §10): an LLM rewrites the prompt first.

    from wan_core.prompt_extend import extend_prompt
    out = extend_prompt("a fox in the snow", method="dashscope", task="t2v-A14B", tar_lang="en", seed=42)
    out.prompt     # the extended prompt, or the original one when out.fallback
    out.message    # why it fell back

Backends: `dashscope` (`DashScopePromptExpander`, the DashScope API through the official SDK,
`DASH_API_KEY` / `DASH_API_URL`) and `local_qwen` (`QwenPromptExpander`, Qwen2.5 or Qwen2.5-VL
through transformers). System prompts (zh/en, T2V / I2V / I2V without text) live in
`system_prompts`.

A failed call (HTTP error, timeout, a refused key, an empty answer) falls back to the user's
prompt with `status=False` and the reason in `message`; `PromptOutput.report()` logs it as a
warning, and the CLI and the runner always report it. A backend that cannot be built (no API
key, a model folder that does not load) raises `PromptExtensionError` instead: that is a setup
the user must fix, not a transient failure.

Under torchrun (spec §9) only rank 0 builds the backend and calls it (upstream builds it on every
rank, which loads a local Qwen once per rank for nothing); the result, or rank 0's setup error,
is broadcast so every rank encodes the same prompt or fails the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wan_core.prompt_extend.base import PromptExpander, PromptExtensionError, PromptOutput
from wan_core.prompt_extend.system_prompts import choose as choose_system_prompt

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from wan_core.parallel import ParallelLayout

METHODS = ("local_qwen", "dashscope")


def make_expander(method: str, model: str | None = None, *, is_vl: bool = False,
                  device: torch.device | str = "cpu", **kwargs: Any) -> PromptExpander:
    """The backend for `method`; `is_vl` (an image is given) picks the default VL model."""
    if method == "dashscope":
        from wan_core.prompt_extend.dashscope_api import DashScopePromptExpander

        return DashScopePromptExpander(model, is_vl=is_vl, **kwargs)
    if method == "local_qwen":
        from wan_core.prompt_extend.local_qwen import QwenPromptExpander

        return QwenPromptExpander(model, is_vl=is_vl, device=device, **kwargs)
    raise ValueError(f"unknown prompt extension method {method!r}; use one of {', '.join(METHODS)}")


def extend_prompt(prompt: str, *, method: str, model: str | None = None, task: str | None = None,
                  tar_lang: str = "zh", image: Image.Image | None = None, seed: int = -1,
                  device: torch.device | str = "cpu", layout: ParallelLayout | None = None,
                  **kwargs: Any) -> PromptOutput:
    """Build the backend and extend once (rank 0), broadcast to every rank of `layout`.

    Returns the `PromptOutput` (a fallback has `status=False`); raises `PromptExtensionError` on
    every rank when rank 0 cannot build the backend.
    """
    distributed = layout is not None and layout.distributed
    result: PromptOutput | PromptExtensionError | None = None
    if not distributed or layout.is_main:
        try:
            expander = make_expander(method, model, is_vl=image is not None, device=device, **kwargs)
            result = expander(prompt, tar_lang=tar_lang, image=image, seed=seed, task=task)
            del expander
        except PromptExtensionError as e:
            if not distributed:
                raise
            result = e
    if distributed:
        import torch.distributed as dist

        box: list[Any] = [result.to_dict() if isinstance(result, PromptOutput)
                          else {"error": str(result)} if result is not None else None]
        dist.broadcast_object_list(box, src=0)
        if "error" in box[0]:
            raise PromptExtensionError(box[0]["error"])
        result = PromptOutput.from_dict(box[0])
    assert isinstance(result, PromptOutput)
    return result


__all__ = [
    "METHODS",
    "PromptExpander",
    "PromptExtensionError",
    "PromptOutput",
    "choose_system_prompt",
    "extend_prompt",
    "make_expander",
]

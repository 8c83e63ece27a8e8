"""What every prompt-extension backend returns and how it is asked (spec §10)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from wan_core.prompt_extend import system_prompts

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("wan_core.prompt_extend")


class PromptExtensionError(Exception):
    """The extender cannot be built (no API key, a model that does not load): a setup problem the
    user must fix, unlike a failed call, which falls back to the original prompt."""


@dataclass(frozen=True)
class PromptOutput:
    """Upstream's `PromptOutput` plus what we report.

    status: True when `prompt` is the extended prompt; False on a fallback, where `prompt` is the
    user's original prompt and `message` says why the extension failed.
    """

    status: bool
    prompt: str
    original: str
    method: str
    model: str
    seed: int = -1
    system_prompt: str = ""
    message: str = ""

    @property
    def fallback(self) -> bool:
        return not self.status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptOutput:
        return cls(**data)

    def report(self, logger: logging.Logger = log) -> None:
        """One log line either way; a fallback is a WARNING with the reason (never silent)."""
        fields = {"prompt_extension": self.summary()}
        if self.status:
            logger.info("extended prompt (%s, %s): %s", self.method, self.model, self.prompt, extra=fields)
        else:
            logger.warning("prompt extension failed (%s, %s): %s; falling back to the original prompt",
                           self.method, self.model, self.message, extra=fields)

    def summary(self) -> dict[str, Any]:
        """The structured record (runner logs): what was asked and what came back."""
        return {"status": "extended" if self.status else "fallback", "method": self.method, "model": self.model,
                "original_prompt": self.original, "prompt": self.prompt, "message": self.message}


class PromptExpander:
    """A backend: `expander(prompt, tar_lang=…, image=…, seed=…, task=…)` → `PromptOutput`.

    Subclasses implement `extend(prompt, system_prompt, image, seed)` returning the new text or
    raising; `__call__` picks the system prompt (§10) and turns a failure into a fallback.
    """

    method = "base"

    def __init__(self, model: str) -> None:
        self.model = model

    def extend(self, prompt: str, system_prompt: str, image: Image.Image | None, seed: int) -> str:
        raise NotImplementedError

    def __call__(self, prompt: str, *, tar_lang: str = "zh", image: Image.Image | None = None, seed: int = -1,
                 task: str | None = None, system_prompt: str | None = None) -> PromptOutput:
        sys_prompt = system_prompt or system_prompts.choose(task, tar_lang, image is not None, prompt)
        common = dict(original=prompt, method=self.method, model=self.model, seed=seed, system_prompt=sys_prompt)
        try:
            text = self.extend(prompt, sys_prompt, image, seed)
        except Exception as e:  # noqa: BLE001 — any failure of the call falls back (spec §10), reported
            return PromptOutput(status=False, prompt=prompt, message=f"{type(e).__name__}: {e}", **common)
        text = text.strip()
        if not text:
            return PromptOutput(status=False, prompt=prompt, message="the model returned an empty prompt", **common)
        return PromptOutput(status=True, prompt=text, **common)

"""Local Qwen backend (`--prompt_extend_method local_qwen`, the default method; spec §10.2).

Qwen2.5-Instruct (text) or Qwen2.5-VL-Instruct (with an image) through transformers, from a local
folder, a Hugging Face id or one of upstream's aliases. Loaded on the CPU (dtype `auto`, fp16 for
AWQ names, FlashAttention-2 when the `flash_attn` package imports and the device is CUDA), moved
to `device` for the call and back to the CPU after. Chat template with the system prompt and the
generation prompt; `generate(max_new_tokens=512)` with the model's own generation config; the
seed is not used (as upstream: deterministic only if the model's config decodes greedily).

Differences from upstream: the VL image goes straight to the processor (its pixel bounds
256·28·28 … 1280·28·28 apply) instead of through `qwen_vl_utils.process_vision_info`, whose own
wider bounds are a no-op on top of the processor's for ordinary images.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from wan_core.prompt_extend.base import PromptExpander, PromptExtensionError

if TYPE_CHECKING:
    import torch
    from PIL import Image

ALIASES = {
    "Qwen2.5_3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5_7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5_14B": "Qwen/Qwen2.5-14B-Instruct",
    "QwenVL2.5_3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "QwenVL2.5_7B": "Qwen/Qwen2.5-VL-7B-Instruct",
}
DEFAULT_TEXT_MODEL = "Qwen2.5_14B"
DEFAULT_VL_MODEL = "QwenVL2.5_7B"
MAX_NEW_TOKENS = 512
VL_MIN_PIXELS = 256 * 28 * 28
VL_MAX_PIXELS = 1280 * 28 * 28


def resolve_model(name: str) -> str:
    """An alias becomes its Hugging Face id; anything else (a path, an id) is used as given."""
    return ALIASES.get(name, name)


class QwenPromptExpander(PromptExpander):
    method = "local_qwen"

    def __init__(self, model: str | None = None, *, is_vl: bool = False, device: torch.device | str = "cpu",
                 max_new_tokens: int | None = None) -> None:
        import torch

        super().__init__(model or (DEFAULT_VL_MODEL if is_vl else DEFAULT_TEXT_MODEL))
        self.is_vl = is_vl
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens or MAX_NEW_TOKENS
        self.model_path = resolve_model(self.model)
        kwargs: dict[str, Any] = {"dtype": torch.float16 if "AWQ" in self.model_path else "auto"}
        if self.device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            kwargs["attn_implementation"] = "flash_attention_2"
        try:
            if is_vl:
                from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

                bounds = {"shortest_edge": VL_MIN_PIXELS, "longest_edge": VL_MAX_PIXELS}  # pixels, not sides
                self.processor = AutoProcessor.from_pretrained(self.model_path, size=bounds)
                self.llm = Qwen2_5_VLForConditionalGeneration.from_pretrained(self.model_path, device_map="cpu", **kwargs)
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
                self.llm = AutoModelForCausalLM.from_pretrained(self.model_path, device_map="cpu", **kwargs)
        except (OSError, ValueError) as e:
            raise PromptExtensionError(f"prompt extension model {self.model!r} ({self.model_path}) does not load: {e}; "
                                       "give a local folder of a Qwen2.5(-VL) Instruct model") from e
        self.llm.eval()

    def extend(self, prompt: str, system_prompt: str, image: Image.Image | None, seed: int) -> str:
        import torch

        self.llm.to(self.device)
        try:
            with torch.no_grad():
                return self._vl(prompt, system_prompt, image) if self.is_vl else self._text(prompt, system_prompt)
        finally:
            self.llm.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _generate(self, inputs: dict[str, Any]) -> list[int]:
        out = self.llm.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    def _text(self, prompt: str, system_prompt: str) -> str:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer([text], return_tensors="pt").to(self.device)
        return self.tokenizer.decode(self._generate(dict(inputs)), skip_special_tokens=True)

    def _vl(self, prompt: str, system_prompt: str, image: Image.Image | None) -> str:
        user: list[dict[str, Any]] = [{"type": "image"}] if image is not None else []  # image first, then text
        user.append({"type": "text", "text": prompt})
        messages = [{"role": "system", "content": [{"type": "text", "text": system_prompt}]},
                    {"role": "user", "content": user}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [image.convert("RGB")] if image is not None else None
        inputs = self.processor(text=[text], images=images, padding=True, return_tensors="pt").to(self.device)
        return self.processor.batch_decode([self._generate(dict(inputs))], skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)[0]

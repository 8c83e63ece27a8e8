"""Tiny random Qwen2.5-Instruct and Qwen2.5-VL-Instruct folders for the local_qwen tests.

Real Qwen checkpoints cannot be downloaded in tests, so `write_tiny_qwen(folder)` and
`write_tiny_qwen_vl(folder)` save folders with the same layout that `AutoTokenizer` /
`AutoModelForCausalLM` / `AutoProcessor` / `Qwen2_5_VLForConditionalGeneration.from_pretrained`
load: a real byte-level BPE tokenizer trained here (with Qwen's special tokens `<|im_start|>`,
`<|im_end|>`, `<|endoftext|>`, the vision tokens, and a ChatML chat template), a random model of
a few thousand parameters (fixed seed) and a greedy generation config, so generation is
deterministic (blanks and special tokens suppressed, so the answer is visible text).
"""

from __future__ import annotations

from pathlib import Path

from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, EXAMPLE_PROMPT_I2V, EXAMPLE_PROMPT_T2V

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# ChatML as Qwen2.5(-VL) writes it; content is a string or a list of {"type": "text"|"image"} parts.
CHAT_TEMPLATE = (
    r"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    r"{% if message['content'] is string %}{{ message['content'] }}"
    r"{% else %}{% for part in message['content'] %}"
    r"{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    r"{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    r"{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from wan_core.prompt_extend.system_prompts import SYSTEM_PROMPTS

    return [*SYSTEM_PROMPTS.values(), DEFAULT_NEGATIVE_PROMPT, EXAMPLE_PROMPT_T2V, EXAMPLE_PROMPT_I2V,
            "a red fox in the snow, golden hour, slow dolly-in", "一只小猫在草地上追逐蝴蝶"]


def build_tokenizer(vocab_size: int = 600):
    """A trained byte-level BPE wrapped as a fast Qwen2 tokenizer with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE,
                                   model_max_length=4096)


def _text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))


def _greedy(tokenizer, max_new_tokens: int):
    from transformers import GenerationConfig

    # A random model may well pick only blanks or special tokens; suppress them, so the answer is
    # visible text (the tests check a non-empty string comes back).
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i], skip_special_tokens=True).strip()]
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, suppress_tokens=blank,
                            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))


def write_tiny_qwen(folder: str | Path, seed: int = 0, max_new_tokens: int = 16) -> Path:
    """A Qwen2.5-Instruct-shaped folder (Qwen2ForCausalLM)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer)))
    model.generation_config = _greedy(tokenizer, max_new_tokens)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_qwen_vl(folder: str | Path, seed: int = 0, max_new_tokens: int = 16) -> Path:
    """A Qwen2.5-VL-Instruct-shaped folder (Qwen2_5_VLForConditionalGeneration + processor)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = _text_config(tokenizer)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 1, 1]}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1], in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = _greedy(tokenizer, max_new_tokens)
    model.save_pretrained(folder)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder

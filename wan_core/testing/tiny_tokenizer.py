"""Makes the tiny umT5-style tokenizer folder shipped in `wan_core/testing/assets/umt5-tiny/`.

The real `google/umt5-xxl` tokenizer (4.3 MB SentencePiece + 16 MB tokenizer.json) cannot be
downloaded in tests, so tiny checkpoints carry this stand-in. It is a real SentencePiece unigram
model with umT5's special ids (pad 0, eos `</s>` 1, unk 2, no bos; nmt_nfkc normalisation) and the
same four files, loaded through `AutoTokenizer.from_pretrained` as a `T5Tokenizer` exactly like the
real folder (spec §2.1, §4.2). Its corpus mixes English, Chinese and a few other scripts so that
the default Chinese negative prompt (§1.3) tokenizes without `<unk>`.

Regenerate (deterministic: one thread, fixed seed; needs `sentencepiece` and `protobuf`):

    python -m wan_core.testing.tiny_tokenizer [--out wan_core/testing/assets/umt5-tiny]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, EXAMPLE_PROMPT_I2V, EXAMPLE_PROMPT_T2V

ASSET_DIR = Path(__file__).parent / "assets" / "umt5-tiny"
VOCAB_SIZE = 512  # SentencePiece pieces; the tiny T5 embedding has more rows, as umT5 (256384 > 256300)

_CORPUS = [
    DEFAULT_NEGATIVE_PROMPT,
    EXAMPLE_PROMPT_T2V,
    EXAMPLE_PROMPT_I2V,
    "A cinematic shot of a red fox running through fresh snow at sunrise, slow motion, 4k.",
    "The camera slowly pans across a quiet harbour; boats rock gently on the water.",
    "A young woman with long black hair walks down a busy street in Tokyo at night, neon lights.",
    "Close-up of a hummingbird drinking nectar from a bright purple flower, shallow depth of field.",
    "An astronaut rides a horse on the surface of the moon, the earth rising behind them.",
    "Time-lapse of clouds rolling over green mountains, golden hour, dramatic lighting.",
    "一只可爱的小猫在阳光明媚的草地上追逐蝴蝶，画面清晰，色彩鲜艳。",
    "城市夜景，高楼大厦灯火通明，车流在街道上川流不息，电影感镜头。",
    "一位老人坐在公园的长椅上看报纸，秋天的落叶缓缓飘落。",
    "海浪拍打着礁石，远处的灯塔在夕阳下闪闪发光，慢动作镜头。",
    "两只拟人化的猫咪穿着舒适的拳击装备，在聚光灯照亮的舞台上激烈打斗。",
    "Ein kleiner Hund spielt im Garten mit einem roten Ball, sonniger Nachmittag.",
    "Une femme marche sur la plage au coucher du soleil, les vagues touchent ses pieds.",
    "Un gato negro duerme junto a la ventana mientras cae la lluvia.",
    "桜の花びらが風に舞い、川沿いの道をゆっくりと歩く人々。",
    "Кошка сидит на подоконнике и смотрит на падающий снег.",
    "0123456789 &amp; <b>bold</b> \"quotes\" 'single' (brackets) [square] {curly} - _ + = / ? ! %",
]


def train(out_dir: Path) -> Path:
    """Train the SentencePiece model and write the four files of a umT5 tokenizer folder."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(0)
    model = io.BytesIO()  # in memory: a file path would be recorded in the model's TrainerSpec
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    spiece = model.getvalue()
    (out_dir / "spiece.model").write_bytes(spiece)
    # T5Tokenizer converts spiece.model into a tokenizers Unigram with umT5's post-processor
    # (append `</s>`); saving it writes tokenizer.json, so loading needs neither sentencepiece nor
    # protobuf, just like the published folder.
    tokenizer = T5Tokenizer.from_pretrained(str(out_dir), extra_ids=0, legacy=False)
    tokenizer.save_pretrained(str(out_dir))
    # The two small json files as the published umT5 folder has them (transformers 5 writes its
    # own variant of the first and no longer writes the second).
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    config = {**special, "tokenizer_class": "T5Tokenizer", "extra_ids": 0,
              "additional_special_tokens": [], "model_max_length": 512}
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out_dir / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    print(train(parser.parse_args().out))


if __name__ == "__main__":
    main()

"""umT5 encoder and tokenizer: ours equals a direct §4.1 encoder and transformers' umT5.

Two independent peers: the reference below is written from `shared/wan22-spec.md` §4.1 alone (relative buckets, attention
without 1/√d scaling and with masked keys set to the dtype minimum, fp32 softmax, gated tanh-GELU
written out as the official `GELU` module, RMS norm with fp32 variance), reads the official key
names directly, and shares no code with `wan_core.models.t5`; transformers' `UMT5EncoderModel` and
`AutoTokenizer` are what upstream and diffusers load (`wan_core.testing.hf_umt5`).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from wan_core.checkpoint.errors import CheckpointError
from wan_core.checkpoint.t5 import load_t5
from wan_core.models.t5 import T5Config, T5Encoder, clean_prompt
from wan_core.testing.hf_umt5 import auto_tokenizer, hf_umt5
from wan_core.testing.tiny_checkpoint import TINY_T5, write_t5
from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, T5_CHECKPOINT, T5_TOKENIZER, TEXT_LEN

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = [
    "A cat.",  # short: mostly padding
    DEFAULT_NEGATIVE_PROMPT,  # Chinese, ~120 tokens
    "An astronaut rides a horse on the moon, " * 60,  # > 512 tokens: truncated, no padding
]


# ---- reference: spec §4.1, official key names -------------------------------------------------

def _rms(x: Tensor, w: Tensor, eps: float = 1e-6) -> Tensor:
    x = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(w.dtype) if w.dtype in (torch.bfloat16, torch.float16) else w * x


def _buckets(lq: int, lk: int, num_buckets: int = 32, max_dist: int = 128) -> Tensor:
    rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None]  # key_pos - query_pos
    n = num_buckets // 2
    bucket = (rel > 0).long() * n
    r = rel.abs()
    max_exact = n // 2
    large = max_exact + (
        torch.log(r.float() / max_exact) / math.log(max_dist / max_exact) * (n - max_exact)
    ).long()
    return bucket + torch.where(r < max_exact, r, large.clamp(max=n - 1))


def reference_encoder(sd: dict[str, Tensor], ids: Tensor, mask: Tensor) -> Tensor:
    num_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    x = sd["token_embedding.weight"][ids]  # [B, L, C], not scaled
    b, length, _ = x.shape
    bucket = _buckets(length, length, sd["blocks.0.pos_embedding.embedding.weight"].shape[0])
    for i in range(num_layers):
        p = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        heads = p("pos_embedding.embedding.weight").shape[1]
        bias = p("pos_embedding.embedding.weight")[bucket].permute(2, 0, 1)[None]  # [1, N, L, L]
        bias = bias.expand(b, -1, -1, -1).masked_fill(
            mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        h = _rms(x, p("norm1.weight"))
        q, k, v = (F.linear(h, p(f"attn.{n}.weight")).view(b, length, heads, -1) for n in "qkv")
        attn = torch.einsum("binc,bjnc->bnij", q, k) + bias  # no 1/sqrt(d)
        attn = attn.float().softmax(-1).to(x.dtype)
        out = torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, length, -1)
        x = x + F.linear(out, p("attn.o.weight"))
        h = _rms(x, p("norm2.weight"))
        g = F.linear(h, p("ffn.gate.0.weight"))
        gate = 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g.pow(3.0))))
        x = x + F.linear(F.linear(h, p("ffn.fc1.weight")) * gate, p("ffn.fc2.weight"))
    return _rms(x, sd["norm.weight"])


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t5")
    write_t5(out, TINY_T5, torch.Generator().manual_seed(0))
    return out


def _official(ckpt: Path, dtype: torch.dtype) -> dict[str, Tensor]:
    sd = torch.load(ckpt / T5_CHECKPOINT, map_location="cpu", weights_only=True)
    return {k: v.to(dtype) for k, v in sd.items()}


# ---- parity -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_encoder_equals_reference(ckpt: Path, dtype: torch.dtype, atol: float) -> None:
    """Same weights, same tokens: every row (real and padded, padded and full prompts) agrees.

    Measured on CPU: identical in both fp32 and bf16 (max abs 0); atol leaves room for other BLAS.
    """
    encoder = load_t5(ckpt, device="cpu", dtype=dtype)
    ids, mask = encoder.tokenize(PROMPTS)
    assert mask.sum(1).tolist()[2] == TEXT_LEN and mask.sum(1).tolist()[0] < 10
    with torch.no_grad():
        ours = encoder(ids, mask)
    ref = reference_encoder(_official(ckpt, dtype), ids, mask)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0, atol=atol)


def test_encode_trims_to_real_tokens_and_matches_unpadded_run(ckpt: Path) -> None:
    """§4.3: each context is [n_i, dim] with n_i = text + EOS, and equals running on n_i tokens."""
    encoder = load_t5(ckpt, device="cpu", dtype=torch.float32)
    contexts = encoder.encode(PROMPTS, "cpu")
    ids, mask = encoder.tokenize(PROMPTS)
    sd = _official(ckpt, torch.float32)
    for context, row_ids, row_mask in zip(contexts, ids, mask):
        n = int(row_mask.sum())
        assert context.shape == (n, TINY_T5.dim)
        alone = reference_encoder(sd, row_ids[None, :n], row_mask[None, :n])[0]
        torch.testing.assert_close(context, alone, rtol=0, atol=1e-5)


def test_bf16_by_default_in_inference_mode(ckpt: Path) -> None:
    encoder = load_t5(ckpt, device="cpu")
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def test_config_inferred_from_shapes() -> None:
    assert T5Config.from_shapes(T5Config().official_shapes()) == T5Config()
    assert len(T5Config().official_shapes()) == 242  # spec §2.3
    assert T5Config.from_shapes(TINY_T5.official_shapes()) == TINY_T5


# ---- tokenizer ----------------------------------------------------------------------------------

def test_tokenizer_eos_padding_and_truncation(ckpt: Path) -> None:
    encoder = load_t5(ckpt, device="cpu")
    ids, mask = encoder.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (3, TEXT_LEN)
    for row_ids, row_mask in zip(ids, mask):
        n = int(row_mask.sum())
        assert row_mask[:n].all() and not row_mask[n:].any()
        assert row_ids[n - 1] == 1  # </s> closes the real tokens, even when truncated
        assert (row_ids[n:] == 0).all()  # pad id 0
        assert not (row_ids[: n - 1] == 1).any()
    assert not (ids == encoder.tokenizer.token_to_id("<unk>")).any()  # the Chinese negative prompt is covered


def test_tokenizer_equals_autotokenizer(ckpt: Path) -> None:
    """Upstream's call on `AutoTokenizer` (§4.2) gives the same ids and mask, truncation included."""
    encoder = load_t5(ckpt, device="cpu")
    prompts = [*PROMPTS, "", "Ünïcödé — ½ ﬁ ｆｕｌｌ ｗｉｄｔｈ", "桜の花びら " * 200]
    ids, mask = encoder.tokenize(prompts)
    batch = auto_tokenizer(ckpt / T5_TOKENIZER)(
        [clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
        max_length=TEXT_LEN, add_special_tokens=True, return_tensors="pt",
    )
    assert torch.equal(ids, batch.input_ids) and torch.equal(mask, batch.attention_mask)
    assert ids.dtype == mask.dtype == torch.long


def test_prompt_cleaning() -> None:
    """§4.2: ftfy, html.unescape twice, whitespace runs (incl. Unicode) collapsed, stripped."""
    assert clean_prompt("  A &amp;amp; B \n\t C\u3000 D  ") == "A & B C D"
    assert clean_prompt("The Mona Lisa doesn\u00c3\u00a2\u00e2\u201a\u00ac\u00e2\u201e\u00a2t") == (
        "The Mona Lisa doesn't"
    )
    # ftfy's width fix turns the negative prompt's full-width commas into ASCII ones, upstream too.
    assert clean_prompt(DEFAULT_NEGATIVE_PROMPT) == DEFAULT_NEGATIVE_PROMPT.replace("，", ",")


def test_cleaning_applies_before_tokenizing(ckpt: Path) -> None:
    encoder = load_t5(ckpt, device="cpu")
    a, _ = encoder.tokenize(["a  cat &amp;amp;\n dog"])
    b, _ = encoder.tokenize(["a cat & dog"])
    assert torch.equal(a, b)


# ---- loader errors ------------------------------------------------------------------------------

def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src / T5_TOKENIZER, dst / T5_TOKENIZER)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="file not found") as err:
        load_t5(tmp_path)
    assert err.value.path == tmp_path / T5_CHECKPOINT


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file(ckpt: Path, tmp_path: Path, damage: str) -> None:
    data = (ckpt / T5_CHECKPOINT).read_bytes()
    (tmp_path / T5_CHECKPOINT).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 1000)
    with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint") as err:
        load_t5(tmp_path)
    assert err.value.path == tmp_path / T5_CHECKPOINT


def test_wrong_keys_and_shapes(ckpt: Path, tmp_path: Path) -> None:
    _copy_tokenizer(ckpt, tmp_path)
    sd = _official(ckpt, torch.bfloat16)
    del sd["blocks.1.ffn.fc2.weight"]
    torch.save(sd, tmp_path / T5_CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.ffn\.fc2\.weight"):
        load_t5(tmp_path)
    sd = _official(ckpt, torch.bfloat16)
    sd["blocks.1.norm2.weight"] = torch.ones(7)
    torch.save(sd, tmp_path / T5_CHECKPOINT)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.norm2\.weight has shape \(7,\)"):
        load_t5(tmp_path)
    torch.save({"weight": torch.ones(3)}, tmp_path / T5_CHECKPOINT)
    with pytest.raises(CheckpointError, match="not a umT5 encoder state dict"):
        load_t5(tmp_path)


def test_missing_or_foreign_tokenizer(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / T5_CHECKPOINT).write_bytes((ckpt / T5_CHECKPOINT).read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer folder not found") as err:
        load_t5(tmp_path / T5_CHECKPOINT)  # the file path works too; tokenizer is its sibling
    assert err.value.path == tmp_path / T5_TOKENIZER
    (tmp_path / T5_TOKENIZER).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="file not found") as err:
        load_t5(tmp_path)
    assert err.value.path == tmp_path / T5_TOKENIZER / "tokenizer.json"
    (tmp_path / T5_TOKENIZER / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read by the tokenizers library"):
        load_t5(tmp_path)


def test_tokenizer_of_another_model_is_refused(ckpt: Path, tmp_path: Path) -> None:
    """Other special ids, or no `</s>` appended, would silently shift every context row."""
    (tmp_path / T5_CHECKPOINT).write_bytes((ckpt / T5_CHECKPOINT).read_bytes())
    _copy_tokenizer(ckpt, tmp_path)
    file = tmp_path / T5_TOKENIZER / "tokenizer.json"
    spec = json.loads(file.read_text())
    no_eos = {**spec, "post_processor": None}
    file.write_text(json.dumps(no_eos))
    with pytest.raises(CheckpointError, match="does not append </s>"):
        load_t5(tmp_path)
    swapped = json.loads(json.dumps(spec).replace('"<pad>"', '"<tmp>"').replace('"</s>"', '"<pad>"').replace('"<tmp>"', '"</s>"'))
    file.write_text(json.dumps(swapped))
    with pytest.raises(CheckpointError, match="<pad>/</s> ids are 1/0"):
        load_t5(tmp_path)


def test_generation_path_imports_no_transformers(ckpt: Path) -> None:
    """Its import stack cost ≈ 4 s of every cold start (BENCHMARKS.md); it stays the tests' peer only."""
    code = (
        "import sys, wan_core.cli, wan_core.pipelines, wan_core.parallel; from wan_core.checkpoint.t5 import load_t5; "
        f"load_t5({str(ckpt)!r}).encode(['a cat'], 'cpu'); sys.exit(' '.join(m for m in sys.modules if m.startswith('transformers')) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_encoder_equals_transformers_umt5(ckpt: Path) -> None:
    """transformers' eager umT5 on the same weights: the same numbers, bf16 included (§4.5)."""
    encoder = load_t5(ckpt, device="cpu")
    assert isinstance(encoder, T5Encoder) and isinstance(encoder, torch.nn.Module)
    ids, mask = encoder.tokenize(PROMPTS)
    peer = hf_umt5(encoder.model.config, encoder.model.state_dict())
    with torch.no_grad():
        ours, theirs = encoder(ids, mask), peer(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=1e-2)

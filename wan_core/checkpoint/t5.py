"""The official umT5 encoder file and tokenizer folder → a ready `T5Encoder` (spec §2.1, §2.3, §4).

Reads `<ckpt>/models_t5_umt5-xxl-enc-bf16.pth` (a plain `torch.save`d bf16 state dict) memory-
mapped, infers the architecture from its shapes (so tiny test files take the same path as the
11 GB one), demands the exact official key set, and loads the tokenizer from
`<ckpt>/google/umt5-xxl` with local files only. Every bad input is one `CheckpointError`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from wan_core.checkpoint.errors import CheckpointError, check_shapes
from wan_core.models.t5 import T5Config, T5Encoder, build_umt5
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER

# umT5's special ids (§4.2); a tokenizer with others belongs to another model.
PAD_ID, EOS_ID = 0, 1


def read_pth(path: Path, what: str) -> dict[str, Tensor]:
    """A `torch.save`d state dict, memory-mapped (no tensor data read until used)."""
    if not path.is_file():
        raise CheckpointError(path, "file not found", what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(path, f"cannot be read as a torch checkpoint ({reason})", what) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(path, "does not hold a flat dict of tensors", what)
    return state


def load_tokenizer(folder: Path, vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(folder)` from local files, checked to be umT5-like."""
    what = "the Hugging Face google/umt5-xxl tokenizer folder (spiece.model, tokenizer.json, …)"
    if not folder.is_dir():
        raise CheckpointError(folder, "tokenizer folder not found", what)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(folder, f"cannot be loaded by AutoTokenizer ({reason})", what) from None
    if (tokenizer.pad_token_id, tokenizer.eos_token_id) != (PAD_ID, EOS_ID):
        raise CheckpointError(
            folder, f"pad/eos ids are {tokenizer.pad_token_id}/{tokenizer.eos_token_id}",
            f"umT5's {PAD_ID}/{EOS_ID}",
        )
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(
            folder, f"{len(tokenizer)} tokens but the encoder embeds only {vocab_size}",
            "the tokenizer shipped with this encoder",
        )
    return tokenizer


def load_t5(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> T5Encoder:
    """The umT5 encoder + tokenizer of a checkpoint folder (or of the `.pth` file itself).

    dtype bf16 is the stored and official one (§4.1); fp32 is the CPU reference path. With bf16 on
    CPU the weights stay memory-mapped from the file rather than copied.
    """
    path = Path(path)
    file = path / T5_CHECKPOINT if path.is_dir() else path
    what = f"the umT5-XXL encoder state dict {T5_CHECKPOINT} (spec §2.3)"
    state = read_pth(file, what)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        config = T5Config.from_shapes(shapes)
    except KeyError as err:
        raise CheckpointError(file, f"not a umT5 encoder state dict (no {err.args[0]!r})", what) from None
    except ValueError as err:
        raise CheckpointError(file, f"not a umT5 encoder state dict ({err})", what) from None
    check_shapes(file, config.official_shapes(), shapes)
    tokenizer = load_tokenizer(file.parent / T5_TOKENIZER, config.vocab_size)
    return T5Encoder(build_umt5(config, state, device=device, dtype=dtype), tokenizer)

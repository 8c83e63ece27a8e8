"""The official umT5 encoder file and tokenizer folder → a ready `T5Encoder` (spec §2.1, §2.3, §4).

Reads `<ckpt>/models_t5_umt5-xxl-enc-bf16.pth` (a plain `torch.save`d bf16 state dict) memory-
mapped, infers the architecture from its shapes (so tiny test files take the same path as the
11 GB one), demands the exact official key set, and loads the tokenizer from
`<ckpt>/google/umt5-xxl/tokenizer.json`. Every bad input is one `CheckpointError`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import tokenizers
import torch
from torch import Tensor

from wan_core.checkpoint.errors import CheckpointError, check_shapes
from wan_core.models.t5 import T5Config, T5Encoder, build_umt5
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER, T5_TOKENIZER_FILE

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


def load_tokenizer(folder: Path, vocab_size: int | None = None) -> tokenizers.Tokenizer:
    """The folder's `tokenizer.json` (what `AutoTokenizer` loads there), checked to be umT5-like."""
    what = f"the Hugging Face google/umt5-xxl tokenizer folder with its {T5_TOKENIZER_FILE}"
    if not folder.is_dir():
        raise CheckpointError(folder, "tokenizer folder not found", what)
    file = folder / T5_TOKENIZER_FILE
    if not file.is_file():
        raise CheckpointError(file, "file not found", what)
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    except Exception as err:  # the Rust library raises plain Exception on any bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(file, f"cannot be read by the tokenizers library ({reason})", what) from None
    ids = (tokenizer.token_to_id("<pad>"), tokenizer.token_to_id("</s>"))
    if ids != (PAD_ID, EOS_ID):
        raise CheckpointError(file, f"<pad>/</s> ids are {ids[0]}/{ids[1]}", f"umT5's {PAD_ID}/{EOS_ID}")
    if tokenizer.encode("").ids != [EOS_ID]:
        raise CheckpointError(file, "does not append </s> to a prompt", "umT5's post-processor ($A </s>)")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and size > vocab_size:
        raise CheckpointError(
            file, f"{size} tokens but the encoder embeds only {vocab_size}", "the tokenizer shipped with this encoder"
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

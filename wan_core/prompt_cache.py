"""Encoded prompts kept on disk, so a run whose prompts were encoded before skips umT5 entirely.

umT5-XXL is 11.4 GB read from disk and copied to the GPU to encode two prompts once per video
(users' cold-start complaint, upstream PR #368's precomputed embeddings); the negative prompt is
nearly always the task's default, and seed sweeps, retries and re-runs repeat the positive one. A
hit returns the very tensor umT5 produced then: the same bits as encoding again on that kind of
device in that dtype, which is part of the entry's name (a bf16 encode on another GPU model, or
on the CPU, may differ in the last bits).

An entry is `<digest>.<dtype>.<device>.safetensors` under the cache folder: the unpadded
[n_tokens, 4096] context. The digest covers the prompt, the identity of the umT5 weights and
tokenizer (real path, size and modification time of both files: a file replaced in place keeps
its entries only if it keeps all three), and the code that encodes (the source of our umT5 and
its loader, the versions of torch and of the text cleaners and tokenizer), so an upgrade that
could change the bits never returns an older encode. Torch-free until an entry is read or written, so the
generate command and the runner's launcher can ask before importing torch whether umT5's file
needs reading ahead at all. Entries are written whole under a temporary name, then renamed; a
cache that cannot be read or written costs only the encode, never the run. An entry is
n_tokens × 8 KB in bf16 (≤ 4 MB; ≈ 0.9 MB for the default negative prompt); a hit marks its entry
used (its modification time), and a write that leaves more than `MAX_ENTRIES` removes the least
recently used, so a shared cache stays within a few GB of its claim.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from wan_core.kept import mark_used, package_versions, prune_least_used, source_digest, write_whole
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER, T5_TOKENIZER_FILE

if TYPE_CHECKING:
    import torch
    from torch import Tensor

log = logging.getLogger(__name__)

ENV_VAR = "WANOPS_PROMPT_CACHE"  # the folder, for the generate command's default and the runner
FORMAT = 1  # part of every digest: a new layout of entries never reads an old one
KEY = "context"
MAX_ENTRIES = 2048  # ≤ 2 GB of typical prompts, ≤ 8 GB at 512 tokens each


_CODE = ("models/t5.py", "checkpoint/t5.py")  # wan_core files whose code an encode runs
_PACKAGES = ("torch", "tokenizers", "ftfy", "regex")  # and the packages it runs


@functools.cache
def _code_identity() -> list[object]:
    """The encoding code's identity: our sources' digest and the packages' versions (file reads
    and package metadata only: the readahead asks before torch is imported)."""
    return [source_digest(*_CODE), package_versions(*_PACKAGES)]


def _file_identity(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


class PromptCache:
    """A folder of encoded prompts for one or more checkpoint folders (module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_env(cls) -> PromptCache | None:
        where = os.environ.get(ENV_VAR, "").strip()
        return cls(where) if where else None

    def digest(self, ckpt_dir: str | Path, prompt: str) -> str:
        """What names `prompt`'s entries for the umT5 of `ckpt_dir` (stat calls, no reads)."""
        root = Path(ckpt_dir)
        ident = [FORMAT, _code_identity(), _file_identity(root / T5_CHECKPOINT),
                 _file_identity(root / T5_TOKENIZER / T5_TOKENIZER_FILE), prompt]
        return hashlib.sha256(json.dumps(ident, ensure_ascii=False).encode()).hexdigest()

    def has_all(self, ckpt_dir: str | Path, prompts: Sequence[str]) -> bool:
        """Whether every prompt has an entry for some dtype and device: the run will very likely
        not need umT5 (the readahead's question; the pipeline checks its own dtype and device)."""
        try:
            return all(any(self.root.glob(f"{self.digest(ckpt_dir, p)}.*.safetensors")) for p in prompts)
        except OSError:  # no checkpoint files, no cache folder: nothing known
            return False

    def load(self, digest: str, variant: str, device: torch.device) -> Tensor | None:
        """The entry's context on `device`, or None (absent, or unreadable: then logged)."""
        path = self._path(digest, variant)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            context = load_file(path, device=str(device))[KEY]
        except Exception as err:  # a truncated or foreign file is a miss, not a failed run
            log.warning("prompt cache entry %s is unreadable (%s); encoding instead", path, err)
            return None
        mark_used(path)
        return context

    def store(self, digest: str, variant: str, context: Tensor) -> None:
        """Write the entry whole under a temporary name, then rename it; failures are logged."""
        from safetensors.torch import save_file

        path = self._path(digest, variant)
        try:
            write_whole(path, lambda partial: save_file({KEY: context.detach().contiguous().cpu()}, partial))
        except OSError as err:
            log.warning("cannot write prompt cache entry %s (%s); the next run encodes again", path, err)
            return
        prune_least_used(self.root, "*.safetensors", MAX_ENTRIES)

    def _path(self, digest: str, variant: str) -> Path:
        return self.root / f"{digest}.{variant}.safetensors"


def entry_variant(dtype: torch.dtype, device: torch.device) -> str:
    """`<dtype>.<device>`: what the encoder's bits depend on besides the prompt and weights."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{str(dtype).removeprefix('torch.')}.{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}"

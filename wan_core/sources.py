"""A digest of our own source files, for what is kept across processes and must not outlive the
code that made it (saved compiled blocks, encoded prompts, the compile cache's generations).
Torch-free: the runner's launcher and the readahead ask before torch is imported."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@functools.cache
def source_digest(*parts: str) -> str:
    """sha256 of the `.py` files under `parts` (files or folders relative to wan_core), with
    their paths, in a fixed order."""
    files = sorted(p for part in parts for p in ([ROOT / part] if part.endswith(".py") else (ROOT / part).rglob("*.py")))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()

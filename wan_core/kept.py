"""Files kept on disk across processes (saved compiled blocks, encoded prompts, the compile
cache's generations): named by the code that made them, written whole, bounded by use.
Torch-free: the runner's launcher and the readahead ask before torch is imported."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@functools.cache
def source_digest(*parts: str) -> str:
    """sha256 of the `.py` files under `parts` (files or folders relative to wan_core), with
    their paths, in a fixed order: what is kept must not outlive the code that made it."""
    files = sorted(p for part in parts for p in ([ROOT / part] if part.endswith(".py") else (ROOT / part).rglob("*.py")))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def package_versions(*names: str) -> list[str | None]:
    """The installed versions of `names` (None where one is missing), from package metadata:
    with `source_digest`, what names kept files made by other packages' code."""
    versions: list[str | None] = []
    for name in names:
        try:
            versions.append(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            versions.append(None)
    return versions


def write_whole(path: Path, write: Callable[[str], None]) -> None:
    """`write(partial)` fills a temporary file beside `path`, which then replaces `path`: a reader
    (another pod on the claim) never sees half a file. Errors propagate; the partial never stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=".partial")
    os.close(fd)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


def mark_used(path: Path) -> None:
    """A use of `path`: the last to go when its folder is pruned (a read-only claim: not marked)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune_least_used(folder: Path, pattern: str, keep: int) -> None:
    """Remove the least recently used files of `folder` matching `pattern` beyond `keep` (several
    pods may prune at once: a file already gone is fine)."""
    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return float("inf")  # gone meanwhile: not ours to remove

    files = list(folder.glob(pattern))
    for path in sorted(files, key=used)[: max(0, len(files) - keep)]:
        path.unlink(missing_ok=True)

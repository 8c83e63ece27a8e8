"""One error type for every checkpoint problem, with a message that names the file and the fix.

Loading a 60 GB folder should fail in one readable line, not in a traceback from deep inside
torch: every loader in this package raises `CheckpointError` and nothing else for bad input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, truncated, of another task, or has wrong tensors."""

    def __init__(self, path: str | Path, problem: str, expected: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.expected = expected
        message = f"{self.path}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")


def check_shapes(
    path: str | Path,
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
) -> None:
    """Demand the exact key set and shapes of the official file; list what is missing or extra."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        raise CheckpointError(path, "; ".join(parts), "the key set of the official file")
    wrong = [
        f"{k} has shape {tuple(found[k])}, expected {tuple(expected[k])}"
        for k in sorted(expected)
        if tuple(found[k]) != tuple(expected[k])
    ]
    if wrong:
        raise CheckpointError(path, "tensor shapes do not match: " + _listed(wrong))

"""wan_core: checkpoint-compatible Wan2.2 (DiT, VAEs, umT5 encoder) that loads the official folders.

`wan_core.load_pipeline(task=..., ckpt_dir=...)` is the entry point; it is imported on first use
so that `import wan_core` stays light (no torch until a pipeline is needed).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_pipeline"]


def __getattr__(name: str) -> Any:
    if name == "load_pipeline":
        from wan_core.pipelines import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'wan_core' has no attribute {name!r}")

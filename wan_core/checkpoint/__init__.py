"""Official Wan2.2 checkpoint folders → modules: configs read from the folder, strict keys."""

from wan_core.checkpoint.errors import CheckpointError, check_shapes

__all__ = ["CheckpointError", "check_shapes"]

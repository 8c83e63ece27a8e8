"""wan_core: checkpoint-compatible Wan2.2 (DiT, VAEs, umT5 encoder) that loads the official folders."""

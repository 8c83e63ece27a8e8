"""torchrun worker: the prompt cache under FSDP-sharded umT5 when ranks see different caches.

    torchrun --nproc_per_node 2 tests/wan_core/parallel/prompt_cache_worker.py CKPT CACHES OUT.pt

Rank r reads `CACHES/rank<r>` (the test fills rank 0's only), then every rank reads `CACHES/rank0`.
Rank 0 saves, per round, every rank's contexts and whether it loaded umT5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from wan_core.parallel import ParallelLayout, init_distributed, shutdown
from wan_core.pipelines import load_pipeline
from wan_core.prompt_cache import PromptCache


@torch.no_grad()
def main(ckpt: Path, caches: Path, path: Path) -> None:
    torch.set_num_threads(1)
    layout = init_distributed(ParallelLayout.from_env("ti2v-5B", dit_fsdp=True, t5_fsdp=True))
    out: dict[str, list] = {}
    for round_, folder in (("mixed", f"rank{layout.rank}"), ("shared", "rank0")):
        pipe = load_pipeline("ti2v-5B", ckpt, device="cpu", dtype=torch.float32, parallel=layout,
                             prompt_cache=PromptCache(caches / folder))
        mine = (*pipe.encode_prompts("a fox", "", False), pipe._text_encoder is not None)
        every: list = [None] * layout.world_size
        dist.all_gather_object(every, mine)
        out[round_] = every
    if layout.is_main:
        torch.save(out, path)
    shutdown(layout)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

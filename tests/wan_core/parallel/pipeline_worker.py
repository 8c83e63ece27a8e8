"""torchrun worker: every case of `cases.py` under the given layouts; rank 0 saves the videos.

    torchrun --nproc_per_node N tests/wan_core/parallel/pipeline_worker.py CKPT_ROOT OUT.pt LAYOUT…

LAYOUT is `u` (Ulysses over every rank) or `c` (CFG-parallel × Ulysses), plus `f` for FSDP on
both the DiT(s) and umT5: `u`, `uf`, `c`, `cf`. Other ranks must return None (rank 0 decodes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from wan_core.parallel import ParallelLayout, init_distributed, shutdown
from wan_core.pipelines import load_pipeline
from wanspec.tasks import TASKS

sys.path.insert(0, str(Path(__file__).parent))
from cases import CASES, run_case  # noqa: E402


def main(root: Path, out: Path, layouts: list[str]) -> None:
    torch.set_num_threads(1)
    videos: dict[str, torch.Tensor] = {}
    for spec in layouts:
        for task, modes in CASES.items():
            fsdp = "f" in spec
            layout = init_distributed(ParallelLayout.from_env(task, cfg_parallel=spec.startswith("c"),
                                                              dit_fsdp=fsdp, t5_fsdp=fsdp))
            pipe = load_pipeline(task, root / task, device="cpu", dtype=torch.float32, parallel=layout)
            for mode in modes:
                video = run_case(pipe, mode)
                if layout.is_main:
                    videos[f"{task}/{mode}/{spec}"] = video
                elif video is not None:
                    raise AssertionError(f"rank {layout.rank} decoded a video; only rank 0 may")
    if layout.is_main:
        torch.save(videos, out)
    shutdown(layout)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])

"""`torchrun … -m wan_core.generate` end to end: 2 ranks, FSDP on DiT and umT5, one MP4 from rank 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

REPO = Path(__file__).parents[3]
ARGS = ["--task", "ti2v-5B", "--size", "704*1280", "--frame_num", "1", "--sample_steps", "2", "--prompt", "a fox",
        "--base_seed", "5"]


def test_two_ranks_write_one_video_like_one_process(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANOPS_COLLECTIVE_TIMEOUT_S": "120"}
    ckpt = ["--ckpt_dir", str(tiny_ckpts["ti2v-5B"])]
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "wan_core.generate",
         *ARGS, *ckpt, "--dit_fsdp", "--t5_fsdp", "--save_file", str(tmp_path / "two.mp4")],
        env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert multi.stderr.count("saved ") == 1  # rank 0 logs and saves; rank 1 logs errors only
    one = subprocess.run([sys.executable, "-m", "wan_core.generate", *ARGS, *ckpt, "--save_file", str(tmp_path / "one.mp4")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]
    two, single = (iio.imread(tmp_path / name).astype(np.int16) for name in ("two.mp4", "one.mp4"))
    assert two.shape == single.shape == (1, 1280, 704, 3)  # W*H = 704*1280
    # The tensors agree within 1e-5 (test_torchrun.py); here only through uint8 truncation and H.264
    # on a noise-like tiny video, where one flipped level changes coding decisions (observed: 70 %
    # of values identical, mean 0.48 levels apart); seeds 5 and 6 give frames 11.4 levels apart.
    assert np.abs(two - single).mean() < 1.0

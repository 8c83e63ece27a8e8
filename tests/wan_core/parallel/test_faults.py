"""A lost or hung rank ends every rank with a non-zero status within the configured bound.

Real faults, injected from outside: the ranks are the `generate` command started as torchrun
starts its workers (RANK, WORLD_SIZE, MASTER_ADDR/PORT), but each on its own, as on separate
nodes, so no launcher agent cleans up for them; the test then SIGKILLs one (a dead rank) or
SIGSTOPs it (a hung one) after the first sampling step. Nothing in the product knows about it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[3]
TIMEOUT_S = 8  # WANOPS_COLLECTIVE_TIMEOUT_S for these runs
SLACK_S = 20  # process teardown on a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(ckpt: Path, tmp_path: Path, world: int = 2) -> list[tuple[subprocess.Popen, Path]]:
    """`generate` ranks on a long run (ti2v-5B, 704*1280, 1 frame, many steps), stderr to files."""
    port = str(_free_port())
    ranks = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WANOPS_COLLECTIVE_TIMEOUT_S": str(TIMEOUT_S)}
        log = tmp_path / f"rank{rank}.log"
        cmd = [sys.executable, "-m", "wan_core.generate", "--task", "ti2v-5B", "--size", "704*1280",
               "--frame_num", "1", "--sample_steps", "1000", "--ckpt_dir", str(ckpt), "--prompt", "a fox",
               "--base_seed", "1", "--save_file", str(tmp_path / "out.mp4")]
        ranks.append((subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w")), log))
    return ranks


def _wait_for_sampling(ranks: list[tuple[subprocess.Popen, Path]], limit_s: float = 120) -> None:
    """Until rank 0's progress bar appears (it is created after the first step)."""
    deadline = time.monotonic() + limit_s
    while "sampling" not in ranks[0][1].read_text():
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in ranks):
            for p, _ in ranks:
                p.kill()
            pytest.fail("ranks did not reach sampling:\n" + "\n".join(log.read_text()[-2000:] for _, log in ranks))
        time.sleep(0.2)


def _wait(proc: subprocess.Popen, limit_s: float) -> tuple[int, float]:
    start = time.monotonic()
    try:
        return proc.wait(limit_s), time.monotonic() - start
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"pid {proc.pid} still running {limit_s:.0f} s after the fault: a silent hang")


def test_a_killed_rank_ends_the_others(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    ranks = _start_ranks(tiny_ckpts["ti2v-5B"], tmp_path)
    _wait_for_sampling(ranks)
    (victim, _), (survivor, log) = ranks[1], ranks[0]
    victim.send_signal(signal.SIGKILL)
    code, took = _wait(survivor, TIMEOUT_S + SLACK_S)
    assert victim.wait() == -signal.SIGKILL
    assert code != 0, log.read_text()[-2000:]
    assert not (tmp_path / "out.mp4").exists()
    print(f"survivor exited {code} after {took:.1f} s")


def test_a_hung_rank_ends_the_others_and_itself(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    ranks = _start_ranks(tiny_ckpts["ti2v-5B"], tmp_path)
    _wait_for_sampling(ranks)
    (hung, hung_log), (waiting, log) = ranks[1], ranks[0]
    hung.send_signal(signal.SIGSTOP)
    try:
        code, took = _wait(waiting, TIMEOUT_S + SLACK_S)
        assert code != 0, log.read_text()[-2000:]
    finally:
        hung.send_signal(signal.SIGCONT)
    # Resumed past its deadline: its watchdog (124) or its next collective (peer gone) ends it.
    hung_code, hung_took = _wait(hung, TIMEOUT_S + SLACK_S)
    assert hung_code != 0, hung_log.read_text()[-2000:]
    print(f"waiting rank exited {code} after {took:.1f} s; resumed rank {hung_code} after {hung_took:.1f} s")

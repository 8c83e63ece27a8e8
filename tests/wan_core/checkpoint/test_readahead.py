"""Readahead of the files a run reads before its first step (wan_core.checkpoint.readahead)."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import pytest

from wan_core.checkpoint import readahead
from wanspec.tasks import T5_CHECKPOINT, TASKS


def test_a14b_lists_vae_t5_then_the_high_noise_shards_in_index_order(tiny_ckpts: dict[str, Path]) -> None:
    root = tiny_ckpts["t2v-A14B"]
    files = readahead.first_step_files(root, TASKS["t2v-A14B"])
    assert files[:2] == [root / "Wan2.1_VAE.pth", root / T5_CHECKPOINT]
    index = root / "high_noise_model" / "diffusion_pytorch_model.safetensors.index.json"
    shards = list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
    assert files[2:] == [root / "high_noise_model" / s for s in shards] and shards
    assert not any("low_noise_model" in str(f) for f in files)  # read later, while sampling


def test_5b_root_dit_and_absent_files_left_out(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    root = tiny_ckpts["ti2v-5B"]
    files = readahead.first_step_files(root, TASKS["ti2v-5B"])
    assert files[0] == root / "Wan2.2_VAE.pth" and files[1] == root / T5_CHECKPOINT
    assert all(f.parent == root and f.suffix == ".safetensors" for f in files[2:]) and files[2:]
    assert readahead.first_step_files(tmp_path, TASKS["t2v-A14B"]) == []  # the loaders say what is missing


def test_start_reads_every_file_in_order_in_a_daemon_thread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = [tmp_path / "a", tmp_path / "b"]
    files[0].write_bytes(b"x" * (40 << 20))  # several 16 MiB reads
    files[1].write_bytes(b"y" * 4096)
    with caplog.at_level(logging.INFO, logger=readahead.__name__):
        thread = readahead.start([*files, tmp_path / "gone"])  # an unreadable path is skipped, not raised
        assert thread is not None and thread.daemon
        thread.join(30)
    assert not thread.is_alive()
    assert f"{((40 << 20) + 4096) / 1e9:.1f} GB of 3 files read" in caplog.text
    assert f"by {readahead.DEFAULT_THREADS} threads" in caplog.text
    assert readahead.start([]) is None


@pytest.mark.parametrize("threads", [1, 3, 16])
def test_read_counts_every_byte_of_every_file_whatever_the_thread_count(tmp_path: Path, threads: int) -> None:
    sizes = [(5 << 20) + 7, 0, 3 << 20, 1]
    files = [tmp_path / f"f{i}" for i in range(len(sizes))]
    for f, size in zip(files, sizes, strict=True):
        f.write_bytes(os.urandom(size))
    assert readahead.read(files, threads, chunk=1 << 20) == sum(sizes)


def test_pieces_cover_each_file_once_in_order() -> None:
    sizes, chunk = [10, 0, 4, 3], 4
    got = list(readahead.pieces(sizes, chunk))
    assert got == [(0, 0, 4), (0, 4, 4), (0, 8, 2), (2, 0, 4), (3, 0, 3)]
    for index, size in enumerate(sizes):  # every byte of every file once
        spans = sorted((o, o + n) for i, o, n in got if i == index)
        assert sum(b - a for a, b in spans) == size and all(a == b for (_, a), (b, _) in itertools.pairwise(spans))


def test_thread_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANOPS_READAHEAD_THREADS", "3")
    assert readahead.threads_from_env() == 3
    for bad in ("0", "-2", "many", ""):  # not a positive count: the default, not an error mid-start
        monkeypatch.setenv("WANOPS_READAHEAD_THREADS", bad)
        assert readahead.threads_from_env() == readahead.DEFAULT_THREADS


def test_only_what_half_the_available_memory_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [tmp_path / n for n in "abc"]
    for f, size in zip(files, (100, 200, 50), strict=True):
        f.write_bytes(b"z" * size)
    monkeypatch.setattr(readahead, "available_memory", lambda: 2 * 300)  # room for a and b, not c
    thread = readahead.start(files)
    assert thread is not None
    thread.join(10)
    assert readahead._within(files, 300) == files[:2]
    assert readahead._within(files, 99) == [] and readahead._within(files, None) == files
    monkeypatch.setattr(readahead, "available_memory", lambda: 2 * 99)
    assert readahead.start(files) is None  # not even the first file: nothing is read


def test_available_memory_reads_this_host() -> None:
    available = readahead.available_memory()
    assert available is None or available > 0


def test_readers_ask_for_the_idle_io_class_in_their_own_threads_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if readahead.io_class() < 0:
        pytest.skip("ioprio_get is not available here")
    seen: list[int] = []
    real = readahead.idle_io_priority

    def recording() -> bool:
        took = real()
        seen.append(readahead.io_class())
        return took

    monkeypatch.setattr(readahead, "idle_io_priority", recording)
    (tmp_path / "f").write_bytes(b"w" * 4096)
    caller = readahead.io_class()
    readahead.read([tmp_path / "f"], threads=2)
    assert seen == [readahead.IOPRIO_CLASS_IDLE] * 2  # each reader, in its own thread
    assert readahead.io_class() == caller  # the caller's reads keep their class
    seen.clear()
    readahead.read([tmp_path / "f"], threads=2, idle=False)
    assert seen == []

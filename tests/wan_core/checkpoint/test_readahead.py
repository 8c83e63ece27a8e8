"""Readahead of the files a run reads before its first step (wan_core.checkpoint.readahead)."""

from __future__ import annotations

import json
import logging
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
    assert readahead.start([]) is None


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

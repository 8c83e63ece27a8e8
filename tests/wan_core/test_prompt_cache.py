"""Encoded prompts on disk (wan_core.prompt_cache): a hit is the encoder's own bits and skips umT5.

Tiny official-layout checkpoints on the CPU, loaded by the same code as real ones.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

import imageio
import numpy as np
import pytest
import torch

from wan_core import prompt_cache
from wan_core.checkpoint import readahead
from wan_core.pipelines import load_pipeline
from wan_core.prompt_cache import PromptCache
from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, T5_CHECKPOINT, T5_TOKENIZER, TASKS, Size, get_task


def contexts_and_latent(ckpt: Path, cache: PromptCache | None, prompt: str = "a fox") -> tuple:
    pipe = load_pipeline("ti2v-5B", ckpt, prompt_cache=cache)
    opts = pipe.sampling_options(frame_num=5, sampling_steps=2, seed=3)
    contexts = pipe.encode_prompts(prompt, "", opts.offload_model)
    latent = pipe.run(prompt, 64, 32, opts, decode=False)
    return pipe, contexts, latent


def test_a_hit_is_the_encoders_bits_and_umt5_is_never_loaded(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    ckpt, cache = tiny_ckpts["ti2v-5B"], PromptCache(tmp_path / "prompts")
    _, plain, want = contexts_and_latent(ckpt, None)
    first, written, _ = contexts_and_latent(ckpt, cache)
    assert first._text_encoder is not None and len(list(cache.root.glob("*.float32.cpu.safetensors"))) == 2
    assert cache.has_all(ckpt, ["a fox", DEFAULT_NEGATIVE_PROMPT]) and not cache.has_all(ckpt, ["a cat"])
    with caplog.at_level(logging.INFO):
        second, cached, latent = contexts_and_latent(ckpt, cache)
    assert second._text_encoder is None  # neither loaded nor read
    assert "all from the prompt cache" in caplog.text
    for a, b, c in zip(plain, written, cached):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(latent, want)


def test_a_new_prompt_encodes_only_itself(tiny_ckpts: dict[str, Path], tmp_path: Path) -> None:
    ckpt, cache = tiny_ckpts["ti2v-5B"], PromptCache(tmp_path / "prompts")
    contexts_and_latent(ckpt, cache)
    pipe, contexts, _ = contexts_and_latent(ckpt, cache, prompt="a cat")
    assert pipe._text_encoder is not None and len(list(cache.root.iterdir())) == 3  # "a cat" added
    _, plain, _ = contexts_and_latent(ckpt, None, prompt="a cat")
    assert all(torch.equal(a, b) for a, b in zip(contexts, plain))


def test_other_weights_or_a_bad_entry_are_misses(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpts["ti2v-5B"], ckpt)
    cache = PromptCache(tmp_path / "prompts")
    before = cache.digest(ckpt, "a fox")
    contexts_and_latent(ckpt, cache)
    stat = (ckpt / T5_CHECKPOINT).stat()
    os.utime(ckpt / T5_CHECKPOINT, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # "new" weights, same size
    assert cache.digest(ckpt, "a fox") != before and not cache.has_all(ckpt, ["a fox"])
    entries = sorted(cache.root.glob("*.safetensors"))
    entries[0].write_bytes(b"not safetensors")
    digest, kind = entries[0].name.split(".", 1)[0], entries[0].name.split(".", 1)[1].removesuffix(".safetensors")
    assert cache.load(digest, kind, torch.device("cpu")) is None and "is unreadable" in caplog.text


def test_an_upgrade_of_the_encoding_code_is_a_miss(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries name the code that encoded them: a changed umT5 source, torch, tokenizer or text
    cleaner (an image upgrade on a shared claim) misses instead of returning an older encode."""
    ckpt, cache = tiny_ckpts["ti2v-5B"], PromptCache(tmp_path / "prompts")
    contexts_and_latent(ckpt, cache)
    assert cache.has_all(ckpt, ["a fox", DEFAULT_NEGATIVE_PROMPT])
    source, versions = prompt_cache._code_identity()
    assert versions[0] == importlib.metadata.version("torch") and len(source) == 64
    monkeypatch.setattr(prompt_cache, "_code_identity", lambda: [source, [*versions[:-1], "0.0.1"]])
    assert not cache.has_all(ckpt, ["a fox"])
    monkeypatch.setattr(prompt_cache, "_code_identity", lambda: ["0" * 64, versions])
    assert not cache.has_all(ckpt, ["a fox"])
    pipe, contexts, _ = contexts_and_latent(ckpt, cache)
    assert pipe._text_encoder is not None and len(list(cache.root.glob("*.safetensors"))) == 4


def test_an_unwritable_cache_costs_only_the_encode(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    _, contexts, latent = contexts_and_latent(tiny_ckpts["ti2v-5B"], PromptCache(blocked / "prompts"))
    _, plain, want = contexts_and_latent(tiny_ckpts["ti2v-5B"], None)
    assert torch.equal(latent, want) and "cannot write prompt cache entry" in caplog.text


def test_readahead_leaves_umt5_alone_when_both_prompts_are_cached(tiny_ckpts: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The generate command twice with --prompt_cache: the second reads umT5's file neither
    ahead nor at all, and writes the same video."""
    from wan_core.cli import main

    ckpt, task = tiny_ckpts["ti2v-5B"], get_task("ti2v-5B")
    assert ckpt / T5_CHECKPOINT not in readahead.first_step_files(ckpt, task, t5=False)
    monkeypatch.setitem(TASKS, "ti2v-5B", dataclasses.replace(task, sizes=(*task.sizes, Size(64, 32))))
    read: list[list[Path]] = []
    monkeypatch.setattr(readahead, "start", lambda files: read.append(list(files)))
    argv = ["--task", "ti2v-5B", "--size", "64*32", "--ckpt_dir", str(ckpt), "--frame_num", "5",
            "--sample_steps", "2", "--base_seed", "4", "--prompt", "a fox", "--prompt_cache", str(tmp_path / "prompts")]
    videos = []
    for run in ("first", "cached"):
        assert main([*argv, "--save_file", str(tmp_path / f"{run}.mp4")]) == 0
        with imageio.get_reader(tmp_path / f"{run}.mp4") as reader:
            videos.append(np.stack(list(reader.iter_data())))
    assert [ckpt / T5_CHECKPOINT in files for files in read] == [True, False]
    assert videos[0].shape == (5, 32, 64, 3) and np.array_equal(videos[0], videos[1])


def test_the_least_recently_used_entries_go_beyond_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / T5_TOKENIZER).mkdir(parents=True)
    (ckpt / T5_CHECKPOINT).write_bytes(b"umT5")
    (ckpt / T5_TOKENIZER / "tokenizer.json").write_text("{}")
    monkeypatch.setattr("wan_core.prompt_cache.MAX_ENTRIES", 2)
    cache, cpu = PromptCache(tmp_path / "prompts"), torch.device("cpu")
    digests = {p: cache.digest(ckpt, p) for p in ("a", "b", "c")}
    for age, prompt in enumerate(("a", "b")):
        cache.store(digests[prompt], "float32.cpu", torch.full((2, 4), float(age)))
        os.utime(cache.root / f"{digests[prompt]}.float32.cpu.safetensors", (1000 + age, 1000 + age))
    assert torch.equal(cache.load(digests["a"], "float32.cpu", cpu), torch.zeros(2, 4))  # "a" used: now the newest
    cache.store(digests["c"], "float32.cpu", torch.ones(2, 4))
    assert cache.has_all(ckpt, ["a", "c"]) and not cache.has_all(ckpt, ["b"])

"""The runner's decisions without a cluster: exit codes, the pod's verdict from its ranks, the
progress throttle, image checks, run identity, the rendezvous name wait."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from runner_cases import SPEC

from runner import errors
from runner.inputs import MAX_IMAGE_PIXELS, check_image, read_limited, run_identity
from runner.main import (
    FLASHINFER_CACHE_ENV,
    INDUCTOR_CACHE_ENV,
    PROMPT_CACHE_ENV,
    TRITON_CACHE_ENV,
    cache_generation,
    compile_cache_env,
    prompts_cached,
    resolve_master,
    verdict,
)
from runner.report import Throttle
from wan_core.prompt_cache import PromptCache
from wanops_operator.config import OperatorConfig
from wanops_operator.render import runner_config
from wanspec import contract
from wanspec.spec import PromptExtension
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER
from wanspec.validate import parse


def _config(uid: str = "u-1", attempt: int = 0, **spec_changes) -> contract.RunnerConfig:
    vg = {
        "metadata": {"name": "cats", "namespace": "ns", "uid": uid},
        "spec": {**SPEC, **spec_changes},
    }
    op = OperatorConfig(store_endpoint="http://s3", store_bucket="videos")
    return runner_config(vg, parse(vg["spec"]), attempt=attempt, config=op)


def test_exit_codes_match_the_pod_failure_policy() -> None:
    bad = errors.bad_input(contract.IMAGE_NOT_READABLE, "fix it")
    assert bad.exit_code == contract.EXIT_INVALID_INPUT == 42
    assert bad.termination_message == "ImageNotReadable: fix it"
    assert contract.parse_termination_message(bad.termination_message) == (
        "ImageNotReadable",
        "fix it",
    )
    later = errors.temporary(errors.STORE_UNAVAILABLE, "down")
    assert later.exit_code == errors.EXIT_TEMPORARY != contract.EXIT_INVALID_INPUT


def _outcome(folder: Path, rank: int, err: errors.RunnerError) -> None:
    (folder / f"rank-{rank}.json").write_text(
        json.dumps({"reason": err.reason, "message": err.message, "fatal": err.fatal})
    )


def test_verdict_prefers_bad_input_over_the_failures_it_caused(tmp_path: Path) -> None:
    assert verdict(0, tmp_path) is None
    _outcome(tmp_path, 0, errors.temporary(errors.WORKER_FAILED, "peer gone"))
    _outcome(tmp_path, 1, errors.bad_input(contract.CHECKPOINT_INVALID, "shard missing"))
    got = verdict(1, tmp_path)
    assert got is not None and got.fatal and got.reason == contract.CHECKPOINT_INVALID


def test_verdict_without_an_explanation_is_retriable(tmp_path: Path) -> None:
    got = verdict(1, tmp_path)  # e.g. a rank killed by the OOM killer
    assert got is not None and not got.fatal and got.exit_code == errors.EXIT_TEMPORARY
    assert "torchrun exited 1" in got.message


def test_throttle_lets_through_about_one_event_a_second() -> None:
    now = [0.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    sent = []
    for i in range(30):  # 30 steps of 0.25 s (exact in binary)
        sent.append(throttle.ready(force=i == 29))
        now[0] += 0.25
    assert [i for i, s in enumerate(sent) if s] == [0, 4, 8, 12, 16, 20, 24, 28, 29]


def test_run_identity_is_stable_across_attempts_only() -> None:
    first = run_identity(_config())
    assert run_identity(_config(attempt=3)) == first
    assert run_identity(_config(uid="u-2")) != first
    assert run_identity(_config(seed=8)) != first
    assert run_identity(_config(prompt="a cat")) != first


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB" if size[0] * size[1] < 1e6 else "1", size).save(buf, format="PNG")
    return buf.getvalue()


def test_images_are_checked_for_content_and_size() -> None:
    assert check_image(_png((64, 32)), "s3://b/ok.png").size == (64, 32)
    with pytest.raises(errors.RunnerError, match="not a readable image") as e:
        check_image(b"<html>404</html>", "https://x/cat.jpg")
    assert e.value.fatal and e.value.reason == contract.IMAGE_NOT_READABLE
    with pytest.raises(errors.RunnerError, match="not a readable image"):
        check_image(_png((64, 32))[:60], "s3://b/truncated.png")
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(errors.RunnerError, match="pixels"):
        check_image(_png((side, side)), "s3://b/bomb.png")
    with pytest.raises(errors.RunnerError, match="larger than 1 MiB") as e:
        read_limited(io.BytesIO(b"\0" * ((1 << 20) + 1)), 1 << 20, "https://x/huge.jpg")
    assert e.value.fatal


def test_rank_zero_name_is_awaited_then_a_temporary_failure() -> None:
    assert resolve_master("localhost", 1.0) == "localhost"
    with pytest.raises(errors.RunnerError, match="did not resolve within") as e:
        resolve_master("rank0.wanops-test.invalid", 0.3, interval_s=0.1)
    assert not e.value.fatal and e.value.reason == errors.RENDEZVOUS_UNRESOLVED


def test_progress_names_the_a14b_expert_by_role() -> None:
    """The pipelines call the expert by its checkpoint subfolder; status.progress.expert by role
    (the API's enum): an A14B step must not fail validation (it once failed every A14B run)."""
    from runner.report import StatusReporter
    from wanspec.contract import ResourceRef

    reporter = StatusReporter(ResourceRef(namespace="ns", name="vg", uid="u"), None)
    sent: list[dict] = []
    reporter._patch = sent.append  # type: ignore[method-assign]
    reporter.step(1, 2, "high_noise_model")
    reporter.step(2, 2, "low_noise_model")
    reporter.step(2, 2, None)
    assert [s["progress"].get("expert") for s in sent] == ["high_noise", "low_noise", None]


def test_a_refused_output_report_is_retried_briefly_then_fails_the_attempt() -> None:
    """A just-restarted API server answers 403 until its RBAC cache is filled: the output report
    outlasts that; a refusal that goes on past `refusal_retry_s` fails the attempt (retriable)."""
    from kubernetes.client.exceptions import ApiException

    from runner.report import StatusReporter
    from runner.store import Published
    from wanspec.contract import ResourceRef

    published = Published(uri="s3://b/ns/vg.mp4", sha256="0" * 64, bytes=1)
    reporter = StatusReporter(ResourceRef(namespace="ns", name="vg", uid="u"), None)
    answers = [ApiException(status=403, reason="Forbidden"), None]
    sent: list[dict] = []

    def patch(status: dict) -> None:
        if (answer := answers.pop(0)) is not None:
            raise answer
        sent.append(status)

    reporter._patch = patch  # type: ignore[method-assign]
    reporter.output(published, 4, None, retry_s=60, refusal_retry_s=5)
    assert not answers and sent[0]["output"]["uri"] == published.uri

    tries: list[None] = []

    def refuse(status: dict) -> None:
        tries.append(None)
        raise ApiException(status=403, reason="Forbidden")

    reporter._patch = refuse  # type: ignore[method-assign]
    with pytest.raises(errors.RunnerError, match="could not be written after 2 tries") as e:
        reporter.output(published, 4, None, retry_s=60, refusal_retry_s=1)
    assert not e.value.fatal and e.value.reason == errors.STATUS_UPDATE_FAILED and len(tries) == 2


def test_compile_cache_is_used_only_where_it_is_writable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    cache = root / cache_generation()
    assert compile_cache_env({}) == {}
    every = {INDUCTOR_CACHE_ENV: str(cache), FLASHINFER_CACHE_ENV: str(cache), TRITON_CACHE_ENV: str(cache / "triton"),
             PROMPT_CACHE_ENV: str(cache / "prompts")}
    assert compile_cache_env({contract.COMPILE_CACHE_ENV: str(root)}) == every
    assert cache.is_dir() and not any(cache.iterdir())  # the write probe leaves nothing behind
    # a cache dir set by hand wins
    by_hand = {contract.COMPILE_CACHE_ENV: str(root), INDUCTOR_CACHE_ENV: "/x", TRITON_CACHE_ENV: "/y"}
    assert compile_cache_env(by_hand) == {FLASHINFER_CACHE_ENV: str(cache), PROMPT_CACHE_ENV: str(cache / "prompts")}
    assert compile_cache_env({contract.COMPILE_CACHE_ENV: str(root), **dict.fromkeys(every, "/x")}) == {}
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert compile_cache_env({contract.COMPILE_CACHE_ENV: str(blocked / "cache")}) == {}
    assert "is not writable" in caplog.text and "compiling from scratch" in caplog.text


def test_a_compile_cache_generation_unused_for_two_weeks_is_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade (torch, FlashInfer or our model code) starts a new folder; the old ones go once
    no pod has started with them for GENERATION_KEEP_S, whatever their age on disk; other files
    on the claim are not ours to remove."""
    caplog.set_level(logging.INFO, logger="runner")
    root = tmp_path / "cache"
    mine, stale, recent = root / cache_generation(), root / "gen-torch-2.8.0-old", root / "gen-torch-2.9.0-recent"
    for folder in (mine, stale, recent):
        (folder / "fxgraph").mkdir(parents=True)
    (root / "notes.txt").write_text("the platform team's")
    day = 24 * 3600
    for folder, idle in ((mine, 40 * day), (stale, 15 * day), (recent, 13 * day)):
        os.utime(folder, (time.time() - idle, time.time() - idle))
    compile_cache_env({contract.COMPILE_CACHE_ENV: str(root)})
    assert sorted(p.name for p in root.iterdir()) == sorted([mine.name, recent.name, "notes.txt"])
    assert "removing compile cache generation gen-torch-2.8.0-old, unused for 15 days" in caplog.text
    assert (mine / "fxgraph").is_dir() and time.time() - mine.stat().st_mtime < 60  # marked used


def test_umt5_is_read_ahead_unless_both_prompts_are_cached(tmp_path: Path) -> None:
    """The launcher's question before torchrun starts: a run without prompt extension whose
    prompt and negative prompt are in the cache leaves umT5's file alone, on one GPU or several."""
    ckpt = tmp_path / "ckpt"
    (ckpt / T5_TOKENIZER).mkdir(parents=True)
    (ckpt / T5_CHECKPOINT).write_bytes(b"umT5")
    (ckpt / T5_TOKENIZER / "tokenizer.json").write_text("{}")
    cfg = _config().model_copy(update={"checkpoint_dir": str(ckpt)})
    cache = PromptCache(tmp_path / "prompts")
    env = {PROMPT_CACHE_ENV: str(cache.root)}
    assert not prompts_cached(cfg, env) and not prompts_cached(cfg, {})
    cache.root.mkdir()
    for prompt in (cfg.resolved.spec.prompt, cfg.resolved.negative_prompt):  # an entry of any dtype and GPU
        (cache.root / f"{cache.digest(ckpt, prompt)}.bfloat16.NVIDIA-H100-80GB-HBM3.safetensors").touch()
    assert prompts_cached(cfg, env)
    many = _config(gpus=2).model_copy(update={"checkpoint_dir": str(ckpt)})
    assert prompts_cached(many, env)  # every rank reads the same entries (they agree on a miss)
    extended = cfg.model_copy(update={"resolved": cfg.resolved.model_copy(
        update={"spec": cfg.resolved.spec.model_copy(update={"prompt_extension": PromptExtension()})})})
    assert not prompts_cached(extended, env)  # the extended prompt is not known before the run

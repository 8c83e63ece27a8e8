"""`python -m runner` as a real subprocess against the real API server and S3 store: the MP4 at
the final key, its sha256 in metadata and status, progress to the end, idempotent retries,
resume after an interruption, bad input with the fatal exit code."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch
from runner_cases import SPEC, kill_tree, log_events, poll

from localcluster.s3gate import S3Gate
from runner.encode import probe
from runner.errors import EXIT_TEMPORARY, TERMINATION_PATH_ENV
from runner.store import Store
from wanspec import contract

pytestmark = pytest.mark.cluster


def _fetch(s3, bucket: str, key: str, path) -> bytes:
    s3.fget_object(bucket, key, str(path))
    return path.read_bytes()


@pytest.mark.parametrize("nproc", [1, 2])
def test_runner_publishes_the_video_and_reports_it(
    make_run, s3, bucket, tmp_path, nproc: int
) -> None:
    spec = {**SPEC, "gpus": nproc} if nproc > 1 else SPEC
    run = make_run(spec)
    code, out = run.run(PET_NPROC_PER_NODE=str(nproc))
    assert code == 0, out[-4000:]

    key = run.config.output.key
    data = _fetch(s3, bucket, key, tmp_path / "out.mp4")
    assert probe(tmp_path / "out.mp4") == (5, 1280, 704)
    sha = hashlib.sha256(data).hexdigest()
    meta = {k.lower(): v for k, v in s3.stat_object(bucket, key).metadata.items()}
    assert meta["x-amz-meta-sha256"] == sha
    status = run.status()
    assert status["output"] == {
        "uri": f"s3://{bucket}/{key}",
        "sha256": sha,
        "bytes": len(data),
        "contentType": "video/mp4",
        "logUri": f"s3://{bucket}/{run.config.output.log_key}",
    }
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 4
    assert status["progress"]["percent"] == 100
    steps = [e["step"] for e in log_events(out) if "step" in e and e.get("rank") == 0]
    assert steps == [1, 2, 3, 4]
    # the launcher read the weights of the first step ahead (VAE, umT5, the 5B DiT's shards)
    assert any(e["message"].startswith("readahead: ") and " GB of " in e["message"] for e in log_events(out))
    # the log is next to the video; nothing else is left in the bucket
    names = sorted(o.object_name for o in s3.list_objects(bucket, recursive=True))
    assert names == sorted([key, run.config.output.log_key])
    assert b"already published" not in s3.get_object(bucket, run.config.output.log_key).read()

    # A retried pod finds its finished video: no generation, same object, status re-reported.
    code, out = run.run()
    assert code == 0, out[-4000:]
    assert "already published" in out and "starting" not in out
    assert hashlib.sha256(_fetch(s3, bucket, key, tmp_path / "again.mp4")).hexdigest() == sha


def _killed_after_put(run, cluster, key: str) -> tuple[S3Gate, str]:
    """Run `run` through an `S3Gate` that holds every store request after the PUT of `key`, kill
    its whole process tree once one is held (torchrun's workers live in sessions of their own),
    and put its config back on the direct store. Returns the gate and the run's output."""
    direct = run.config
    with S3Gate(cluster.s3_endpoint, hold_after=S3Gate.completes(key)) as gate:
        gated = direct.model_copy(
            update={"output": direct.output.model_copy(update={"endpoint": gate.endpoint})}
        )
        run.config_path.write_text(gated.model_dump_json())
        proc = run.start()
        try:
            poll(lambda: gate.held or proc.poll() is not None, 240)
            assert gate.held and proc.poll() is None, proc.communicate()[0][-4000:]
        finally:
            kill_tree(proc.pid)
            out, _ = proc.communicate()
    run.config_path.write_text(direct.model_dump_json())
    return gate, out


def test_resume_after_interruption_gives_the_same_video(
    make_run, cluster, s3, bucket, tmp_path
) -> None:
    """Interrupted right after the state of step 2 was saved, the retry resumes at step 3 and the
    video is byte-identical to an uninterrupted run's.

    Where the interruption lands is fixed by the store, not by timing: the interrupted run talks
    to the store through an `S3Gate` that holds every request after the PUT of the step-2 state,
    so that run can save nothing more (the step-4 state, the final latent) however fast it samples
    and however late the kill comes. Then its whole process tree is killed (torchrun's workers
    live in sessions of their own)."""
    whole = make_run()
    code, out = whole.run()
    assert code == 0, out[-4000:]
    want = s3.get_object(bucket, whole.config.output.key).read()

    run = make_run(checkpoint_every=2)
    from runner.inputs import run_identity

    store = Store.from_env(run.config.output, run.env())
    state_key = store.work_prefix(run_identity(run.config)) + "sampling.pt"
    # the next store call after the step-2 save (the step-4 state) is held: steps 3-4 ran
    gate, out = _killed_after_put(run, cluster, state_key)
    saved = S3Gate.completes(state_key)
    assert sum(saved(*r) for r in gate.requests) == 1, gate.requests  # the step-2 state only
    assert [e["saved_step"] for e in log_events(out) if "saved_step" in e] == [2]
    names = {o.object_name for o in s3.list_objects(bucket, recursive=True)}
    assert state_key in names and run.config.output.key not in names

    code, out = run.run()
    assert code == 0, out[-4000:]
    events = log_events(out)
    assert [e["resumed_step"] for e in events if "resumed_step" in e] == [2]
    assert [e["step"] for e in events if "step" in e] == [3, 4]  # steps 1-2 were not redone
    # Same seed, same spec, other uid: the same latents, so the same bytes from the encoder.
    assert s3.get_object(bucket, run.config.output.key).read() == want


def test_a_retry_after_sampling_decodes_the_saved_latent(make_run, cluster, s3, bucket) -> None:
    """Killed after its final latent was saved and before the MP4 was published, the retry
    decodes that latent with the VAE alone (no DiT, no step) and publishes the very bytes an
    uninterrupted run publishes: the decode-only path streams into the encoder as the first does.

    As above, the store fixes the moment: every request after the latent's PUT is held."""
    whole = make_run()
    code, out = whole.run()
    assert code == 0, out[-4000:]
    want = s3.get_object(bucket, whole.config.output.key).read()

    run = make_run()
    from runner.inputs import run_identity
    from runner.worker import LATENTS

    store = Store.from_env(run.config.output, run.env())
    latent_key = store.work_prefix(run_identity(run.config)) + LATENTS
    _killed_after_put(run, cluster, latent_key)  # held: the MP4's upload, the next store call
    names = {o.object_name for o in s3.list_objects(bucket, recursive=True)}
    assert latent_key in names and run.config.output.key not in names

    code, out = run.run()
    assert code == 0, out[-4000:]
    assert "sampling is not repeated" in out
    assert not [e for e in log_events(out) if "step" in e]
    assert s3.get_object(bucket, run.config.output.key).read() == want
    assert latent_key not in {o.object_name for o in s3.list_objects(bucket, recursive=True)}


def _refused(run, tmp_path) -> tuple[str | None, str]:
    """Run to its end; it must exit as invalid input. Returns its termination message's (reason, text)."""
    termination = tmp_path / "termination-log"
    termination.touch()
    code, out = run.run(**{TERMINATION_PATH_ENV: str(termination)})
    assert code == contract.EXIT_INVALID_INPUT, out[-4000:]
    return contract.parse_termination_message(termination.read_text())


def test_bad_checkpoint_is_fatal_with_what_to_fix(make_run, s3, bucket, tmp_path) -> None:
    empty = tmp_path / "empty-claim"
    empty.mkdir()
    run = make_run(ckpt=empty)
    reason, message = _refused(run, tmp_path)
    assert reason == contract.CHECKPOINT_INVALID
    assert str(empty) in message and "put the official ti2v-5B folder" in message
    assert list(s3.list_objects(bucket, recursive=True, prefix=run.config.output.key)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no FP8 GPU is")
def test_fp8_without_an_fp8_gpu_is_fatal_with_the_reason(make_run, s3, bucket, tmp_path) -> None:
    run = make_run({**SPEC, "precision": "fp8"})
    reason, message = _refused(run, tmp_path)
    assert reason == contract.PRECISION_UNSUPPORTED
    assert "needs a GPU with FP8 tensor cores" in message and "use precision 'exact'" in message
    assert list(s3.list_objects(bucket, recursive=True, prefix=run.config.output.key)) == []


def test_unreadable_image_is_fatal(make_run, s3, bucket, tmp_path) -> None:
    s3.put_object(
        bucket, "inputs/not-an-image.jpg", __import__("io").BytesIO(b"<html>nope</html>"), 17
    )
    run = make_run({**SPEC, "inputImage": f"s3://{bucket}/inputs/not-an-image.jpg"})
    reason, message = _refused(run, tmp_path)
    assert reason == contract.IMAGE_NOT_READABLE and "not a readable image" in message


def test_bad_credentials_are_fatal_and_store_down_is_temporary(make_run, tmp_path) -> None:
    run = make_run()
    termination = tmp_path / "termination-log"
    termination.touch()
    code, _ = run.run(**{contract.SECRET_KEY_ENV: "wrong", TERMINATION_PATH_ENV: str(termination)})
    assert code == contract.EXIT_INVALID_INPUT
    assert contract.parse_termination_message(termination.read_text())[0] == contract.SECRET_INVALID

    down = run.config.model_copy(
        update={"output": run.config.output.model_copy(update={"endpoint": "http://127.0.0.1:9"})}
    )  # discard port: nothing listens
    run.config_path.write_text(down.model_dump_json())
    code, _ = run.run(**{TERMINATION_PATH_ENV: str(termination)})
    assert code == EXIT_TEMPORARY
    assert contract.parse_termination_message(termination.read_text())[0] == "StoreUnavailable"


def test_a_second_run_takes_its_prompts_from_the_shared_cache(make_run, s3, bucket, tmp_path) -> None:
    """Two VideoGenerations with the same prompts on one compile-cache folder (the chart's
    runner.compileCache): the second neither reads umT5 ahead nor loads it, and publishes the
    same video."""
    cache = {contract.COMPILE_CACHE_ENV: str(tmp_path / "compile-cache")}
    videos, outs = [], []
    for name in ("first", "second"):
        run = make_run(SPEC)
        code, out = run.run(**cache)
        assert code == 0, out[-4000:]
        videos.append(_fetch(s3, bucket, run.config.output.key, tmp_path / f"{name}.mp4"))
        outs.append(out)
    assert len(list((tmp_path / "compile-cache").glob("gen-*/prompts/*.safetensors"))) == 2
    assert "umT5 on cpu" in outs[0] and "all from the prompt cache" in outs[1]
    read = [[e["message"] for e in log_events(out) if e["message"].startswith("readahead: ")] for out in outs]
    files = [int(re.search(r" of (\d+) files", r[0]).group(1)) for r in read]
    assert files[1] == files[0] - 1  # the same files but umT5's
    assert videos[0] == videos[1]

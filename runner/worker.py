"""One rank of a run, started by torchrun (`runner.main` launches it): config → process group →
pipeline → (rank 0) latents saved, decoded, encoded, published, reported.

Never lose finished work: rank 0 saves the final latent to the store before the VAE decode, so a
retry after a failed decode or upload decodes that latent (in `runner.main`, without loading the
DiT) instead of sampling again; with `checkpointEverySteps` the loop's state is saved during
sampling too and every rank of a retried attempt resumes from the last save, with the same result
as an uninterrupted run (`StoreLoopCheckpoint`, the pipelines' `LoopCheckpoint` hook).

How a rank ends: 0 on success; on a failure it writes `<outcome dir>/rank-<N>.json` (reason,
message, fatal) for the launcher, which turns it into the pod's exit code and termination message.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from runner import errors, logs, report
from runner.encode import encode_mp4
from runner.inputs import load_config, run_identity
from runner.metrics import DEFAULT_PORT, PORT_ENV, Metrics
from runner.store import Published, Store
from wan_core.pipelines.common import LoopState, SamplingOptions, WanPipeline
from wanspec import contract
from wanspec.validate import ResolvedSpec

log = logging.getLogger("runner")

# Set by the launcher for its workers.
IMAGE_ENV = "WANOPS_IMAGE_PATH"  # the checked input image, as PNG
LOG_FILE_ENV = "WANOPS_LOG_FILE"  # JSON log lines of every process of the pod
OUTCOME_DIR_ENV = "WANOPS_OUTCOME_DIR"  # where a failing rank explains itself
WORK_DIR_ENV = "WANOPS_WORK_DIR"

LATENTS = "latents.pt"  # the final latent, before decode
SAMPLING = "sampling.pt"  # the loop's state every checkpointEverySteps


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, device: torch.device | str) -> Any:
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


class StoreLoopCheckpoint:
    """The sampling loop's state in the store every `every` steps (rank 0 writes, all ranks read)."""

    def __init__(
        self, store: Store, run_id: str, every: int, *, writer: bool, device: torch.device
    ) -> None:
        self.store, self.run_id, self.every = store, run_id, every
        self.writer, self.device = writer, device

    def load(self) -> LoopState | None:
        data = self.store.get_work(self.run_id, SAMPLING)
        if data is None:
            return None
        saved = from_bytes(data, self.device)
        log.info(
            "resuming sampling after step %d", saved["step"], extra={"resumed_step": saved["step"]}
        )
        return LoopState(saved["step"], saved["latent"], saved["solver"])

    def save(self, state: LoopState) -> None:
        if not self.writer or self.every <= 0 or state.step % self.every:
            return
        payload = {"step": state.step, "latent": state.latent, "solver": state.solver}
        self.store.put_work(self.run_id, SAMPLING, to_bytes(payload))
        log.info("saved sampling state after step %d", state.step, extra={"saved_step": state.step})


def sample(
    pipe: WanPipeline,
    r: ResolvedSpec,
    opts: SamplingOptions,
    image: Image.Image | None,
    callback: Any,
) -> Tensor:
    """The task's sampling steps with the resolved values; returns the final latent (no decode)."""
    prompt, n_prompt, area = r.spec.prompt, r.negative_prompt, r.width * r.height
    if r.task == "i2v-A14B":
        return pipe.run(
            prompt, image, area, opts, n_prompt=n_prompt, callback=callback, decode=False
        )
    if r.task == "ti2v-5B" and image is not None:
        return pipe.run_image(
            prompt, image, area, opts, n_prompt=n_prompt, callback=callback, decode=False
        )
    return pipe.run(
        prompt, r.width, r.height, opts, n_prompt=n_prompt, callback=callback, decode=False
    )


def finish(
    cfg: contract.RunnerConfig,
    store: Store,
    run_id: str,
    latent: Tensor,
    decode: Any,
    reporter: report.StatusReporter,
    metrics: Metrics,
    work_dir: Path,
) -> Published:
    """Rank 0 after sampling (or a decode-only retry): decode, encode, publish, report, clean up."""
    steps = cfg.resolved.steps
    reporter.stage("Decoding", steps, steps)
    with metrics.phase("decode"), torch.no_grad():
        video = decode(latent)
    reporter.stage("Encoding", steps, steps)
    with metrics.phase("encode"):
        path = encode_mp4(video, work_dir / "video.mp4", cfg.resolved.fps)
    reporter.stage("Uploading", steps, steps)
    with metrics.phase("upload"):
        published = store.publish(path, run_id)
    reporter.output(published, steps, store.uri(cfg.output.log_key))
    store.clear_work(run_id)
    return published


def log_memory_estimate(cfg: contract.RunnerConfig, layout: Any) -> dict[str, Any]:
    """The planner's per-GPU estimate (wanspec.memory, as the operator checked it) next to the
    device's size, so a log shows what was expected before any weight is loaded."""
    from wanspec.memory import estimate_resolved

    estimate = estimate_resolved(cfg.resolved)
    fields = estimate.as_dict()
    if layout.device.type == "cuda":
        total = torch.cuda.get_device_properties(layout.device).total_memory
        fields["deviceGiB"] = round(total / 2**30, 2)
    log.info("memory estimate: %s", estimate.describe(), extra={"memory_estimate": fields})
    return fields


def run(cfg: contract.RunnerConfig, work_dir: Path) -> None:
    from wan_core.checkpoint.errors import CheckpointError
    from wan_core.parallel import (
        LayoutError,
        ParallelLayout,
        StepWatchdog,
        collective_timeout,
        init_distributed,
        shutdown,
    )
    from wan_core.pipelines import load_pipeline

    r = cfg.resolved
    try:
        layout = ParallelLayout.from_env(
            r.task,
            ulysses=r.ulysses,
            cfg_parallel=r.cfg_parallel,
            dit_fsdp=r.dit_fsdp,
            t5_fsdp=r.t5_fsdp,
            t5_cpu=r.t5_cpu,
        )
    except LayoutError as e:
        raise errors.bad_input(errors.CONFIG_INVALID, f"the GPU layout cannot run: {e}") from e
    layout = init_distributed(layout)
    store = Store.from_env(cfg.output, os.environ)
    run_id = run_identity(cfg)
    metrics = Metrics()
    reporter = None
    if layout.is_main:
        log_memory_estimate(cfg, layout)
        metrics.serve(int(os.environ.get(PORT_ENV, DEFAULT_PORT)))
        reporter = report.StatusReporter(cfg.resource, report.api_client())
        reporter.stage("Loading", r.steps)
    image = Image.open(os.environ[IMAGE_ENV]).convert("RGB") if os.environ.get(IMAGE_ENV) else None

    with metrics.phase("load"):
        try:
            pipe = load_pipeline(
                r.task,
                cfg.checkpoint_dir,
                offload_model=r.offload_model,
                convert_model_dtype=r.convert_model_dtype,
                t5_cpu=r.t5_cpu,
                parallel=layout,
            )
        except CheckpointError as e:
            raise errors.bad_input(
                contract.CHECKPOINT_INVALID, f"{e}; fix the files in the checkpoint claim"
            ) from e
    opts = pipe.sampling_options(
        frame_num=r.frames,
        shift=r.shift,
        sample_solver=r.solver,
        sampling_steps=r.steps,
        guide_scale=r.guide_scale,
        seed=cfg.seed,
        offload_model=r.offload_model,
    )
    resume = StoreLoopCheckpoint(
        store, run_id, cfg.checkpoint_every_steps, writer=layout.is_main, device=pipe.device
    )
    opts = dataclasses.replace(opts, checkpoint=resume)

    def on_step(step: int, total: int, expert: str | None) -> None:
        metrics.step()
        log.info("step %d/%d", step, total, extra={"step": step, "total": total, "expert": expert})
        if reporter is not None:
            reporter.step(step, total, expert)

    watchdog = (
        StepWatchdog(collective_timeout(), layout.rank) if layout.distributed else nullcontext()
    )
    with watchdog as dog:
        metrics.start_steps()
        with metrics.phase("sample"):
            latent = sample(
                pipe, r, opts, image, dog.chain(on_step) if dog is not None else on_step
            )
        if reporter is not None:  # rank 0; the others wait for it at the final barrier
            store.put_work(run_id, LATENTS, to_bytes(latent))
            finish(cfg, store, run_id, latent, pipe.decode, reporter, metrics, work_dir)
        if dog is not None:
            dog.beat("finished")
    shutdown(layout)


def record_outcome(err: errors.RunnerError) -> None:
    """Tell the launcher why this rank failed (it owns the pod's exit code and message)."""
    folder, rank = os.environ.get(OUTCOME_DIR_ENV), os.environ.get("RANK", "0")
    if folder:
        outcome = {"reason": err.reason, "message": err.message, "fatal": err.fatal}
        Path(folder, f"rank-{rank}.json").write_text(json.dumps(outcome))


def main() -> int:
    logs.setup(int(os.environ.get("RANK", "0")), os.environ.get(LOG_FILE_ENV))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    try:
        run(load_config(), Path(os.environ.get(WORK_DIR_ENV, ".")))
        return 0
    except errors.RunnerError as e:
        log.error("%s", e, extra={"reason": e.reason, "fatal": e.fatal})
        record_outcome(e)
        return e.exit_code
    except Exception as e:  # a bug or a crash: retried, with the cause in the termination message
        log.exception("worker failed")
        record_outcome(errors.temporary(errors.WORKER_FAILED, f"{type(e).__name__}: {e}"))
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""One rank of a run, started by torchrun (`runner.main` launches it): config → process group →
(prompt extension) → pipeline → (rank 0) latents saved, decoded, encoded, published, reported.

Prompt extension (spec.promptExtension, `wan_core.prompt_extend`): rank 0 extends the prompt and
broadcasts it. The outcome goes to the log as one structured line with a `prompt_extension`
record (status `extended` or `fallback`, method, model, original and used prompt, the failure
message), at WARNING for a fallback; the status has no field for it. The prompt used is saved
with the run's work objects, so a retried attempt (which may resume the sampling) encodes the
same prompt instead of asking the LLM again.

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, nullcontext
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
from wan_core.fast_exit import fast_exit
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
PROMPT = "prompt.json"  # the prompt extension's outcome (PromptOutput), reused by retries


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
    prompt: str | None = None,
) -> Tensor:
    """The task's sampling steps with the resolved values; returns the final latent (no decode).
    `prompt`: the one to encode (the extended prompt), default spec.prompt."""
    prompt = r.spec.prompt if prompt is None else prompt
    n_prompt, area = r.negative_prompt, r.width * r.height
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


def extension_model(name: str | None) -> str | None:
    """spec.promptExtension.model: a path relative to the checkpoint volume if it names a folder
    there, else as given (an absolute path, an alias, a Hugging Face id)."""
    if name is None or Path(name).is_absolute():
        return name
    inside = Path(contract.CHECKPOINT_DIR, name)
    return str(inside) if inside.exists() else name


def extended_prompt(
    cfg: contract.RunnerConfig,
    layout: Any,
    image: Image.Image | None,
    store: Store,
    run_id: str,
) -> str:
    """The prompt this run encodes: spec.prompt, or its extension (rank 0 asks, every rank gets
    the answer); a failed extension falls back to spec.prompt and is logged as a warning."""
    from wan_core.prompt_extend import PromptExtensionError, PromptOutput, extend_prompt

    spec = cfg.resolved.spec
    ext = spec.prompt_extension
    if ext is None:
        return spec.prompt
    saved = store.get_work(run_id, PROMPT)
    if saved is not None:  # a retried attempt: the prompt the earlier one used (and maybe sampled)
        out = PromptOutput.from_dict(json.loads(saved))
        log.info(
            "reusing the earlier attempt's prompt extension",
            extra={"prompt_extension": out.summary()},
        )
        return out.prompt
    options: dict[str, Any] = {}
    if ext.method == "dashscope":
        options["api_key"] = os.environ.get(contract.DASHSCOPE_KEY_ENV)
        options["base_url"] = ext.api_url  # None: $DASH_API_URL, else the default endpoint
    try:
        out = extend_prompt(
            spec.prompt,
            method=ext.method,
            model=extension_model(ext.model),
            task=cfg.resolved.task,
            tar_lang=ext.target_language,
            image=image,
            seed=cfg.seed,
            device=layout.device,
            layout=layout,
            **options,
        )
    except PromptExtensionError as e:
        reason = (
            contract.SECRET_INVALID
            if ext.method == "dashscope"
            else errors.PROMPT_EXTENSION_MODEL_INVALID
        )
        fix = (
            "fix the key's Secret"
            if ext.method == "dashscope"
            else "fix spec.promptExtension.model"
        )
        raise errors.bad_input(reason, f"{e}; {fix}") from e
    if layout.is_main:
        out.report(log)
        store.put_work(run_id, PROMPT, json.dumps(out.to_dict()).encode())
    return out.prompt


def finish(
    cfg: contract.RunnerConfig,
    store: Store,
    run_id: str,
    latent: Tensor,
    decode_stream: Callable[[Tensor], Iterable[Tensor]],
    reporter: report.StatusReporter,
    metrics: Metrics,
    work_dir: Path,
) -> Published:
    """Rank 0 after sampling (or a decode-only retry): decode and encode, publish, report, clean up.

    Decode and encode are one stream (x264 encodes each latent frame's video frames while the VAE
    decodes the next), so the Decoding stage and the "decode" phase last until the last frame is
    decoded, and Encoding / "encode" for what x264 still holds, the file's close and its check.
    """
    steps = cfg.resolved.steps
    reporter.stage("Decoding", steps, steps)
    with ExitStack() as encoding:

        def pieces() -> Iterator[Tensor]:
            with metrics.phase("decode"):
                yield from decode_stream(latent)
            reporter.stage("Encoding", steps, steps)
            encoding.enter_context(metrics.phase("encode"))

        path = encode_mp4(pieces(), work_dir / "video.mp4", cfg.resolved.fps)
    reporter.stage("Uploading", steps, steps)
    with metrics.phase("upload"):
        published = store.publish(path, run_id)
    reporter.output(published, steps, store.uri(cfg.output.log_key))
    store.discard_work(run_id)
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
    from wan_core.cuda_start import start_cuda
    from wan_core.ops.quant import check_quantization
    from wan_core.parallel import (
        LayoutError,
        ParallelLayout,
        StepWatchdog,
        collective_timeout,
        init_distributed,
        shutdown,
    )
    from wan_core.pipelines import load_pipeline
    from wan_core.prompt_cache import PromptCache

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
    start_cuda(layout.device)  # overlaps the reporter's and the store's setup
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
    with metrics.phase("prompt"):
        prompt = extended_prompt(cfg, layout, image, store, run_id)

    try:
        check_quantization(r.precision, layout.device, r.dit_fsdp)
    except ValueError as e:
        raise errors.bad_input(contract.PRECISION_UNSUPPORTED, f"spec.precision: {e}") from e
    with metrics.phase("load"):
        try:
            pipe = load_pipeline(
                r.task,
                cfg.checkpoint_dir,
                offload_model=r.offload_model,
                convert_model_dtype=r.convert_model_dtype,
                t5_cpu=r.t5_cpu,
                parallel=layout,
                precision=r.precision,
                prompt_cache=PromptCache.from_env(),
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
        StepWatchdog(collective_timeout(), layout.rank, on_timeout=stalled)
        if layout.distributed
        else nullcontext()
    )
    with watchdog as dog:
        metrics.start_steps()
        with metrics.phase("sample"):
            latent = sample(
                pipe, r, opts, image, dog.chain(on_step) if dog is not None else on_step, prompt
            )
        if reporter is not None:  # rank 0; the others wait for it at the final barrier
            store.put_work(run_id, LATENTS, to_bytes(latent))
            finish(cfg, store, run_id, latent, pipe.decode_stream, reporter, metrics, work_dir)
        if dog is not None:
            dog.beat("finished")
    shutdown(layout)


def stalled(why: str) -> None:
    """The step watchdog's words as this rank's outcome; it ends the process right after, so the
    pod's failure says a rank stalled instead of "torchrun exited 1"."""
    record_outcome(
        errors.temporary(
            errors.NO_PROGRESS,
            f"{why}; a rank is stuck (a deadlock, a hung kernel, a frozen or lost peer) or waits "
            "for one that is",
        )
    )


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
    fast_exit(main())  # the result is published: skip the teardown of the weights (wan_core.fast_exit)

"""The runner pod's entrypoint (`python -m runner`): checks, then torchrun, then the pod's verdict.

In every pod of a VideoGeneration's Job (contract in `wanspec.contract`):
1. read `/etc/wanops/config.json`; check the store credentials and bucket, the checkpoint folder
   (headers only), the DashScope key when spec.promptExtension uses it, and fetch the input
   image — bad input fails here, in seconds, with the fatal
   exit code, before any rendezvous or model load;
2. if this run's video is already at the final key (a retried pod), report it and stop; if the
   final latent was saved (the last attempt failed in decode or upload), pod 0 decodes it with the
   VAE alone and publishes, without sampling again;
3. resolve rank 0's DNS name, retrying for a bounded time (k8s-notes §1.4 #1: a headless
   Service's record can appear after the pods start), then run
   `torchrun --nnodes N --node_rank R --nproc_per_node G --master_addr A -m runner.worker`;
4. turn the workers' outcome into the exit code the Job's pod failure policy reads
   (`EXIT_INVALID_INPUT` for bad input, anything else is retried) and a termination message
   `<Reason>: <what to fix>`; pod 0 uploads the run's log next to the video, success or not,
   except for bad input, which leaves nothing in the store (the reason is in the resource's status).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from runner import errors, logs
from runner.inputs import fetch_image, load_config, run_identity
from runner.store import Store
from wan_core.checkpoint import readahead
from wan_core.kept import package_versions, source_digest
from wan_core.prompt_cache import ENV_VAR as PROMPT_CACHE_ENV
from wan_core.prompt_cache import PromptCache
from wanspec import contract
from wanspec.tasks import TASKS

log = logging.getLogger("runner")

DNS_TIMEOUT_ENV = "WANOPS_RENDEZVOUS_DNS_TIMEOUT_S"
DEFAULT_DNS_TIMEOUT_S = 300.0  # a busy API server can take minutes to publish a new pod's record
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # where torch.compile keeps compiled kernels and graphs
FLASHINFER_CACHE_ENV = "FLASHINFER_WORKSPACE_BASE"  # where FlashInfer keeps kernels it built (images ship them prebuilt)
TRITON_CACHE_ENV = "TRITON_CACHE_DIR"  # our own Triton kernels' binaries (the VAE's fused norm); Inductor's are in its cache
# Folders of the shared compile cache for the caches that are not torch.compile's own.
SUBDIRS = {TRITON_CACHE_ENV: "triton", PROMPT_CACHE_ENV: "prompts"}
# The shared compile cache holds one folder per generation of what its entries depend on (below);
# a generation no pod has started with for this long is removed, so upgrades do not fill the claim.
GENERATION_PREFIX = "gen-"
GENERATION_KEEP_S = 14 * 24 * 3600
_GENERATION_PACKAGES = ("torch", "flashinfer-python")  # Inductor's and Triton's entries; FlashInfer's kernels


def cache_generation() -> str:
    """This image's folder name in the shared compile cache: the versions of torch and FlashInfer
    and a digest of our model and kernel code (what compiled entries depend on), so an upgrade
    starts a fresh folder instead of adding to one it never reads again. Torch-free."""
    torch_version, flashinfer_version = (v or "none" for v in package_versions(*_GENERATION_PACKAGES))
    return f"{GENERATION_PREFIX}torch-{torch_version}-flashinfer-{flashinfer_version}-{source_digest('models', 'ops')[:12]}"


def prune_generations(root: Path, keep: str) -> None:
    """Remove the compile cache's generations other than `keep` that no pod has started with for
    GENERATION_KEEP_S (best effort: pods prune concurrently, and a failure only leaves files)."""
    now = time.time()
    for folder in root.glob(f"{GENERATION_PREFIX}*"):
        try:
            idle = now - folder.stat().st_mtime
        except OSError:
            continue
        if folder.name != keep and folder.is_dir() and idle > GENERATION_KEEP_S:
            log.info("removing compile cache generation %s, unused for %.0f days", folder.name, idle / 86400)
            shutil.rmtree(folder, ignore_errors=True)


def resolve_master(addr: str, timeout_s: float, interval_s: float = 1.0) -> str:
    """Wait until rank 0's name resolves; torch's TCPStore treats a failed lookup as fatal."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.getaddrinfo(addr, None, type=socket.SOCK_STREAM)
            return addr
        except socket.gaierror as e:
            if time.monotonic() >= deadline:
                raise errors.temporary(
                    errors.RENDEZVOUS_UNRESOLVED,
                    f"rank 0's address {addr} did not resolve within {timeout_s:.0f} s ({e}); check "
                    "the headless Service publishes not-ready addresses and cluster DNS works",
                ) from e
            time.sleep(interval_s)


def torchrun_command(env: Mapping[str, str], cfg: contract.RunnerConfig, master: str) -> list[str]:
    """torchrun for this pod: PET_* from the operator, else one pod of the config's width."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={env.get('PET_NNODES', cfg.resolved.pods)}",
        f"--node_rank={env.get('PET_NODE_RANK', 0)}",
        f"--nproc_per_node={env.get('PET_NPROC_PER_NODE', cfg.resolved.gpus_per_pod)}",
        f"--master_addr={master}",
        f"--master_port={env.get('PET_MASTER_PORT', contract.MASTER_PORT)}",
        "-m", "runner.worker",
    ]  # fmt: skip


def run_torchrun(cmd: list[str], env: dict[str, str]) -> int:
    """Run torchrun; a SIGTERM to the pod (deletion, preemption) is passed on so ranks stop."""
    proc = subprocess.Popen(cmd, env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def verdict(returncode: int, outcome_dir: Path) -> errors.RunnerError | None:
    """The pod's failure from the ranks' outcome files: bad input wins, then the first failure."""
    outcomes = [json.loads(p.read_text()) for p in sorted(outcome_dir.glob("rank-*.json"))]
    if outcomes:
        first = min(outcomes, key=lambda o: not o["fatal"])
        return errors.RunnerError(first["reason"], first["message"], fatal=first["fatal"])
    if returncode == 0:
        return None
    return errors.temporary(
        errors.WORKER_FAILED,
        f"torchrun exited {returncode} without a rank saying why (killed, out of memory, a rank "
        "stuck past the collective timeout); see the pod log",
    )


def decode_saved(
    cfg: contract.RunnerConfig, store: Store, run_id: str, latent_bytes: bytes, work_dir: Path
) -> None:
    """A retry after a failed decode or upload: decode the saved latent with the VAE alone."""
    import torch

    from runner import report
    from runner.metrics import Metrics
    from runner.worker import finish, from_bytes
    from wan_core.checkpoint.folder import inspect_folder
    from wan_core.pipelines.common import load_task_vae
    from wanspec.tasks import get_task

    task = get_task(cfg.resolved.task)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    folder = inspect_folder(cfg.checkpoint_dir, task.name)
    # the pipelines' default precision (bf16 on CUDA), so the retried decode equals the first one's
    vae = load_task_vae(task, folder.vae, device, torch.bfloat16 if cuda else torch.float32)
    latent = from_bytes(latent_bytes, device)
    log.info("decoding the saved final latent of run %s (sampling is not repeated)", run_id)
    reporter = report.StatusReporter(cfg.resource, report.api_client())
    finish(
        cfg,
        store,
        run_id,
        latent,
        lambda z: (piece[0] for piece in vae.decode_pieces(z[None])),
        reporter,
        Metrics(),
        work_dir,
    )


def launch(env: dict[str, str], work_dir: Path, log_file: Path) -> None:
    """Steps 1–4 of the module docstring; raises RunnerError on any failure of this pod."""
    cfg = load_config(env)
    node_rank = int(env.get("PET_NODE_RANK", "0"))
    run_id = run_identity(cfg)
    log.info(
        "run %s of %s/%s, attempt %d, node rank %d",
        run_id,
        cfg.resource.namespace,
        cfg.resource.name,
        cfg.attempt,
        node_rank,
        extra={"run": run_id, "attempt": cfg.attempt},
    )
    ext = cfg.resolved.spec.prompt_extension
    if ext is not None and ext.method == "dashscope" and not env.get(contract.DASHSCOPE_KEY_ENV):
        ref = ext.api_key_secret_ref
        where = f"key {ref.key} of Secret {ref.name}" if ref is not None else "spec.promptExtension"
        raise errors.bad_input(
            contract.SECRET_INVALID,
            f"{contract.DASHSCOPE_KEY_ENV} is empty; put the DashScope API key in the {where}",
        )
    store = Store.from_env(cfg.output, env)
    store.check()

    done = store.finished(run_id)
    if done is not None:
        log.info("already published at %s (sha256 %s); nothing to generate", done.uri, done.sha256)
        if node_rank == 0:
            from runner import report

            reporter = report.StatusReporter(cfg.resource, report.api_client())
            reporter.output(done, cfg.resolved.steps, store.uri(cfg.output.log_key))
            store.discard_work(run_id)  # what the publishing attempt could not remove
        return

    from wan_core.checkpoint.errors import CheckpointError
    from wan_core.checkpoint.folder import inspect_folder

    try:
        inspect_folder(cfg.checkpoint_dir, cfg.resolved.task)
    except CheckpointError as e:
        raise errors.bad_input(
            contract.CHECKPOINT_INVALID,
            f"{e}; put the official {cfg.resolved.task} folder at spec.checkpoint.path in the claim",
        ) from e

    image = None
    if cfg.resolved.spec.input_image is not None:
        image = fetch_image(cfg.resolved.spec.input_image, store, work_dir / "input.png")

    # Not before: runner.worker imports the pipelines (transformers and all), seconds of CPU that
    # input refused above should not wait for.
    from runner.worker import (
        IMAGE_ENV,
        LATENTS,
        LOG_FILE_ENV,
        OUTCOME_DIR_ENV,
        WORK_DIR_ENV,
    )

    latent = store.get_work(run_id, LATENTS)
    if latent is not None:
        if node_rank == 0:
            decode_saved(cfg, store, run_id, latent, work_dir)
        return

    worker_env = {**env, LOG_FILE_ENV: str(log_file), WORK_DIR_ENV: str(work_dir), **compile_cache_env(env)}
    # The weights before the first step stream into this node's page cache while torchrun starts
    # the workers and they import torch (wan_core.checkpoint.readahead); umT5's file only if a
    # prompt is not in the prompt cache.
    t5 = not prompts_cached(cfg, worker_env)
    readahead.start(readahead.first_step_files(cfg.checkpoint_dir, TASKS[cfg.resolved.task], t5=t5))
    if image is not None:
        worker_env[IMAGE_ENV] = str(image)
    master = resolve_master(
        env.get("PET_MASTER_ADDR", "127.0.0.1"),
        float(env.get(DNS_TIMEOUT_ENV, DEFAULT_DNS_TIMEOUT_S)),
    )
    outcome_dir = work_dir / "outcome"
    outcome_dir.mkdir()
    worker_env[OUTCOME_DIR_ENV] = str(outcome_dir)
    cmd = torchrun_command(env, cfg, master)
    log.info("starting %s", " ".join(cmd))
    failure = verdict(run_torchrun(cmd, worker_env), outcome_dir)
    if failure is not None:
        raise failure


def compile_cache_env(env: Mapping[str, str]) -> dict[str, str]:
    """Inductor's, FlashInfer's and Triton's cache dirs and the prompt cache's in this image's
    generation of the installation's shared compile cache (`cache_generation`), when there is one
    and this pod can write it; otherwise nothing (the run then compiles and encodes from scratch,
    with a warning). A variable already set by hand is left alone. Marks the generation used and
    prunes the generations unused for GENERATION_KEEP_S."""
    where = env.get(contract.COMPILE_CACHE_ENV)
    names = (INDUCTOR_CACHE_ENV, FLASHINFER_CACHE_ENV, TRITON_CACHE_ENV, PROMPT_CACHE_ENV)
    unset = [name for name in names if not env.get(name)]
    if not where or not unset:
        return {}
    generation = Path(where) / cache_generation()
    try:
        generation.mkdir(parents=True, exist_ok=True)
        os.utime(generation)  # used now: kept by the pruning
        with tempfile.NamedTemporaryFile(dir=generation):
            pass
    except OSError as e:
        log.warning("compile cache %s is not writable by uid %d (%s): compiling from scratch; "
                    "make the claim of chart value runner.compileCache writable", where, os.getuid(), e)
        return {}
    prune_generations(Path(where), keep=generation.name)
    return {name: str(generation / SUBDIRS[name]) if name in SUBDIRS else str(generation) for name in unset}


def prompts_cached(cfg: contract.RunnerConfig, env: Mapping[str, str]) -> bool:
    """Whether the run will find both prompts in the prompt cache (no prompt extension, whose
    output is not known yet): then umT5 is neither read ahead nor loaded, on any node."""
    r = cfg.resolved
    where = env.get(PROMPT_CACHE_ENV)
    if not where or r.spec.prompt_extension is not None:
        return False
    return PromptCache(where).has_all(cfg.checkpoint_dir, [r.spec.prompt, r.negative_prompt])


def upload_log(env: Mapping[str, str], log_file: Path) -> None:
    """Pod 0's log next to the video, whatever happened; a store that is down only loses the log."""
    try:
        Store.from_env(load_config(env).output, env, attempts=2).upload_log(log_file)
    except (errors.RunnerError, OSError) as e:
        log.warning("log not uploaded: %s", e)


def main() -> int:
    env = dict(os.environ)
    work_dir = Path(tempfile.mkdtemp(prefix="wanops-run-"))
    log_file = work_dir / "runner.log"
    logs.setup(None, log_file)
    try:
        launch(env, work_dir, log_file)
        code = 0
    except errors.RunnerError as e:
        log.error("%s", e, extra={"reason": e.reason, "fatal": e.fatal, "exit_code": e.exit_code})
        errors.write_termination_message(e.termination_message)
        code = e.exit_code
    except Exception as e:  # a bug: retried, and the termination message says what crashed
        log.exception("runner failed")
        errors.write_termination_message(
            contract.termination_message(errors.WORKER_FAILED, f"{type(e).__name__}: {e}")
        )
        code = 1
    if int(env.get("PET_NODE_RANK", "0")) == 0 and code != contract.EXIT_INVALID_INPUT:
        upload_log(env, log_file)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The contract between the operator and the runner pod: config file, environment, exit codes.

The operator (`wanops_operator.render`) writes it and the runner (`runner/`) reads it; both import
this torch-free module and nothing of each other, so the two sides cannot drift apart.

In every runner pod:
- `/etc/wanops/config.json` (path also in `$WANOPS_CONFIG`) holds a `RunnerConfig`: the resolved
  spec, the output object, the attempt, the seed and the resource to report to.
- torchrun reads `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK` (the Job completion index),
  `PET_MASTER_ADDR` (`<job>-0.<service>`, resolvable before the pod is Ready because the headless
  Service publishes not-ready addresses; the runner still retries the lookup) and `PET_MASTER_PORT`.
- Object-store credentials arrive as `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, the DashScope
  key (prompt extension) as `DASH_API_KEY`; the checkpoint claim is mounted read-only at
  `/checkpoints`.
- Rank 0 patches `status.progress` and `status.output` of `RunnerConfig.resource` through the
  status subresource with the pod's ServiceAccount; the operator never writes those two fields.
- Exit code `EXIT_INVALID_INPUT` means "bad input, retrying cannot help": the Job's pod failure
  policy fails the whole run at once. Any other non-zero code is an infrastructure failure and the
  operator starts a fresh attempt, up to `spec.retryLimit`.
- On failure the runner writes one line `<Reason>: <what happened and what to fix>` to
  `/dev/termination-log` (CamelCase reason such as `ImageNotReadable`); the operator copies reason
  and message into the resource's `Failed` condition and `status.failure`. Without that file the
  tail of the log is used (`FallbackToLogsOnError`).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from wanspec.validate import ResolvedSpec

CONFIG_DIR = "/etc/wanops"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
CONFIG_ENV = "WANOPS_CONFIG"
CHECKPOINT_DIR = "/checkpoints"
# Where an installation's shared compile cache is mounted (chart runner.compileCache), and the
# variable that tells the runner so: Inductor's compiled blocks outlive the pod, and a later run of
# the same image on the same GPU kind starts its first step without recompiling (5B: 23 s → 5 s).
COMPILE_CACHE_DIR = "/var/cache/wanops/compile"
COMPILE_CACHE_ENV = "WANOPS_COMPILE_CACHE"
RUNNER_CONTAINER = "runner"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the Kubernetes default, read on failure
MASTER_PORT = 29500  # torchrun's default rendezvous port

ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
STORE_SECRET_KEYS = (ACCESS_KEY_ENV, SECRET_KEY_ENV)  # keys the credentials Secret must have
DASHSCOPE_KEY_ENV = "DASH_API_KEY"

# Clear of the shell's 126/127/128+signal, Python's 1 (uncaught) and 2 (usage) and torchrun's 1.
EXIT_INVALID_INPUT = 42

# Reasons the runner puts in its termination message (others are allowed; these are documented).
IMAGE_NOT_READABLE = "ImageNotReadable"  # spec.inputImage cannot be fetched or decoded
CHECKPOINT_INVALID = "CheckpointInvalid"  # files missing or of the wrong task in the claim
SECRET_INVALID = "SecretInvalid"  # a credential the store or DashScope refused
PRECISION_UNSUPPORTED = "PrecisionUnsupported"  # spec.precision needs a GPU or package the pod lacks

_MESSAGE = re.compile(r"^([A-Z][A-Za-z0-9]*): (.+)$", re.DOTALL)


def termination_message(reason: str, message: str) -> str:
    """The line the runner writes to /dev/termination-log before exiting non-zero."""
    return f"{reason}: {message}"


def parse_termination_message(text: str) -> tuple[str | None, str]:
    """(reason, message) of a termination message; reason None when it is free text (a log tail)."""
    text = text.strip()
    match = _MESSAGE.match(text)
    return (match.group(1), match.group(2).strip()) if match else (None, text)


class ContractModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceRef(ContractModel):
    """The VideoGeneration whose status the runner reports to."""

    namespace: str
    name: str
    uid: str


class OutputObject(ContractModel):
    """Where rank 0 uploads: the MP4 at `key`, its log at `log_key`, in `bucket` at `endpoint`."""

    endpoint: str
    region: str
    bucket: str
    key: str
    log_key: str


class RunnerConfig(ContractModel):
    """The content of `config.json`. The seed is fixed by the operator (derived from the resource
    uid when spec.seed is -1), so every retried attempt generates the same video."""

    version: int = Field(1, description="Bumped on incompatible changes of this file.")
    resource: ResourceRef
    job_name: str
    attempt: int
    seed: int
    checkpoint_dir: str = Field(description="The task's folder inside the mounted claim.")
    output: OutputObject
    resolved: ResolvedSpec
    checkpoint_every_steps: int = Field(
        0,
        ge=0,
        description="Save the latent and solver state to the store every this many denoising "
        "steps, so a retried or preempted attempt resumes from the last save; 0: only the final "
        "latent (before the VAE decode) is saved.",
    )

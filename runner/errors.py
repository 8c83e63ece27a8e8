"""Failures the runner can name, and how each ends the pod (see `wanspec.contract`).

Every failure we understand is a `RunnerError` with a CamelCase reason and a message that says
what to fix. `fatal` ones (bad input: the image, the checkpoint folder, a credential) exit with
`EXIT_INVALID_INPUT`, which the Job's pod failure policy turns into an immediate `Failed`; the rest
are infrastructure trouble (store or API server unreachable, rendezvous name never resolved) and
exit with `EXIT_TEMPORARY`, so the operator starts a fresh attempt. Anything else is a bug or a
crash and exits 1, which is retried too.
"""

from __future__ import annotations

import os
from pathlib import Path

from wanspec import contract

# sysexits' EX_TEMPFAIL: "try again later". Any non-zero code but EXIT_INVALID_INPUT is retried;
# a named one tells a reader of `kubectl get pods` it was a failure we recognised.
EXIT_TEMPORARY = 75

CONFIG_INVALID = "ConfigInvalid"  # /etc/wanops/config.json missing or not a RunnerConfig
OUTPUT_BUCKET_NOT_FOUND = "OutputBucketNotFound"
STORE_UNAVAILABLE = "StoreUnavailable"
STATUS_UPDATE_FAILED = "StatusUpdateFailed"
RENDEZVOUS_UNRESOLVED = "RendezvousUnresolved"
IMAGE_UNAVAILABLE = "ImageUnavailable"  # the image host answered 5xx or timed out: try later
WORKER_FAILED = "WorkerFailed"
NO_PROGRESS = "NoProgress"  # the step watchdog: no denoising step within the collective timeout
PROMPT_EXTENSION_MODEL_INVALID = (
    "PromptExtensionModelInvalid"  # local_qwen: the model does not load
)


class RunnerError(Exception):
    """A failure with its reason, a message saying what to fix, and whether a retry can help."""

    def __init__(self, reason: str, message: str, *, fatal: bool) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.fatal = fatal

    @property
    def exit_code(self) -> int:
        return contract.EXIT_INVALID_INPUT if self.fatal else EXIT_TEMPORARY

    @property
    def termination_message(self) -> str:
        return contract.termination_message(self.reason, self.message)


def bad_input(reason: str, message: str) -> RunnerError:
    """Input the user must fix; retrying the same spec cannot succeed."""
    return RunnerError(reason, message, fatal=True)


def temporary(reason: str, message: str) -> RunnerError:
    """Infrastructure trouble; a fresh attempt may succeed."""
    return RunnerError(reason, message, fatal=False)


TERMINATION_PATH_ENV = "WANOPS_TERMINATION_MESSAGE_PATH"  # tests and wrappers; pods use the default


def write_termination_message(text: str) -> None:
    """Write the pod's termination message, if the runtime made the file (it does in a pod;
    outside one nothing is littered into /dev)."""
    path = Path(os.environ.get(TERMINATION_PATH_ENV, contract.TERMINATION_MESSAGE_PATH))
    if path.exists():
        path.write_text(text[:4096])  # the kubelet keeps at most 4096 bytes

"""Condition reasons the operator writes, each with its message template.

A reason is CamelCase and stable (tools match on it); the message says what happened and, for a
failure, what to fix. Reasons the runner reports from inside the pod (ImageNotReadable, ...) come
from `wanspec.contract` through the termination message and are passed through unchanged.
"""

from __future__ import annotations

# ---- in progress
STARTING = "Starting"
STARTING_MESSAGE = "Job {job} created; waiting for its {pods} pod(s) to start"
QUEUED = "Queued"
QUEUED_MESSAGE = "Job {job} waits for admission by queue {queue}"
SUSPENDED = "Suspended"
SUSPENDED_MESSAGE = "spec.suspend is true: Job {job} is suspended; set it to false to run"
RUNNING = "Running"
RUNNING_MESSAGE = "{running} of {pods} pod(s) of Job {job} running"
RETRYING = "Retrying"
RETRYING_MESSAGE = "attempt {attempt} of {attempts} (Job {job}) after: {previous}"

# ---- done
SUCCEEDED = "Succeeded"
SUCCEEDED_MESSAGE = "Job {job} completed"

# ---- refused before anything runs (pre-flight): fixing the named object lets a new resource run
INVALID_SPEC = "InvalidSpec"
INVALID_SPEC_MESSAGE = "the spec has problems; fix them and create the resource again: {problems}"
CHECKPOINT_NOT_FOUND = "CheckpointNotFound"
CHECKPOINT_NOT_FOUND_MESSAGE = (
    "PersistentVolumeClaim {claim!r} (spec.checkpoint.claimName) not found in namespace "
    "{namespace!r}; create it with the checkpoints, or name an existing claim"
)
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_FOUND_MESSAGE = "Secret {secret!r} ({field}) not found in namespace {namespace!r}{hint}"
SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
SECRET_KEY_NOT_FOUND_MESSAGE = "Secret {secret!r} ({field}) has no key(s) {keys}; add them"
SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
SERVICE_ACCOUNT_NOT_FOUND_MESSAGE = (
    "ServiceAccount {account!r} for the runner pods not found in namespace {namespace!r}; "
    "enable this namespace in the wanops chart (it creates the account and its Role)"
)
OUTPUT_NOT_CONFIGURED = "OutputNotConfigured"
OUTPUT_NOT_CONFIGURED_MESSAGE = (
    "spec.output{missing} is unset and the operator has no default (chart values store.{value}); "
    "set spec.output"
)

INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"
# {detail}: wanspec.memory's plan message (the estimate, its largest phase, what would fit)
INSUFFICIENT_GPU_MEMORY_MESSAGE = "the layout cannot fit the GPUs: {detail}"

# ---- failed while or after running
INVALID_INPUT = "InvalidInput"  # exit code EXIT_INVALID_INPUT without a reason in the message
JOB_FAILED = "JobFailed"
JOB_FAILED_MESSAGE = "Job {job} failed ({job_reason}): {detail}"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
BACKOFF_LIMIT_EXCEEDED_MESSAGE = (
    "all {attempts} attempt(s) failed (spec.retryLimit); last: {detail}"
)
DEADLINE_EXCEEDED = "DeadlineExceeded"
DEADLINE_EXCEEDED_MESSAGE = (
    "Job {job} ran longer than spec.activeDeadlineSeconds ({seconds} s); raise it or use more GPUs"
)
POD_EVICTED = "PodEvicted"
POD_EVICTED_MESSAGE = (
    "pod {pod} of Job {job} was evicted from node {node} ({why}) and cannot finish there; its "
    "ranks are coupled, so the attempt is replaced whole"
)
START_TIMEOUT = "StartTimeout"
START_TIMEOUT_MESSAGE = (
    "the runner pods did not start within spec.startTimeoutSeconds ({seconds} s): {why}"
)

"""A stand-in for the runner in the operator's cluster tests: it exercises the contract of
`wanspec.contract` and nothing else (the real runner, with the pipeline and the object store, is
tested end to end in the runner issue).

Like the runner it reads /etc/wanops/config.json, checks the torchrun variables, resolves rank 0's
pod DNS name through the headless Service, patches `status.progress` and `status.output` of its
resource with the pod's ServiceAccount, and exits with a code the pod failure policy knows. What
it does is chosen by words in the prompt:

    invalid-input      write an ImageNotReadable termination message, exit EXIT_INVALID_INPUT
    fail-first-attempt exit 1 (an infrastructure failure) on attempt 0, succeed on later ones
    sleep:<seconds>    sleep before succeeding
    progress:<seconds> rank 0 reports Denoising progress once a second for that long, rising,
                       then succeeds (a run whose progress can be watched)
    (otherwise)        succeed at once
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

from kubernetes import client, config

from wanspec import contract
from wanspec.spec import GROUP, PLURAL, VERSION

LINGER_S = 3.0  # rank 0 of a multi-pod run stays up this long after its work (see main)


def main() -> int:
    with open(os.environ[contract.CONFIG_ENV]) as f:
        cfg = contract.RunnerConfig.model_validate(json.load(f))
    prompt = cfg.resolved.spec.prompt
    rank = int(os.environ["PET_NODE_RANK"])
    assert int(os.environ["PET_NNODES"]) == cfg.resolved.pods
    assert int(os.environ["PET_NPROC_PER_NODE"]) == cfg.resolved.gpus_per_pod
    assert os.environ[contract.ACCESS_KEY_ENV] and os.environ[contract.SECRET_KEY_ENV]
    master = os.environ["PET_MASTER_ADDR"]
    print(f"rank {rank}: config of {cfg.resource.name} attempt {cfg.attempt}; master {master}")

    if "invalid-input" in prompt:
        with open(contract.TERMINATION_MESSAGE_PATH, "w") as f:
            f.write(
                contract.termination_message(
                    contract.IMAGE_NOT_READABLE, "s3://inputs/cat.jpg: no such object; upload it"
                )
            )
        return contract.EXIT_INVALID_INPUT
    if "fail-first-attempt" in prompt and cfg.attempt == 0:
        print("simulated infrastructure failure", file=sys.stderr)
        return 1
    if match := re.search(r"sleep:(\d+)", prompt):
        time.sleep(int(match.group(1)))
    if (match := re.search(r"progress:(\d+)", prompt)) and rank == 0:
        config.load_incluster_config()
        seconds = int(match.group(1))
        for step in range(1, seconds + 1):
            time.sleep(1)
            _patch_status(
                cfg,
                {
                    "progress": {
                        "stage": "Denoising",
                        "step": cfg.resolved.steps * step // seconds,
                        "totalSteps": cfg.resolved.steps,
                        "percent": 90 * step // seconds,
                    }
                },
            )

    deadline = time.monotonic() + 30  # rank 0's name may appear late: retry, as the runner does
    _resolve(master, deadline)
    if rank == 0 and cfg.resolved.pods > 1:
        # A real rank 0 lives until every rank has joined its rendezvous; one that finished at
        # once could leave before a peer had resolved its name (a flaky attempt 0). Waiting to
        # resolve the peers instead races the other way (a peer that finished first is gone), so
        # rank 0 lingers while the peers, polling every 0.5 s, find it.
        time.sleep(LINGER_S)

    if rank == 0:
        config.load_incluster_config()
        status = {
            "progress": {
                "stage": "Uploading",
                "step": cfg.resolved.steps,
                "totalSteps": cfg.resolved.steps,
                "percent": 100,
            },
            "output": {"uri": f"s3://{cfg.output.bucket}/{cfg.output.key}", "bytes": 0},
        }
        _patch_status(cfg, status)
    return 0


def _resolve(name: str, deadline: float) -> None:
    """Resolve a pod's DNS name through the headless Service, retrying until `deadline`."""
    while True:
        try:
            socket.gethostbyname(name)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _patch_status(cfg: contract.RunnerConfig, status: dict) -> None:
    res = cfg.resource
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, res.namespace, PLURAL, res.name, {"status": status}
    )


if __name__ == "__main__":
    sys.exit(main())

"""What the workload- and infrastructure-fault tests share: a namespace whose runner pods use the
real object store, an operator whose runner command is `fault_runner.py` (a fault on cue, or the
real runner), the machine's rendezvous port taken in turns, and readers of the bucket and of pod
processes."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_proc import SPEC, Operator, VGs, prepare_namespace, remove_namespace

from localcluster import wait_for
from wanspec import contract

FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")
CKPT = "Wan2.2-TI2V-5B"
# The stand-in publishes at once: 1 pod, 1 "GPU".
STAND_IN = {**SPEC, "gpus": 1, "gpusPerPod": None}
# The real runner's smallest ti2v-5B run: 5 frames at the task's one size, tiny checkpoint.
REAL = {**SPEC, "frames": 5, "seed": 3, "sampling": {"steps": 4}}

# tests/e2e's lock: pods of the node agent share the machine's port space and torchrun listens on
# port 29500 of every address, so runs of the real runner on this machine take turns.


@dataclass
class Space:
    """A namespace prepared as the chart would (store Secret with the real keys, a checkpoint
    claim), its bucket and its operator."""

    namespace: str
    bucket: str
    operator: Operator
    vgs: VGs
    claim: Path

    def tiny_checkpoint(self) -> None:
        """The tiny ti2v-5B checkpoint on the claim, for the real runner (written on first use:
        only those tests need torch in this process)."""
        if not (self.claim / CKPT).exists():
            from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

            write_tiny_checkpoint("ti2v-5B", self.claim / CKPT)


@contextmanager
def space(cluster: Any, kube: Any, s3: Any, tmp: Path, **operator_env: str) -> Iterator[Space]:
    if not cluster.runs_pods:
        pytest.skip("no node agent: runner pods would never run")
    claim = tmp / "claim"
    claim.mkdir()
    ns = prepare_namespace(kube, claim)
    client.CoreV1Api(kube).patch_namespaced_secret(
        "wanops-store",
        ns,
        {
            "stringData": {
                contract.ACCESS_KEY_ENV: cluster.s3_access_key,
                contract.SECRET_KEY_ENV: cluster.s3_secret_key,
            }
        },
    )
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(bucket)
    op = Operator(
        cluster,
        ns,
        tmp / "operator.log",
        WANOPS_RUNNER_COMMAND=f"{sys.executable} {FAULT_RUNNER}",
        WANOPS_STORE_BUCKET=bucket,
        WANOPS_RESYNC_SECONDS="2",
        **operator_env,
    )
    op.start()
    try:
        yield Space(ns, bucket, op, VGs(kube, ns), claim)
    finally:
        op.stop()
        remove_namespace(kube, ns)
        for obj in s3.list_objects(bucket, recursive=True):
            s3.remove_object(bucket, obj.object_name)
        s3.remove_bucket(bucket)


def objects_of(s3: Any, bucket: str, ns: str, name: str) -> list[str]:
    """Everything a resource left in the bucket: outputs (`<ns>/<name>.*`) and work objects."""
    found = s3.list_objects(bucket, prefix=f"{ns}/", recursive=True)
    return sorted(
        o.object_name
        for o in found
        if o.object_name.startswith((f"{ns}/{name}.", f"{ns}/.wanops/{name}-"))
    )


def wait_status(vgs: VGs, name: str, done: Any, op: Operator, timeout: float) -> dict[str, Any]:
    """Poll the resource until done(status); fail with status and operator log on timeout."""
    try:
        return wait_for(
            lambda: (s := vgs.status(name)) and done(s) and s,
            timeout=timeout,
            what=f"{name}: {done.__doc__ or 'condition'}",
            interval=0.3,
        )
    except TimeoutError as e:
        pytest.fail(f"{e}: {vgs.status(name)}\n--- operator:\n{op.tail()}")


def terminal(status: dict[str, Any]) -> bool:
    """a terminal phase"""
    return status.get("phase") in ("Succeeded", "Failed")


def pods_of(kube: Any, ns: str, job: str) -> list[Any]:
    return (
        client.CoreV1Api(kube)
        .list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job}")
        .items
    )


def processes(hostname: str, env_has: bytes = b"", argv_has: str = "") -> list[int]:
    """Host pids of a pod's processes (HOSTNAME in their environment), filtered."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (
            f"HOSTNAME={hostname}".encode() in env
            and (not env_has or env_has in env)
            and argv_has in cmd
        ):
            found.append(int(pid))
    return found


def pod_log(cluster: Any, ns: str, pod: Any, agent: str = "nodeagent") -> str:
    folder = cluster.state_dir / agent / "pods" / f"{ns}_{pod.metadata.name}_{pod.metadata.uid}"
    try:
        return (folder / f"{contract.RUNNER_CONTAINER}.log").read_text(errors="replace")
    except OSError:
        return ""

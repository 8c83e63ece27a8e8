"""The operator's deployment settings, read once from the environment (the chart sets them).

Every value here is something a platform team chooses per installation; nothing is per resource.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_RUNNER_IMAGE = "ghcr.io/wanops/runner:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    """Installation-wide defaults the rendered objects use when the spec leaves them open."""

    runner_image: str = DEFAULT_RUNNER_IMAGE
    # The runner container's command. Images carry their own entrypoint on a real cluster, but the
    # command is explicit so a platform can wrap it (a profiler, a different interpreter).
    runner_command: tuple[str, ...] = ("python", "-m", "runner")
    runner_service_account: str = "wanops-runner"  # may patch videogenerations/status
    store_endpoint: str = ""  # S3 endpoint when spec.output.endpoint is unset
    store_region: str = "us-east-1"
    store_bucket: str = ""  # bucket when spec.output is unset
    store_prefix: str = ""
    # Secret (in each resource's namespace) with the store keys, when the spec names none.
    store_secret: str = "wanops-store"
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    peering: str = ""  # kopf peering name for several replicas; empty: standalone
    # Seconds a replica's keep-alive in the peering counts: a replica that dies without a word
    # (SIGKILL, a lost node) is replaced by a waiting one after at most this long.
    peering_lifetime: int = 60
    resync_seconds: float = 30.0  # how often unfinished resources are re-checked (start timeouts)
    metrics_port: int = 8000
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    watch_server_timeout: int = 300  # seconds before the API server ends a watch (then renewed)
    # GPU memory of the nodes runner pods land on, for the memory planner when a resource does not
    # set spec.memory.gpuMemoryGiB (chart value gpuMemoryGiB; 80: H100/A100 80GB).
    default_gpu_memory_gib: float = 80.0
    # Seconds a runner pod stays on a node that is NotReady or unreachable before it is evicted
    # (its tolerationSeconds; Kubernetes' default is 300). The attempt is then replaced whole.
    node_lost_seconds: int = 60
    # PersistentVolumeClaim (in each runner namespace, writable by the runner) that keeps the
    # runners' compile cache between runs; empty: each pod compiles from scratch.
    compile_cache_claim: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read `WANOPS_*` variables; unset or empty ones keep the defaults above."""
        env = os.environ if env is None else env

        def get(key: str) -> str | None:
            return env.get(f"WANOPS_{key}") or None

        values: dict[str, object] = {}
        for key, field in (
            ("RUNNER_IMAGE", "runner_image"),
            ("RUNNER_SERVICE_ACCOUNT", "runner_service_account"),
            ("STORE_ENDPOINT", "store_endpoint"),
            ("STORE_REGION", "store_region"),
            ("STORE_BUCKET", "store_bucket"),
            ("STORE_PREFIX", "store_prefix"),
            ("STORE_SECRET", "store_secret"),
            ("PEERING", "peering"),
            ("LIVENESS_ENDPOINT", "liveness_endpoint"),
            ("COMPILE_CACHE_CLAIM", "compile_cache_claim"),
        ):
            if (value := get(key)) is not None:
                values[field] = value
        if (value := get("RUNNER_COMMAND")) is not None:
            values["runner_command"] = tuple(shlex.split(value))
        if (value := get("NAMESPACES")) is not None:
            values["namespaces"] = tuple(n.strip() for n in value.split(",") if n.strip())
        if (value := get("RESYNC_SECONDS")) is not None:
            values["resync_seconds"] = float(value)
        if (value := get("DEFAULT_GPU_MEMORY_GIB")) is not None:
            values["default_gpu_memory_gib"] = float(value)
        for key, field in (
            ("METRICS_PORT", "metrics_port"),
            ("WATCH_SERVER_TIMEOUT", "watch_server_timeout"),
            ("NODE_LOST_SECONDS", "node_lost_seconds"),
            ("PEERING_LIFETIME", "peering_lifetime"),
        ):
            if (value := get(key)) is not None:
                values[field] = int(value)
        return cls(**values)  # type: ignore[arg-type]

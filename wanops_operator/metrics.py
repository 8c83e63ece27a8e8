"""Prometheus metrics of the operator, served on their own port (`WANOPS_METRICS_PORT`).

The phase gauge is computed from what this process last saw of each resource; a restarted
operator rebuilds it on its first pass over the resources (resume handlers and the resync loop).
"""

from __future__ import annotations

import threading
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from wanops_operator.status import FAILED, PENDING, QUEUED, RUNNING, SUCCEEDED, SUSPENDED

PHASES = (PENDING, QUEUED, SUSPENDED, RUNNING, SUCCEEDED, FAILED)

RESOURCES = Gauge("wanops_videogenerations", "VideoGenerations by phase", ["phase"])
RECONCILES = Counter("wanops_reconciles_total", "Reconcile passes", ["result"])
JOB_CREATION = Histogram(
    "wanops_job_creation_seconds",
    "From the resource's creation to its first Job",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300),
)
FINISHED = Counter("wanops_runs_finished_total", "Generations that ended, by outcome", ["outcome"])
DURATION = Histogram(
    "wanops_generation_seconds",
    "From the first runner pod's start to Succeeded",
    buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def serve(port: int) -> None:
    """Expose /metrics on `port` (0: not served)."""
    if port:
        start_http_server(port)


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record a resource's phase (None: deleted) and refresh the per-phase gauge."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        for each in PHASES:
            RESOURCES.labels(each).set(sum(p == each for p in _phases.values()))


def job_created(created: datetime, now: datetime) -> None:
    JOB_CREATION.observe(max(0.0, (now - created).total_seconds()))


def finished(outcome: str, seconds: float | None) -> None:
    """A transition into Succeeded or Failed (counted once: terminal phases are final)."""
    FINISHED.labels(outcome).inc()
    if outcome == SUCCEEDED and seconds is not None:
        DURATION.observe(seconds)

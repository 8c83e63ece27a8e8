"""Prometheus metrics of one run, served by rank 0 on `$WANOPS_METRICS_PORT` (default 9400).

Steps per second and step time say whether a layout performs; peak GPU memory checks the memory
planner's estimate (issue 6) against reality; phase timings show where a slow run spends its time
(loading a 126 GB folder is often longer than sampling).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

PORT_ENV = "WANOPS_METRICS_PORT"
DEFAULT_PORT = 9400
_STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class Metrics:
    """One registry per run; `step()` after every denoising step, `phase()` around each stage."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.steps = Counter(
            "wanops_runner_steps", "Denoising steps done by this process.", registry=r
        )
        self.step_seconds = Histogram(
            "wanops_runner_step_seconds",
            "Wall time of one denoising step.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.steps_per_second = Gauge(
            "wanops_runner_steps_per_second",
            "Denoising steps per second, over the run so far.",
            registry=r,
        )
        self.peak_gpu_memory = Gauge(
            "wanops_runner_peak_gpu_memory_bytes",
            "Peak GPU memory allocated by this process.",
            registry=r,
        )
        self.phase_seconds = Gauge(
            "wanops_runner_phase_seconds",
            "Wall time of each phase of the run.",
            ["phase"],
            registry=r,
        )
        self._first: float | None = None
        self._last: float | None = None
        self._count = 0

    def serve(self, port: int) -> bool:
        """Start the HTTP endpoint; a taken port is logged, never fatal."""
        try:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)
        except OSError as e:
            log.warning("metrics: cannot listen on port %d: %s", port, e)
            return False
        log.info("metrics: serving on port %d", port)
        return True

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phase_seconds.labels(name).set(time.monotonic() - start)
            self.record_peak_memory()

    def start_steps(self) -> None:
        """The loop starts now (after loading and encoding), so step 1 is timed on its own."""
        self._first = self._last = time.monotonic()

    def step(self) -> None:
        now = time.monotonic()
        if self._last is not None:
            self.step_seconds.observe(now - self._last)
        self._last = now
        self._count += 1
        self.steps.inc()
        if self._first is not None and now > self._first:
            self.steps_per_second.set(self._count / (now - self._first))

    def record_peak_memory(self) -> None:
        if torch.cuda.is_available():
            self.peak_gpu_memory.set(torch.cuda.max_memory_allocated())

"""A step watchdog: a rank that makes no progress for too long ends itself with a non-zero status.

Collective timeouts end the ranks that *wait* for a lost peer; this ends the peer itself when it
is stuck outside any collective (a deadlock, a wedged kernel launch, a stalled filesystem read).
`os._exit` rather than an exception: the stuck thread may never return to Python to see one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

EXIT_CODE = 124  # as `timeout(1)`: the command ran out of time


class StepWatchdog:
    """`with StepWatchdog(timeout_s, rank) as dog:` … `dog.beat()` after every unit of progress.

    If `timeout_s` passes without a beat the process prints why to stderr, hands the same words to
    `on_timeout` (if given: a launcher that turns them into the run's failure reason), and exits
    with 124.
    """

    def __init__(
        self, timeout_s: float, rank: int = 0, on_timeout: Callable[[str], None] | None = None
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"watchdog timeout must be > 0 seconds, got {timeout_s}")
        self.timeout_s = timeout_s
        self.rank = rank
        self.on_timeout = on_timeout
        self._deadline = time.monotonic() + timeout_s
        self._what = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="wanops-step-watchdog", daemon=True)

    def beat(self, what: str = "step") -> None:
        """Progress was made; the next one is due within the timeout."""
        self._what = what
        self._deadline = time.monotonic() + self.timeout_s

    def chain(self, callback: Callable[..., Any] | None) -> Callable[..., None]:
        """A pipeline progress callback that beats, then calls `callback` (if any)."""

        def on_step(step: int, total: int, *rest: Any) -> None:
            self.beat(f"step {step}/{total}")
            if callback is not None:
                callback(step, total, *rest)

        return on_step

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            if time.monotonic() > self._deadline:
                why = (f"rank {self.rank}: no progress for {self.timeout_s:.0f} s after {self._what}; aborting "
                       f"(set WANOPS_COLLECTIVE_TIMEOUT_S to allow longer)")
                print(why, file=sys.stderr, flush=True)
                try:
                    if self.on_timeout is not None:
                        self.on_timeout(why)
                finally:
                    os._exit(EXIT_CODE)

    def __enter__(self) -> StepWatchdog:
        self.beat("start")
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

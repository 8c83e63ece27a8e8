"""Turns on the machine's torchrun rendezvous port for runs on the local cluster.

The node agent gives pods no network namespace, so every pod on this machine shares one port
space, and torchrun's store listens on port 29500 of every address: two runs at once (another
session's tests, the demo) make one fail with EADDRINUSE and burn its retries. Runs take turns
through a lock file; anything else holding the port is waited out. (A real cluster gives each
pod its own port space.)
"""

from __future__ import annotations

import fcntl
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wanspec import contract

from .cluster import wait_for

LOCK_FILE = Path(tempfile.gettempdir()) / f"wanops-e2e-rendezvous-{contract.MASTER_PORT}.lock"


@contextmanager
def rendezvous_turn(timeout: float = 420) -> Iterator[None]:
    """Hold the lock file, then wait until the port is free; release the lock on exit."""
    with open(LOCK_FILE, "a") as lock:
        wait_for(lambda: _try_lock(lock), timeout=timeout, what=f"{LOCK_FILE} (another run)")
        try:
            wait_for(_port_free, timeout=timeout, what=f"port {contract.MASTER_PORT} free")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _port_free() -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", contract.MASTER_PORT))
            return True
        except OSError:
            return False

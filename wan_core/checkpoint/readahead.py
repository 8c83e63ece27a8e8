"""Read a run's first weights into the page cache in the background while the process starts.

A cold start is disk-bound twice over. First the Python imports (thousands of small files:
latency, not bandwidth), then the weights, which the loaders memory-map and read only when each
model is copied to the GPU: umT5 (11 GB) for the prompts, then the first DiT (27 GB in bf16 for
an A14B expert), one after the other, at the disk's ≈1.6 GB/s on the lent H100 host. Started
before the heavy imports, `start` has those files streamed into the page cache meanwhile, so the
copies to the GPU later read memory. Torch-free, so it can run before torch is imported.

Only as much as half the memory available to the process (the host's, and the cgroup limit's
headroom in a pod) is read: on a small host, files read ahead would evict the ones read before
them, which the run needs first.

The files are read, not merely advised: `posix_fadvise(WILLNEED)` was a no-op on the lent H100
host (its page cache did not grow), and reading works on every filesystem. Several threads read
consecutive 16 MiB pieces, handed out in file order, so the files needed first are in memory first
and the device has several requests in flight (one sequential reader leaves an NVMe drive or a
network volume idle between requests; `bench/readahead.py` measures the thread counts). The GIL is
released during each read; the loaders still read (and check) every byte themselves, from memory
by then. `WANOPS_READAHEAD_THREADS` overrides the thread count (1: one sequential reader).

The readers ask for the idle I/O class: the imports running beside them read thousands of small
files one at a time, and behind a queue of 16 MiB reads each waited its turn, so on the lent H100
the imports ended 11 s after the readahead instead of overlapping it. A scheduler that honours
the class (mq-deadline, BFQ) serves the imports' reads first; under `none` the request changes
nothing.

The pipelines use the same reader for the next A14B expert when it cannot be prefetched onto the
GPU (`offload_model`, or too little room): from the first step done, its files are read into the
page cache, so the switch copies from memory instead of waiting on the disk.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from wanspec.tasks import DIT_INDEX, DIT_SINGLE, T5_CHECKPOINT, TaskSpec

log = logging.getLogger(__name__)

def first_step_files(ckpt_dir: str | Path, task: TaskSpec, *, t5: bool = True) -> list[Path]:
    """The files of `ckpt_dir` read before the first denoising step, in the order they are used.

    VAE, umT5 (unless `t5` is False: both prompts are in the prompt cache), then the shards of
    the DiT that runs the first step (the high-noise expert for A14B, whose boundary the first
    timestep always exceeds). Files that are absent are left out: the loaders report a broken
    folder with its reason.
    """
    root = Path(ckpt_dir)
    head = (root / task.vae_checkpoint, root / T5_CHECKPOINT) if t5 else (root / task.vae_checkpoint,)
    return [f for f in head if f.is_file()] + dit_files(root / task.experts[0])


def dit_files(folder: str | Path) -> list[Path]:
    """The weight files of one DiT folder (its index's shards in order, or the single file)."""
    folder = Path(folder)
    shards = [folder / DIT_SINGLE]
    try:
        weight_map = json.loads((folder / DIT_INDEX).read_text())["weight_map"]
        shards = [folder / name for name in dict.fromkeys(weight_map.values())]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # unsharded, or not a readable index
    return [f for f in shards if f.is_file()]


def available_memory() -> int | None:
    """Bytes this process may still fill: the host's MemAvailable, capped by the cgroup v2 limit's
    headroom where one is set; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _within(files: Sequence[Path], budget: int | None) -> list[Path]:
    """The longest prefix of `files` whose sizes add up to at most `budget` (all of them if None)."""
    if budget is None:
        return list(files)
    kept, total = [], 0
    for path in files:
        try:
            total += path.stat().st_size
        except OSError:  # gone: `_read` skips it
            pass
        if total > budget:
            break
        kept.append(path)
    return kept


CHUNK = 16 << 20
DEFAULT_THREADS = 8


def threads_from_env() -> int:
    """`WANOPS_READAHEAD_THREADS` if it is a positive integer, else `DEFAULT_THREADS`."""
    value = os.environ.get("WANOPS_READAHEAD_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_THREADS


def pieces(sizes: Sequence[int], chunk: int = CHUNK) -> Iterator[tuple[int, int, int]]:
    """(file index, offset, length) covering every byte of files of `sizes` once, in file order."""
    for index, size in enumerate(sizes):
        for offset in range(0, size, chunk):
            yield index, offset, min(chunk, size - offset)


# ioprio_set(2) and ioprio_get(2): no wrapper in the standard library, and psutil's `ionice` sets
# a process's main thread, not the calling one.
_IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}
_IOPRIO_WHO_PROCESS, _IOPRIO_CLASS_SHIFT, IOPRIO_CLASS_IDLE = 1, 13, 3
_libc = ctypes.CDLL(None, use_errno=True)


def _ioprio(call: int, *args: int) -> int:
    """ioprio_set / ioprio_get (`call` 0 / 1) on this thread; -1 where unsupported or refused."""
    numbers = _IOPRIO_SYSCALLS.get(platform.machine())
    if numbers is None:
        return -1
    return _libc.syscall(numbers[call], _IOPRIO_WHO_PROCESS, 0, *args)


def idle_io_priority() -> bool:
    """Put the calling thread's reads in the idle I/O class; whether the kernel took it."""
    return _ioprio(0, IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT) == 0


def io_class() -> int:
    """The calling thread's I/O class (0: none set, 1 real-time, 2 best-effort, 3 idle; -1 unknown)."""
    value = _ioprio(1)
    return value if value < 0 else value >> _IOPRIO_CLASS_SHIFT


def read(files: Sequence[Path], threads: int, chunk: int = CHUNK, idle: bool = True) -> int:
    """Read `files` with `threads` readers, pieces handed out in file order, in the idle I/O class
    unless `idle` is False; the bytes read."""
    start, opened, fds, sizes = time.perf_counter(), [], [], []
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:  # a hint only; loading reads the file and reports the problem
            log.debug("readahead of %s skipped: %s", path, err)
            continue
        opened.append(path)
        fds.append(fd)
        sizes.append(os.fstat(fd).st_size)
    work, lock, done = pieces(sizes, chunk), threading.Lock(), []

    def worker() -> None:
        if idle:
            idle_io_priority()
        buf, size = bytearray(chunk), 0
        while True:
            with lock:
                piece = next(work, None)
            if piece is None:
                break
            index, offset, length = piece
            try:
                size += os.preadv(fds[index], [memoryview(buf)[:length]], offset)
            except OSError as err:
                log.debug("readahead of %s at %d failed: %s", opened[index], offset, err)
        done.append(size)

    pool = [threading.Thread(target=worker, name=f"wanops-readahead-{i}", daemon=True) for i in range(max(1, threads))]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    for fd in fds:
        os.close(fd)
    log.info("readahead: %.1f GB of %d files read in %.1f s by %d threads",
             sum(done) / 1e9, len(files), time.perf_counter() - start, len(pool))
    return sum(done)


def start(files: Sequence[Path]) -> threading.Thread | None:
    """Read `files` in order in the background (a daemon thread leading `threads_from_env()`
    readers), as many as half the available memory holds (None when that is none of them)."""
    available = available_memory()
    files = _within(files, None if available is None else available // 2)
    if not files:
        return None
    thread = threading.Thread(target=read, args=(list(files), threads_from_env()), name="wanops-readahead", daemon=True)
    thread.start()
    return thread

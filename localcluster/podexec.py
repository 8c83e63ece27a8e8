"""Container start-up for the node agent: runs as the first program of every container process.

The node agent starts `python -I podexec.py SPEC.json` in a new session (its process group is the
container's). This program, still single-threaded, gives itself what a container runtime would: a
private mount namespace in which the pod's hosts file, volumes and termination-message file are
bind-mounted at their absolute paths, and a private UTS namespace carrying the pod's hostname. Then
it execs the container's command with the container's environment. Stdlib only and run by path
(`-I`), so nothing from the pod's environment or the agent's imports can change how it behaves.

SPEC.json (written by the agent, deleted here after reading): argv, env, cwd, hostname, mounts (list
of {source, target, readOnly}, applied in order), parent (the agent's pid) and startError (a host
path: on any failure before exec the reason is written there and the exit code is 128, which the
agent reports as reason StartError, like a runtime that cannot start the container).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
START_ERROR_EXIT = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    _check(_libc.mount(src, target.encode(), None, flags, None), f"mount {source} on {target}")


def _bind(source: str, target: str, read_only: bool) -> None:
    """Bind-mounts source at target, creating the mount point (a file for a file, else a folder)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    _mount(source, target, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _enter(spec: dict) -> None:
    # Die with the agent (SIGKILL included) rather than outlive it as an orphan.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != spec["parent"]:
        raise OSError("the node agent exited before the container started")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(CLONE_NEWNS|CLONE_NEWUTS)")
    # Private propagation, so nothing mounted here leaks back to the host or to other pods.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    hostname = spec["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    for m in spec["mounts"]:
        _bind(m["source"], m["target"], m["readOnly"])
    os.makedirs(spec["cwd"], exist_ok=True)
    os.chdir(spec["cwd"])
    # Python ignores SIGPIPE/SIGXFSZ; ignored signals survive exec: give the command the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _fail(spec: dict, message: str) -> None:
    print(f"node agent: {message}", file=sys.stderr, flush=True)
    with open(spec["startError"], "w") as f:
        f.write(message)
    os._exit(START_ERROR_EXIT)


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    os.unlink(spec_path)  # it may carry Secret values
    try:
        _enter(spec)
    except OSError as e:
        _fail(spec, f"could not set up the container: {e}")
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        _fail(
            spec, f"exec {argv[0]!r}: {e.strerror} (looked in PATH={spec['env'].get('PATH', '')})"
        )


if __name__ == "__main__":
    main(sys.argv[1])

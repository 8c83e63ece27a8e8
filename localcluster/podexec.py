"""Container start-up for the node agent: runs as the first program of every container process.

The node agent starts `python -I podexec.py SPEC.json` in a new session (its process group is the
container's). This program, still single-threaded, gives itself what a container runtime would: a
private mount namespace in which the pod's hosts file, volumes and termination-message file are
bind-mounted at their absolute paths, a private UTS namespace carrying the pod's hostname, and a
private PID namespace with its own /proc. Then it runs the container's command with the container's
environment. Stdlib only and run by path (`-I`), so nothing from the pod's environment or the
agent's imports can change how it behaves.

Processes (what `docker run --init` gives a container):

    agent ─ podexec (host side, the pid the agent knows) ─ init (PID 1) ─ command (PID 2) ─ …

When the command exits, init exits with its status (128+N if killed by signal N) and the kernel
SIGKILLs every process left in the namespace, so nothing a container started outlives it, not even
a child that left the process group with setsid (torchrun's workers do). The agent's signals to the
process group reach the command directly; podexec and init ignore them and only wait. SIGKILL of
podexec (or of the agent, by PR_SET_PDEATHSIG) kills init and with it the whole namespace.

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
CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
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
    # CLONE_NEWPID applies to the children: the next fork is PID 1 of the pod's namespace.
    _check(
        _libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID),
        "unshare(CLONE_NEWNS|CLONE_NEWUTS|CLONE_NEWPID)",
    )
    # Private propagation, so nothing mounted here leaks back to the host or to other pods.
    _mount(None, "/", MS_REC | MS_PRIVATE)
    hostname = spec["hostname"].encode()
    _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
    # Every source is opened before the first mount and bound through its /proc/self/fd link: a
    # mount at /tmp (an emptyDir there, as read-only-root pods have) must not hide the sources of
    # the mounts after it, which live in the agent's state dir, often under /tmp. A runtime sees
    # them from the host's root the same way.
    sources = [os.open(m["source"], os.O_PATH | os.O_CLOEXEC) for m in spec["mounts"]]
    for fd, m in zip(sources, spec["mounts"], strict=True):
        _bind(f"/proc/self/fd/{fd}", m["target"], m["readOnly"])
        os.close(fd)
    os.makedirs(spec["cwd"], exist_ok=True)
    os.chdir(spec["cwd"])
    # Python ignores SIGPIPE/SIGXFSZ; ignored signals survive exec: give the command the defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _fail(spec: dict, message: str) -> None:
    print(f"node agent: {message}", file=sys.stderr, flush=True)
    # Through the folder opened before any mount (see main): a mount may cover its path by now.
    name = os.path.basename(spec["startError"])
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=spec["errorDirFd"])
    with os.fdopen(fd, "w") as f:
        f.write(message)
    os._exit(START_ERROR_EXIT)


# Ignored by podexec and init: the agent's SIGTERM to the process group is the command's to handle.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _status(wait_status: int) -> int:
    """An exit code for a wait status: the code, or 128+N for death by signal N (as runtimes)."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _wait_for(pid: int) -> int:
    """Reap children (init also adopts the namespace's orphans) until `pid` exits; its code."""
    while True:
        try:
            reaped, wait_status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return START_ERROR_EXIT
        if reaped == pid:
            return _status(wait_status)


def _init(spec: dict) -> None:
    """PID 1 of the pod: its own /proc, then the command as its child; exits with the command."""
    try:
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        _mount_proc()
    except OSError as e:
        _fail(spec, f"could not set up the container's PID namespace: {e}")
    command = os.fork()
    if command == 0:
        _exec(spec)
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_IGN)
    os._exit(_wait_for(command))  # the kernel then SIGKILLs what is left in the namespace


def _mount_proc() -> None:
    """A /proc of the pod's PID namespace (the mount namespace is the pod's, private)."""
    _check(
        _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
        "mount proc on /proc",
    )


def _exec(spec: dict) -> None:
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        _fail(
            spec, f"exec {argv[0]!r}: {e.strerror} (looked in PATH={spec['env'].get('PATH', '')})"
        )


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    os.unlink(spec_path)  # it may carry Secret values
    spec["errorDirFd"] = os.open(
        os.path.dirname(spec["startError"]), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    )
    try:
        _enter(spec)
    except OSError as e:
        _fail(spec, f"could not set up the container: {e}")
    for sig in _FORWARDED:  # before the fork, so no signal can land between fork and handler
        signal.signal(sig, signal.SIG_IGN)
    init = os.fork()
    if init == 0:
        _init(spec)
    os._exit(_wait_for(init))


if __name__ == "__main__":
    main(sys.argv[1])

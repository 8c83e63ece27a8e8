"""One pod on the node agent, from bound to gone: start-up, processes, restarts, status, deletion.

Each pod (one uid) is driven by a PodWorker thread. The agent's watch hands it every new version of
the pod object; the worker starts init containers one by one, then the containers, reports through
`pods/status` what the kubelet would, and on a deletionTimestamp stops the processes (SIGTERM to the
process group, SIGKILL after the grace period), reports the terminal phase and deletes the object
with gracePeriodSeconds=0.

Files of a pod live in `<state-dir>/pods/<namespace>_<name>_<uid>/`: `<container>.log` (stdout and
stderr together, appended across restarts, kept after the pod is gone), `hosts`,
`termination/<container>` and `volumes/<volume>/` (removed when the pod is gone).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .kubejson import JSON, Kube, brief
from .podexec import START_ERROR_EXIT
from .podnet import AddressPool, HostEntry
from .podspec import (
    PodConfigError,
    Sources,
    container_env,
    container_mounts,
    expand,
    prepare_volumes,
)

log = logging.getLogger("nodeagent")

PODEXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "podexec.py")
TERMINAL = ("Succeeded", "Failed")
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4096  # the kubelet's limit per container
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # the kubelet's log tail for FallbackToLogsOnError
RETRY_S = 2.0  # a pod that cannot start yet (missing ConfigMap...) or an API call that failed
MAX_BACKOFF_S = (
    10.0  # restart back-off 1, 2, 4, 8, 10 s (the kubelet's starts at 10 s, up to 5 min)
)
TICK_S = 1.0
LOST_MESSAGE = "The container could not be located when the pod was terminated"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _waiting(reason: str, message: str = "") -> JSON:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


@dataclass
class NodeContext:
    """What every pod on the agent shares."""

    kube: Kube
    pods_dir: str
    claims_dir: str
    addresses: AddressPool
    host_ip: str
    service_env: dict[
        str, str
    ]  # KUBERNETES_SERVICE_* pointing at the real API server (no kube-proxy)
    image_env: dict[str, str]  # stands in for the image's ENV: the host's PATH, HOME, locale, venv
    network_changed: Callable[[str], None]  # rewrite the hosts files of this namespace


@dataclass
class Container:
    """One init or regular container and its current process, if any."""

    spec: JSON
    init: bool
    state: JSON
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    pending: bool = True  # still has to be (re)started
    not_before: float = 0.0  # back-off or retry deadline (time.monotonic)
    last_state: JSON = field(default_factory=dict)
    container_id: str = ""

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def succeeded(self) -> bool:
        return not self.pending and self.state.get("terminated", {}).get("exitCode") == 0

    @property
    def ever_started(self) -> bool:
        return bool(self.container_id)

    def status(self) -> JSON:
        running = self.proc is not None
        out = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.succeeded if self.init else running,
            "started": running,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


class PodWorker:
    """Drives one pod in its own thread; the agent feeds it API updates through update()/gone()."""

    def __init__(self, node: NodeContext, pod: JSON) -> None:
        self.node = node
        self.pod = pod
        meta, spec = pod["metadata"], pod["spec"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.dir = os.path.join(node.pods_dir, f"{self.namespace}_{self.name}_{self.uid}")
        self.host_network = bool(spec.get("hostNetwork"))
        # The kubelet's pod hostname: spec.hostname or the pod name, cut to a 63-character label.
        self.hostname = (
            spec.get("nodeName") if self.host_network else spec.get("hostname") or self.name
        )[:63]
        self.subdomain = "" if self.host_network else spec.get("subdomain", "")
        self.ip = ""
        first_wait = "PodInitializing" if spec.get("initContainers") else "ContainerCreating"
        self.init = [
            Container(c, True, _waiting("PodInitializing")) for c in spec.get("initContainers", [])
        ]
        self.containers = [Container(c, False, _waiting(first_wait)) for c in spec["containers"]]
        self.phase = "Pending"
        self.prepared = False
        self.init_done = not self.init
        self.start_time = now()
        self._volumes: dict[str, str] = {}
        self._retry_at = 0.0
        self._conditions: dict[str, tuple[str, str]] = {}  # type -> (status, lastTransitionTime)
        self._reported: JSON | None = None
        self._net_state: tuple[object, ...] = ()
        self._wake = threading.Event()
        self._gone = False
        self._stop_grace: float | None = None  # set when the agent shuts down
        self._thread = threading.Thread(
            target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True
        )

    # -- interface for the agent (called from its threads) -----------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: JSON) -> None:
        self.pod = pod
        self._wake.set()

    def gone(self) -> None:
        """The pod object no longer exists (deleted, or force-deleted while running)."""
        self._gone = True
        self._wake.set()

    def stop(self, grace: float) -> None:
        """The agent is shutting down: stop the processes, leave the pod object as it is."""
        self._stop_grace = grace
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    @property
    def ready(self) -> bool:
        return (
            self.prepared
            and self.init_done
            and self.phase not in TERMINAL
            and all(c.proc is not None for c in self.containers)
        )

    @property
    def labels(self) -> dict[str, str]:
        return self.pod["metadata"].get("labels", {})

    @property
    def hosts_path(self) -> str:
        return os.path.join(self.dir, "hosts")

    def host_entry(self) -> HostEntry | None:
        """This pod's name record, once it has an address of its own."""
        if not self.ip or self.host_network:
            return None
        return HostEntry(self.ip, self.hostname, self.subdomain, self.namespace)

    def resolvable(self, publish_not_ready: bool) -> bool:
        """Whether cluster DNS would answer for this pod behind its headless Service."""
        return (
            bool(self.ip)
            and not self.deleting
            and self.phase not in TERMINAL
            and (self.ready or publish_not_ready)
        )

    # -- the pod's life ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            status = self.pod.get("status", {})
            if status.get("phase") in TERMINAL:
                self.phase = status["phase"]  # it finished before this agent process started
            elif self._started_before(status):
                self._report_lost(status)
            else:
                self._drive()
            self._await_deletion()
        except Exception:
            log.exception(
                "pod %s/%s: node agent error; stopping its processes", self.namespace, self.name
            )
            self._kill_all(0)
        finally:
            self.node.addresses.release(self.uid)
            shutil.rmtree(os.path.join(self.dir, "volumes"), ignore_errors=True)
            self.node.network_changed(self.namespace)

    def _sleep(self, timeout: float | None) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def _drive(self) -> None:
        """Start-up, supervision, restarts; until the pod ends, is deleted or the agent stops."""
        while True:
            if self._stop_grace is not None:
                self._kill_all(self._stop_grace)
                return
            if self._gone:
                self._kill_all(self._deletion_grace())
                return
            if self.deleting:
                self._kill_all(self._deletion_grace())
                self.phase = (
                    "Succeeded"
                    if self.init_done and all(c.succeeded for c in self.containers)
                    else "Failed"
                )
                while not (
                    self._report() or self._gone or self._stop_grace is not None
                ):  # terminal phase, then delete
                    self._sleep(RETRY_S)
                return
            self._step()
            self._publish()
            if self._report() and self.phase in TERMINAL:
                return
            self._sleep(TICK_S)

    def _await_deletion(self) -> None:
        """A finished pod stays until it is deleted; then the kubelet removes the object."""
        sent = False
        while not (self._gone or self._stop_grace is not None):
            self._publish()
            if self.deleting and not sent:
                sent = self._delete()
            self._sleep(RETRY_S if self.deleting and not sent else None)

    def _deletion_grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get(
            "deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30)
        )
        return grace if grace > 0 else 2  # the kubelet's minimum for a forced kill

    def _step(self) -> None:
        for c in self.init + self.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self._exited(c)
        t = time.monotonic()
        if not self.prepared:
            if t >= self._retry_at:
                self._prepare()
            if not self.prepared:
                return
        if not self.init_done:
            current = next((c for c in self.init if not c.succeeded), None)
            if current is not None:
                if current.proc is None and current.pending and t >= current.not_before:
                    self._start(current)
                elif current.proc is None and not current.pending:
                    self.phase = "Failed"  # an init container failed and restartPolicy is Never
                return
            self.init_done = True
            for c in self.containers:
                c.state = _waiting("ContainerCreating")
        for c in self.containers:
            if c.proc is None and c.pending and t >= c.not_before:
                self._start(c)
        if all(c.proc is None and not c.pending for c in self.containers):
            self.phase = "Succeeded" if all(c.succeeded for c in self.containers) else "Failed"
        elif any(c.ever_started for c in self.containers):
            self.phase = "Running"

    def _view(self) -> JSON:
        """The pod with the addresses this agent gave it, for downward-API fields."""
        addresses = {
            "hostIP": self.node.host_ip,
            "hostIPs": [{"ip": self.node.host_ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}] if self.ip else [],
        }
        return {**self.pod, "status": {**self.pod.get("status", {}), **addresses}}

    def _prepare(self) -> None:
        """The pod "sandbox": folders, an address, a hosts file and the volumes."""
        os.makedirs(os.path.join(self.dir, "termination"), exist_ok=True)
        if not self.ip:
            self.ip = (
                self.node.host_ip if self.host_network else self.node.addresses.allocate(self.uid)
            )
        try:
            self._volumes = prepare_volumes(
                self.node.kube,
                self._view(),
                os.path.join(self.dir, "volumes"),
                self.node.claims_dir,
                Sources(self.node.kube, self.namespace),
            )
        except PodConfigError as e:
            log.info("pod %s/%s: waiting for volumes: %s", self.namespace, self.name, e)
            for c in self.init + self.containers:
                c.state = _waiting("ContainerCreating", str(e))
            self._retry_at = time.monotonic() + RETRY_S
            return
        self.prepared = True
        self.node.network_changed(
            self.namespace
        )  # writes this pod's hosts file before anything starts

    def _start(self, c: Container) -> None:
        spec = c.spec
        try:
            env = container_env(
                self._view(), spec, Sources(self.node.kube, self.namespace), self.node.service_env
            )
            env = {**self.node.service_env, **env}
            mounts = container_mounts(self.pod, spec, self._volumes, env)
        except PodConfigError as e:
            c.state = _waiting("CreateContainerConfigError", str(e))
            c.not_before = time.monotonic() + RETRY_S
            return
        c.pending = False
        c.started_at = now()
        if not spec.get("command"):
            self._terminated(
                c,
                START_ERROR_EXIT,
                "StartError",
                "the node agent runs no images, so every container needs a command",
            )
            return
        if not self.host_network and not any(m["target"] == "/etc/hosts" for m in mounts):
            mounts.insert(0, {"source": self.hosts_path, "target": "/etc/hosts", "readOnly": False})
        termination = os.path.join(self.dir, "termination", c.name)
        open(termination, "wb").close()
        mounts.append(
            {
                "source": termination,
                "readOnly": False,
                "target": spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH,
            }
        )
        start_error = os.path.join(self.dir, "termination", f"{c.name}.start-error")
        if os.path.exists(start_error):
            os.unlink(start_error)
        launch = {
            "argv": [expand(a, env) for a in spec["command"] + spec.get("args", [])],
            "env": {**self.node.image_env, "HOSTNAME": self.hostname, **env},
            "cwd": spec.get("workingDir") or "/",
            "hostname": self.hostname,
            "mounts": mounts,
            "parent": os.getpid(),
            "startError": start_error,
        }
        launch_path = os.path.join(self.dir, f".{c.name}.launch.json")
        fd = os.open(
            launch_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )  # may hold Secret values
        with os.fdopen(fd, "w") as f:
            json.dump(launch, f)
        with open(os.path.join(self.dir, f"{c.name}.log"), "ab") as out:
            c.proc = subprocess.Popen(
                [sys.executable, "-I", PODEXEC, launch_path],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={},
                cwd="/",
            )
        c.container_id = f"nodeagent://{self.uid}/{c.name}/{c.restarts}"
        c.state = {"running": {"startedAt": c.started_at}}
        threading.Thread(target=self._await_exit, args=(c.proc,), daemon=True).start()
        log.info("pod %s/%s: started %s (pid %d)", self.namespace, self.name, c.name, c.proc.pid)

    def _await_exit(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self._wake.set()

    def _exited(self, c: Container) -> None:
        assert c.proc is not None
        pid, rc = c.proc.pid, c.proc.wait()
        c.proc = None
        _signal_group(pid, signal.SIGKILL)  # what the container left behind in its process group
        code = 128 - rc if rc < 0 else rc  # killed by signal N: 128+N, as container runtimes report
        start_error = os.path.join(self.dir, "termination", f"{c.name}.start-error")
        if os.path.exists(start_error):
            with open(start_error) as f:
                self._terminated(c, code, "StartError", f.read())
            return
        self._terminated(
            c, code, "Completed" if code == 0 else "Error", self._termination_message(c, code)
        )

    def _terminated(self, c: Container, code: int, reason: str, message: str) -> None:
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": c.started_at,
            "finishedAt": now(),
        }
        if message:
            terminated["message"] = message
        if c.container_id:
            terminated["containerID"] = c.container_id
        c.state = {"terminated": terminated}
        log.info("pod %s/%s: %s exited %d (%s)", self.namespace, self.name, c.name, code, reason)
        if (
            self._stop_grace is None
            and not self._gone
            and not self.deleting
            and self._restarts(c, code)
        ):
            c.restarts += 1
            c.pending = True
            c.not_before = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (c.restarts - 1))
            c.last_state = c.state
            c.state = _waiting("CrashLoopBackOff", f"back-off restarting failed container {c.name}")

    def _restarts(self, c: Container, code: int) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if c.init:
            return policy != "Never" and code != 0
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    def _termination_message(self, c: Container, code: int) -> str:
        """terminationMessagePath's content; with FallbackToLogsOnError a failure's log tail."""
        with open(os.path.join(self.dir, "termination", c.name), "rb") as f:
            message = f.read(MAX_MESSAGE_BYTES).decode(errors="replace")
        if (
            message
            or code == 0
            or c.spec.get("terminationMessagePolicy") != "FallbackToLogsOnError"
        ):
            return message
        with open(os.path.join(self.dir, f"{c.name}.log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * FALLBACK_BYTES))
            lines = f.read().splitlines(keepends=True)[-FALLBACK_LINES:]
        return b"".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")

    def _kill_all(self, grace: float) -> None:
        """SIGTERM every process group of the pod, SIGKILL what is left after `grace` seconds."""
        live = [(c, c.proc) for c in self.init + self.containers if c.proc is not None]
        for _, proc in live:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(proc.poll() is None for _, proc in live) and time.monotonic() < deadline:
            self._sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        for c, proc in live:
            _signal_group(proc.pid, signal.SIGKILL)
            self._exited(c)

    def _started_before(self, status: JSON) -> bool:
        """Whether containers of this pod were started by an earlier agent process."""
        statuses = status.get("initContainerStatuses", []) + status.get("containerStatuses", [])
        return status.get("phase") == "Running" or any(
            "running" in s.get("state", {}) or "terminated" in s.get("state", {}) for s in statuses
        )

    def _report_lost(self, status: JSON) -> None:
        """Its processes died with the earlier agent: report them lost and the pod Failed."""
        previous = {
            s["name"]: s
            for s in status.get("initContainerStatuses", []) + status.get("containerStatuses", [])
        }
        for c in self.init + self.containers:
            old = previous.get(c.name, {})
            c.restarts = old.get("restartCount", 0)
            c.container_id = old.get("containerID", "")
            c.pending = False
            c.state = (
                old["state"]
                if "terminated" in old.get("state", {})
                else {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": LOST_MESSAGE,
                        "finishedAt": now(),
                    }
                }
            )
        self.ip = status.get("podIP", "")
        self.init_done = all(c.succeeded for c in self.init)
        self.phase = "Failed"
        self._report()

    # -- API writes --------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Tell the agent when this pod's DNS visibility changed, so peers' hosts files follow."""
        state = (self.ip, self.ready, self.deleting, self.phase)
        if state != self._net_state:
            self._net_state = state
            self.node.network_changed(self.namespace)

    def _condition(self, kind: str, ok: bool, reason: str, message: str) -> JSON:
        value = "True" if ok else "False"
        if self._conditions.get(kind, ("",))[0] != value:
            self._conditions[kind] = (value, now())
        cond = {"type": kind, "status": value, "lastTransitionTime": self._conditions[kind][1]}
        if not ok and reason:
            cond |= {"reason": reason, **({"message": message} if message else {})}
        return cond

    def _status(self) -> JSON:
        terminal = self.phase in TERMINAL
        not_init = [c.name for c in self.init if not c.succeeded]
        not_ready = [c.name for c in self.containers if c.proc is None]
        ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        ready_message = (
            "" if terminal else f"containers with unready status: [{' '.join(not_ready)}]"
        )
        status: JSON = {
            "phase": self.phase,
            "startTime": self.start_time,
            "hostIP": self.node.host_ip,
            "hostIPs": [{"ip": self.node.host_ip}],
            "conditions": [
                self._condition(
                    "PodReadyToStartContainers", self.prepared and not terminal, "", ""
                ),
                self._condition(
                    "Initialized",
                    self.init_done,
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(not_init)}]",
                ),
                self._condition("ContainersReady", self.ready, ready_reason, ready_message),
                self._condition("Ready", self.ready, ready_reason, ready_message),
                self._condition("PodScheduled", True, "", ""),
            ],
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        if self.ip:
            status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
        return status

    def _report(self) -> bool:
        """PATCH pods/status when it changed (the uid makes it fail on a recreated namesake); False
        if
        the API server did not take it, so the caller retries."""
        status = self._status()
        if status == self._reported:
            return True
        body = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self.node.kube.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", body
            )
        except ApiException as e:
            if e.status not in (
                404,
                409,
            ):  # 404/409: the pod is gone or replaced; its DELETED event follows
                log.warning(
                    "pod %s/%s: status update failed (%s); will retry",
                    self.namespace,
                    self.name,
                    brief(e),
                )
                return False
        except HTTPError as e:
            log.warning(
                "pod %s/%s: status update failed (%s); will retry", self.namespace, self.name, e
            )
            return False
        self._reported = status
        return True

    def _delete(self) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.node.kube.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning(
                    "pod %s/%s: delete failed (%s); will retry", self.namespace, self.name, brief(e)
                )
                return False
        except HTTPError as e:
            log.warning("pod %s/%s: delete failed (%s); will retry", self.namespace, self.name, e)
            return False
        log.info("pod %s/%s: deleted", self.namespace, self.name)
        return True

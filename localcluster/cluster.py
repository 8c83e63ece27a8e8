"""A real Kubernetes control plane plus an S3 store on loopback, for tests and the demo.

Components (all built by scripts/install-tools.sh): etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, versitygw, and the node agent (``python -m localcluster.nodeagent``), the kubelet
stand-in that registers GPU nodes and runs bound pods as local processes.

Every component runs in its own session (process group) and is recorded in ``state.json`` with its
pid and kernel start time, so ``stop()`` works from any process (``python -m localcluster down``)
and never signals a recycled pid. Shutdown goes in reverse start order: the node agent first, so it
can stop its pods while the API server is still there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from . import certs, s3, tools

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTROLLERS = (
    "job-controller", "garbage-collector-controller", "ttl-after-finished-controller",
    "namespace-controller", "serviceaccount-controller", "serviceaccount-token-controller",
    "endpointslice-controller", "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    # binds PVCs to PVs as on a real cluster: checkpoint claims are PVCs, and the scheduler
    # waits for a pod's claims to be bound
    "persistentvolume-binder-controller",
    # the Helm chart's operator (and demo store) are Deployments: their pods come from these two
    "deployment-controller", "replicaset-controller",
    # a node whose agent stops renewing its Lease goes NotReady and gets the unreachable taints;
    # pods that do not tolerate them are evicted (the node agent renews Leases, see below)
    "node-lifecycle-controller", "taint-eviction-controller",
    # type-checks the chart's ValidatingAdmissionPolicy against the CRD into the policy's status
    "validatingadmissionpolicy-status-controller",
)
#: How long a node may miss Lease renewals before it is NotReady (production default: 50 s). The
#: node agent renews every 4 s (nodeagent.LEASE_RENEW_S), so 20 s allows 4 missed renewals on a
#: busy machine; the controller looks every NODE_MONITOR_PERIOD. While every node is NotReady at
#: once (an API server restart, the one agent stopped) the controller evicts nothing ("full
#: disruption"), as on a real cluster.
NODE_MONITOR_GRACE_PERIOD = "20s"
NODE_MONITOR_PERIOD = "2s"
STATE_FILE = "state.json"
#: Directories and files a start recreates; anything else in the state dir is left alone.
OWNED = ("pki", "etcd", "s3", "logs", "nodeagent", "kube-controller-manager", "kube-scheduler",
         "kubeconfig", "kube-controller-manager.kubeconfig", "kube-scheduler.kubeconfig", STATE_FILE)


class ClusterError(RuntimeError):
    """The local cluster could not start, or is in a state that prevents the requested action."""


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy and return that (tests use it too)."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return result


def default_state_dir() -> Path:
    """``$WANOPS_CLUSTER_DIR``, else ``<cache>/cluster``."""
    return Path(os.environ.get("WANOPS_CLUSTER_DIR") or tools.cache_root() / "cluster")


def node_agent_available() -> bool:
    """Whether ``localcluster.nodeagent`` exists (it is developed separately)."""
    return importlib.util.find_spec("localcluster.nodeagent") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """The kernel start time of a live process, or None if it is gone or a zombie.

    Detached components are reparented to PID 1, which need not reap them, so "kill -0 succeeds"
    is not proof of life; the zombie state is.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Pods run by the node agent see the host's file system through a private mount namespace in
# which their volumes are mounted at their paths; the runner pods mount an emptyDir at /tmp.
POD_SCRATCH_MOUNTS = ("/tmp",)


def check_pod_visible_host_paths() -> None:
    """Refuse to start when the pods' own volumes would hide the Python or the checkout they run.

    The node agent runs pod commands with the host's interpreter and this checkout (the "image"
    is the host); an emptyDir mounted at /tmp covers both if they live there, and every pod then
    fails with "No such file or directory". Better one clear error up front.
    """
    repo = Path(__file__).resolve().parent.parent
    for what, path in (("the Python environment", Path(sys.prefix).resolve()), ("the wanops checkout", repo)):
        for mount in POD_SCRATCH_MOUNTS:
            if path.is_relative_to(mount):
                raise ClusterError(
                    f"{what} is at {path}, under {mount}, which the runner pods mount an emptyDir over "
                    f"(the node agent runs pods with the host's files): put it outside {mount} "
                    "(e.g. clone into ~/wanops and create the venv there) and run again")


class LocalCluster:
    """Start, attach to, and stop one local cluster living in ``state_dir``.

    Use as a context manager in tests (``with LocalCluster() as c: ...``) or via ``start()`` /
    ``stop()``; ``LocalCluster.attach(dir)`` returns a handle on a cluster that another process
    started. With ``external_kubeconfig`` (a kind cluster, say) only the S3 store is started and
    the handle points at that cluster instead.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        nodes: int = 2,
        gpus_per_node: int = 8,
        node_cpu: str | None = None,
        node_memory: str | None = None,
        node_agent: bool | None = None,
        external_kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.nodes = [f"node-{i}" for i in range(nodes)]
        self.gpus_per_node = gpus_per_node
        self.node_cpu = node_cpu
        self.node_memory = node_memory
        self.external_kubeconfig = external_kubeconfig
        self.kubernetes = external_kubeconfig is None  # run our own control plane
        self.node_agent = self.kubernetes and (
            node_agent_available() if node_agent is None else node_agent)
        self.timeout = timeout
        self.timings: dict[str, float] = {}  # component -> seconds after start() when it was ready
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._state: dict = {}
        self._admin_ctx: ssl.SSLContext | None = None

    # -- public surface -------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user in ``system:masters``)."""
        return self.external_kubeconfig or self.state_dir / "kubeconfig"

    @property
    def runs_pods(self) -> bool:
        """Whether bound pods actually run (node agent, or the real kubelets of an external cluster)."""
        return self.node_agent or not self.kubernetes

    @property
    def api_server(self) -> str:
        return self._state["api_server"]

    @property
    def s3(self) -> s3.S3Credentials:
        return s3.S3Credentials(**self._state["s3"])

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint

    @property
    def s3_access_key(self) -> str:
        return self.s3.access_key

    @property
    def s3_secret_key(self) -> str:
        return self.s3.secret_key

    @classmethod
    def attach(cls, state_dir: Path | str | None = None) -> LocalCluster | None:
        """A handle on the cluster running in ``state_dir``, or None if none is fully running."""
        cluster = cls(state_dir)
        state = cluster._load()
        if not state or not cluster.is_running():
            return None
        cluster._state = state
        if state.get("external_kubeconfig"):
            cluster.external_kubeconfig = Path(state["external_kubeconfig"])
        cluster.kubernetes = cluster.external_kubeconfig is None
        cluster.node_agent = state["node_agent"]
        return cluster

    def is_running(self) -> bool:
        """True when a completed start is recorded and every recorded process is alive."""
        state = self._load()
        return bool(state.get("ready")) and all(
            _start_time(p["pid"]) == p["start_time"] for p in state["processes"])

    def env(self) -> dict[str, str]:
        """Environment for clients: KUBECONFIG and the S3 endpoint/keys (ours and the AWS names)."""
        creds = self.s3
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "WANOPS_S3_ENDPOINT": creds.endpoint,
            "WANOPS_S3_ACCESS_KEY": creds.access_key,
            "WANOPS_S3_SECRET_KEY": creds.secret_key,
            "AWS_ENDPOINT_URL": creds.endpoint,
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_REGION": creds.region,
        }

    def start(self) -> Self:
        """Start every component and return once all are ready; on failure stop what started."""
        if self.is_running():
            raise ClusterError(f"a cluster is already running in {self.state_dir}; "
                               "stop it first (python -m localcluster down)")
        self.stop()  # leftovers of a crashed or interrupted start
        if self.node_agent:
            check_pod_visible_host_paths()
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        self._state["ready"] = True
        self._state["timings"] = self.timings
        self._save()
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop all recorded processes, newest first: SIGTERM the group, SIGKILL after ``grace``."""
        state = self._load()
        for proc in reversed(state.get("processes", [])):
            pid = proc["pid"]
            if _start_time(pid) != proc["start_time"]:
                self._reap(pid)
                continue  # already gone (or the pid now belongs to someone else)
            self._signal_group(pid, signal.SIGTERM)
            if not self._wait_gone(pid, grace):
                self._signal_group(pid, signal.SIGKILL)
                self._wait_gone(pid, 5.0)
            self._signal_group(pid, signal.SIGKILL)  # stragglers left in the group
        if state:
            state["processes"] = []
            state["ready"] = False
            self._write_state(state)
        self._state = {}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- faults (tests/reliability) ---------------------------------------------------------------
    # A component is stopped and started again with its recorded command, port and data, so
    # clients see what they would see when a real one restarts: refused connections, then the
    # same endpoint again.

    def components(self) -> list[str]:
        """Names of the recorded components: etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler, versitygw, nodeagent (and agents added by ``add_node_agent``)."""
        return [p["name"] for p in self._load().get("processes", [])]

    def stop_component(self, name: str, grace: float = 15.0) -> None:
        """Stop one component (SIGTERM to its group, SIGKILL after ``grace``); a stopped node
        agent first stops its pods' processes, as a node that is switched off."""
        proc = self._record(name)
        if _start_time(proc["pid"]) != proc["start_time"]:
            return  # already stopped
        self._signal_group(proc["pid"], signal.SIGTERM)
        if not self._wait_gone(proc["pid"], grace):
            self._signal_group(proc["pid"], signal.SIGKILL)
            self._wait_gone(proc["pid"], 5.0)
        self._signal_group(proc["pid"], signal.SIGKILL)
        self._reap(proc["pid"])

    def start_component(self, name: str) -> float:
        """Start a stopped component again as it was started; returns once it is ready (the API
        server answers /readyz, the S3 server its health check, an agent's nodes are Ready), with
        the seconds that took."""
        proc = self._record(name)
        if _start_time(proc["pid"]) == proc["start_time"]:
            raise ClusterError(f"{name} is running; stop it first")
        t0 = time.monotonic()
        self._state = self._load()
        self._spawn(name, proc["argv"], proc.get("env"))
        self._wait(name, self._ready_check(name, proc["argv"]))
        return time.monotonic() - t0

    def add_node_agent(self, name: str, nodes: list[str], gpus_per_node: int = 8) -> None:
        """Another node agent process serving ``nodes`` (state under ``<state dir>/<name>``), so
        one node can be lost while the others stay; returns once its nodes are Ready. Stopped
        with the cluster, or alone with ``stop_component(name)``."""
        if name in self.components():
            self.stop_component(name)  # left running by an interrupted test: start it afresh
        self._state = self._load()
        self._spawn_node_agent(name, nodes, gpus_per_node)
        self._wait(name, lambda: self._nodes_ready(nodes))

    def remove_node_agent(self, name: str) -> None:
        """Stop an agent added by ``add_node_agent`` and forget it (the cluster counts as running
        again for ``attach``); its Node objects stay for the caller to delete."""
        self.stop_component(name)
        state = self._load()
        state["processes"] = [p for p in state.get("processes", []) if p["name"] != name]
        self._write_state(state)
        self._state = state

    def _record(self, name: str) -> dict:
        for proc in self._load().get("processes", []):
            if proc["name"] == name:
                return proc
        raise ClusterError(f"no component {name!r} in {self.state_dir}")

    def _admin_context(self) -> ssl.SSLContext:
        """TLS with the admin client certificate, also on a handle from ``attach``."""
        if self._admin_ctx is None:
            pki = self.state_dir / "pki"
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
            self._admin_ctx = ctx
        return self._admin_ctx

    def _ready_check(self, name: str, argv: list[str]) -> Callable[[], bool]:
        if name == "versitygw":
            return lambda: s3.answers(self.s3)
        if name == "kube-apiserver":
            return lambda: self._http_ok(f"{self.api_server}/readyz", self._admin_context())
        if name == "etcd":
            url = next(a for a in argv if a.startswith("http://")) + "/health"
            return lambda: self._http_ok(url)
        if "localcluster.nodeagent" in argv:
            nodes = argv[argv.index("--nodes") + 1].split(",")
            return lambda: self._nodes_ready(nodes)
        return lambda: True  # controller-manager, scheduler: running is all a test can ask

    # -- start-up ---------------------------------------------------------------------------------

    def _start(self) -> None:
        sd = self.state_dir
        sd.mkdir(parents=True, exist_ok=True)
        for name in OWNED:
            path = sd / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        (sd / "logs").mkdir()
        t0 = time.monotonic()

        access, secret = s3.generate_keys()
        s3_port = _free_port()
        self._state = {
            "external_kubeconfig": str(self.external_kubeconfig or ""), "node_agent": self.node_agent,
            "processes": [], "ready": False,
            "s3": {"endpoint": f"http://127.0.0.1:{s3_port}", "access_key": access,
                   "secret_key": secret, "region": s3.REGION},
        }
        (sd / "s3" / "data").mkdir(parents=True)
        (sd / "s3" / "meta").mkdir()
        self._spawn("versitygw", [
            str(tools.find("versitygw")), "--port", f"127.0.0.1:{s3_port}", "--region", s3.REGION,
            "--health", s3.HEALTH_PATH,
            "posix", "--sidecar", str(sd / "s3" / "meta"), str(sd / "s3" / "data"),
        ], env={"ROOT_ACCESS_KEY": access, "ROOT_SECRET_KEY": secret})

        if self.kubernetes:
            self._start_kubernetes()
        self._wait("versitygw", lambda: s3.answers(self.s3))
        self.timings["s3"] = time.monotonic() - t0

    def _start_kubernetes(self) -> None:
        sd = self.state_dir
        t = time.monotonic()
        binaries = {name: str(tools.find(name)) for name in
                    ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")}
        pki = certs.generate(sd / "pki")
        self.timings["certs"] = time.monotonic() - t

        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            binaries["etcd"], "--name", "wanops", "--data-dir", str(sd / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"wanops={peer_url}", "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self._wait("etcd", lambda: self._http_ok(f"{etcd_url}/health"))
        self.timings["etcd"] = time.monotonic() - t

        api = f"https://127.0.0.1:{api_port}"
        self._state["api_server"] = api
        self.kubeconfig.write_text(certs.kubeconfig(api, pki.ca_cert, pki.clients["admin"], "admin"))
        self.kubeconfig.chmod(0o600)
        self._spawn("kube-apiserver", [
            binaries["kube-apiserver"], f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}", "--advertise-address=127.0.0.1",
            # Endpoints may not hold loopback addresses, so the "kubernetes" Service gets none;
            # pods reach the API server through the address the node agent hands them.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--requestheader-client-ca-file={pki.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.clients['front-proxy-client'].cert}",
            f"--proxy-client-key-file={pki.clients['front-proxy-client'].key}",
            "--authorization-mode=RBAC", "--allow-privileged=true", "--profiling=false",
        ])
        admin_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        admin_ctx.load_cert_chain(pki.clients["admin"].cert, pki.clients["admin"].key)
        self._admin_ctx = admin_ctx  # for the node readiness poll
        self._wait("kube-apiserver", lambda: self._http_ok(f"{api}/readyz", admin_ctx))
        self.timings["kube-apiserver"] = time.monotonic() - t

        insecure = ssl._create_unverified_context()  # self-signed serving certs of KCM/scheduler
        health: dict[str, str] = {}
        for name, extra in (
            ("kube-controller-manager", [
                f"--controllers={','.join(CONTROLLERS)}", "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca_cert}",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE_PERIOD}",
                f"--node-monitor-period={NODE_MONITOR_PERIOD}",
            ]),
            ("kube-scheduler", []),
        ):
            kubeconfig = sd / f"{name}.kubeconfig"
            kubeconfig.write_text(certs.kubeconfig(api, pki.ca_cert, pki.clients[name], name))
            kubeconfig.chmod(0o600)
            port = _free_port()
            health[name] = f"https://127.0.0.1:{port}/healthz"
            self._spawn(name, [
                binaries[name], f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1", f"--secure-port={port}", f"--cert-dir={sd / name}",
                "--leader-elect=false", *extra,
            ])
        if self.node_agent:
            self._spawn_node_agent("nodeagent", self.nodes, self.gpus_per_node)
        for name, url in health.items():
            self._wait(name, lambda url=url: self._http_ok(url, insecure))
            self.timings[name] = time.monotonic() - t
        if self.node_agent:
            self._wait("nodeagent", self._nodes_ready)
            self.timings["nodes"] = time.monotonic() - t

    def _spawn_node_agent(self, name: str, nodes: list[str], gpus_per_node: int) -> None:
        self._spawn(name, [
            sys.executable, "-m", "localcluster.nodeagent", "--kubeconfig", str(self.kubeconfig),
            "--state-dir", str(self.state_dir / name), "--nodes", ",".join(nodes),
            "--gpus-per-node", str(gpus_per_node),
            *(["--cpu", self.node_cpu] if self.node_cpu else []),
            *(["--memory", self.node_memory] if self.node_memory else []),
        ], env={"PYTHONPATH": os.pathsep.join(
            filter(None, [str(tools.REPO_ROOT), os.environ.get("PYTHONPATH")]))})

    def _nodes_ready(self, nodes: list[str] | None = None) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_server}/api/v1/nodes",
                                        context=self._admin_context(), timeout=5) as resp:
                items = json.load(resp)["items"]
        except (OSError, urllib.error.URLError):
            return False
        ready = {n["metadata"]["name"] for n in items
                 if any(c["type"] == "Ready" and c["status"] == "True"
                        for c in n.get("status", {}).get("conditions", []))}
        return ready >= set(self.nodes if nodes is None else nodes)

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _wait(self, name: str, check: Callable[[], bool]) -> None:
        """Poll ``check`` until true; fail early with the log tail if the process died."""
        proc = next(p for p in self._state["processes"] if p["name"] == name)
        deadline = time.monotonic() + self.timeout
        while not check():
            if _start_time(proc["pid"]) != proc["start_time"]:
                raise ClusterError(f"{name} exited during start-up; last lines of {proc['log']}:\n"
                                   + _log_tail(Path(proc["log"])))
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} not ready after {self.timeout:.0f} s; last lines of "
                                   f"{proc['log']}:\n" + _log_tail(Path(proc["log"])))
            time.sleep(0.1)

    # -- processes and state ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start a component; ``env`` holds what it needs beyond this process's environment. The
        record keeps both, so ``start_component`` can start it again the same way."""
        log = self.state_dir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.state_dir,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self._children[proc.pid] = proc
        start_time = _start_time(proc.pid)
        record = {"name": name, "pid": proc.pid, "start_time": start_time, "log": str(log),
                  "argv": argv, "env": env or {}}
        processes = self._state["processes"]
        at = next((i for i, p in enumerate(processes) if p["name"] == name), None)
        if at is None:
            processes.append(record)
        else:
            processes[at] = record  # a restart keeps the component's place in the stop order
        self._save()
        if start_time is None:
            raise ClusterError(f"{name} exited immediately; see {log}:\n" + _log_tail(log))

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)  # each component leads its own session, so pgid == pid
        except ProcessLookupError:
            pass

    def _reap(self, pid: int) -> None:
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait()

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self._children.get(pid)
            if child is not None and child.poll() is not None:
                self._children.pop(pid)
                return True
            if child is None and _start_time(pid) is None:
                return True
            time.sleep(0.05)
        return False

    def _load(self) -> dict:
        try:
            return json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        self._write_state(self._state)

    def _write_state(self, state: dict) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)  # holds the S3 secret
        tmp.replace(path)

"""The wanops node agent: a TEST STAND-IN FOR THE KUBELET, and the only one in this project.

    python -m localcluster.nodeagent --kubeconfig PATH --state-dir DIR --nodes node-0,node-1 \\
        --gpus-per-node 8 [--cpu 16] [--memory 64Gi]

The local control plane (localcluster/cluster.py) is real: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler. Only the kubelet is replaced, by this process, so the
Job controller, the scheduler, garbage collection and the operator all see what they would see on a
real cluster. The operator and the runner contain no code paths for it. SIGTERM (or SIGINT) stops
it: its pods' processes first (SIGTERM, SIGKILL after --shutdown-grace seconds), the pod objects are
left as they are.

What it implements, as the kubelet does:
- Nodes: registers each --nodes name with capacity/allocatable for cpu, memory, pods,
  ephemeral-storage and `nvidia.com/gpu`, labels `kubernetes.io/hostname`, `kubernetes.io/os`,
  `kubernetes.io/arch`, `nvidia.com/gpu.present=true`, `nvidia.com/gpu.count`, a Ready condition,
  and keeps them alive by renewing their Leases in `kube-node-lease` every 4 s and the Ready
  heartbeat every 60 s; once it stops, the node-lifecycle controller marks the nodes NotReady and
  taints them unreachable. It also removes the not-ready taint admission puts on new Nodes (as the
  node-lifecycle controller would once the node is Ready), so pods schedule at once.
- Pods bound to those nodes (spec.nodeName, by the real scheduler or by hand), watched with
  list+watch that re-lists after a 410 Gone. Per pod (podrun.py): init containers in order, then the
  containers, each container's `command`+`args` run as a local process with `$(VAR)` expansion,
  `workingDir`, env (literal, `fieldRef` incl. `metadata.annotations['...']`, `configMapKeyRef`,
  `secretKeyRef`, envFrom), volumes (emptyDir, configMap, secret, downwardAPI, projected incl. the
  ServiceAccount token from the TokenRequest API, hostPath, persistentVolumeClaim) bind-mounted at
  their absolute mountPaths (also subPath/subPathExpr, readOnly) in a private mount namespace, and
  a private PID namespace (own /proc; the command is PID 2 under a minimal init), so every process
  a container starts, `setsid` children included, ends with it (podexec.py).
- Status through `pods/status`: phase, conditions (PodScheduled, PodReadyToStartContainers,
  Initialized, ContainersReady, Ready), container and init-container statuses
  (waiting/running/terminated with exit code, reason Completed/Error/StartError,
  startedAt/finishedAt, restartCount, lastState), podIP(s), hostIP(s), the termination message from
  `terminationMessagePath` (each container's own file mounted there) or, with
  `FallbackToLogsOnError`, the tail of its log.
- Restarts: `restartPolicy: Never` fully; OnFailure/Always restart with back-off 1, 2, 4, 8, 10 s.
- Deletion: on a deletionTimestamp, SIGTERM to each container's process group, SIGKILL after the
  grace period, terminal phase reported, then the object deleted with gracePeriodSeconds=0 (uid
  precondition).
- Network identity (podnet.py): each pod its own 127.77.x.y address (status.podIP) and hostname (own
  UTS namespace, HOSTNAME, spec.hostname/spec.subdomain honoured) and its own hosts file over
  /etc/hosts listing what cluster DNS would answer for
  `<hostname>.<subdomain>[.<ns>.svc.cluster.local]`: the pods behind the headless Service named like
  the subdomain (selector match; ready, or any with publishNotReadyAddresses). Files are rewritten
  in place as peers come and go.

Where it differs from the kubelet (deliberately, documented):
- No images and no container runtime: the command runs on this machine's Python and tools. The
  image's environment is stood in by the agent's PATH (with its own interpreter's folder first),
  HOME, locale, VIRTUAL_ENV and PYTHONPATH; nothing else of the agent's environment (no KUBECONFIG)
  reaches a pod. A container without `command` fails with StartError (the image's entrypoint is
  unknown).
- No cgroups: resource requests/limits are not enforced, `resourceFieldRef` is not supported, no
  OOM.
- No probes and no lifecycle hooks: a container is Ready as soon as its process runs.
- No CNI, kube-proxy or cluster DNS: traffic stays on loopback (outgoing connections come from
  127.0.0.1, not the pod's address); Service ClusterIPs do not route; KUBERNETES_SERVICE_HOST/PORT
  point at the real API server, so in-cluster clients work with the projected ServiceAccount token
  and CA. There is no network namespace per pod, so pods share the machine's port space: a
  listener on its own pod address never collides with another pod's, but one on a wildcard address
  (0.0.0.0 or ::, e.g. a default TCPStore) blocks that port for every pod and every other process
  on the machine, so concurrent jobs need distinct ports.
- No `kubectl logs`/`exec` (the agent serves no kubelet API): logs are files, see podrun.py.
  Projected tokens and ConfigMap/Secret files are written once at pod start, not refreshed.
  securityContext (users, capabilities) is ignored: processes run as the agent's user. Mount points
  for absolute mountPaths are created on the host file system (empty folders/files) and left there.
- Pods whose containers an earlier agent process started are reported Failed
  (ContainerStatusUnknown, exit code 137): their processes died with that agent.

Files: `<state-dir>/pods/<namespace>_<name>_<uid>/` per pod (container logs `<container>.log`, the
hosts file, termination messages, volumes) and `<state-dir>/claims/<namespace>/<claim>/` for PVCs
whose volume is not a hostPath/local PV. The agent itself logs to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import pwd
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .kubejson import JSON, MERGE, Kube, brief
from .podnet import AddressPool, render_hosts, write_in_place
from .podrun import NodeContext, PodWorker, now

log = logging.getLogger("nodeagent")

HOST_IP = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # the kubelet's default
# The kubelet renews every 10 s (a quarter of the duration); the agent renews more often, so the
# local controller-manager can declare a node lost after a short grace (cluster.py,
# NODE_MONITOR_GRACE_PERIOD) without a busy machine making healthy nodes flap.
LEASE_RENEW_S = 4.0
STATUS_REPORT_S = 60.0  # Ready heartbeat; the kubelet reports unchanged status every 5 min
WATCH_TIMEOUT_S = (
    300  # server-side end of each watch request; then the watch resumes at its resourceVersion
)
MAX_PODS = "110"
NODE_CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
RUNTIME_VERSION = "wanops-nodeagent://0.1.0"
IMAGE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH")
_NODE_CONDITIONS = (  # type, status, reason, message: what a healthy kubelet posts
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "node agent is posting ready status"),
)


def _micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _image_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in IMAGE_ENV_KEYS if k in os.environ}
    default_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # `python` in a pod is the agent's own interpreter, the one with the project's dependencies.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", default_path)])
    env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    return env


class NodeAgent:
    """Registers the nodes, keeps them alive and runs the pods bound to them."""

    def __init__(
        self,
        kube: Kube,
        state_dir: str,
        nodes: list[str],
        gpus_per_node: int,
        cpu: str,
        memory: str,
        shutdown_grace: float,
    ) -> None:
        self.kube = kube
        self.state_dir = state_dir
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.cpu = cpu
        self.memory = memory
        self.shutdown_grace = shutdown_grace
        pods_dir = os.path.join(state_dir, "pods")
        claims_dir = os.path.join(state_dir, "claims")
        os.makedirs(pods_dir, exist_ok=True)
        os.makedirs(claims_dir, exist_ok=True)
        api_host, api_port = kube.server.hostname or HOST_IP, str(kube.server.port or 443)
        self.context = NodeContext(
            kube=kube,
            pods_dir=pods_dir,
            claims_dir=claims_dir,
            addresses=AddressPool(),
            host_ip=HOST_IP,
            service_env={
                "KUBERNETES_SERVICE_HOST": api_host,
                "KUBERNETES_SERVICE_PORT": api_port,
                "KUBERNETES_SERVICE_PORT_HTTPS": api_port,
                "KUBERNETES_PORT": f"tcp://{api_host}:{api_port}",
            },
            image_env=_image_env(),
            network_changed=self.refresh_hosts,
        )
        self._workers: dict[str, PodWorker] = {}  # by pod uid
        self._services: dict[tuple[str, str], JSON] = {}  # by (namespace, name)
        self._lock = threading.Lock()
        self._hosts_lock = threading.Lock()
        self._stopping = False
        self._node_uids: dict[str, str] = {}
        self._kubelet_version = ""  # the API server's version, read at registration

    # -- main loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then stop every pod's processes."""
        while not stop.is_set() and not self._register_nodes():
            stop.wait(1.0)
        for target in (self._heartbeat, self._watch_services, self._watch_pods):
            threading.Thread(
                target=target, args=(stop,), name=target.__name__.strip("_"), daemon=True
            ).start()
        while not stop.wait(0.5):
            pass
        self._shutdown()

    def _shutdown(self) -> None:
        log.info("stopping: terminating the processes of %d pods", len(self._workers))
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for w in workers:
            w.stop(self.shutdown_grace)
        deadline = time.monotonic() + self.shutdown_grace + 2
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.kube.close_watches()

    # -- nodes -------------------------------------------------------------------------------------

    def _node_status(self) -> JSON:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": MAX_PODS,
            "ephemeral-storage": str(shutil.disk_usage(self.state_dir).total),
            "nvidia.com/gpu": str(self.gpus_per_node),
        }
        stamp = now()
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": m,
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
                for t, s, r, m in _NODE_CONDITIONS
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": platform.platform(),
                "containerRuntimeVersion": RUNTIME_VERSION,
                "kubeletVersion": self._kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": self._arch,
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }

    @property
    def _arch(self) -> str:
        machine = platform.machine()
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)

    def _register_nodes(self) -> bool:
        """Create (or adopt) each Node and post its status; False to retry later."""
        try:
            self._kubelet_version = self.kube.get("/version").get("gitVersion", "")
            for name in self.nodes:
                labels = {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": self._arch,
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.count": str(self.gpus_per_node),
                }
                try:
                    node = self.kube.create(
                        "/api/v1/nodes",
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "metadata": {"name": name, "labels": labels},
                        },
                    )
                except ApiException as e:
                    if e.status != 409:
                        raise
                    node = self.kube.patch(
                        f"/api/v1/nodes/{name}", {"metadata": {"labels": labels}}
                    )
                self._node_uids[name] = node["metadata"]["uid"]
                node = self.kube.patch(
                    f"/api/v1/nodes/{name}/status",
                    {
                        "status": {
                            **self._node_status(),
                            "addresses": [
                                {"type": "InternalIP", "address": HOST_IP},
                                {"type": "Hostname", "address": name},
                            ],
                        }
                    },
                )
                self._untaint(node)
                self._renew_lease(name)
        except (ApiException, HTTPError) as e:
            log.warning("node registration failed (%s); retrying", brief(e))
            return False
        log.info(
            "registered nodes %s (%d GPUs, cpu %s, memory %s each)",
            ",".join(self.nodes),
            self.gpus_per_node,
            self.cpu,
            self.memory,
        )
        return True

    def _untaint(self, node: JSON) -> None:
        """Drop the not-ready taint that admission (TaintNodesByCondition) puts on every new Node.

        On a real cluster the node-lifecycle controller removes it once the kubelet reports Ready;
        the local control plane leaves that controller out, so the agent does this one step. The
        resourceVersion makes it fail (and registration retry) rather than overwrite a concurrent
        edit.
        """
        taints = node["spec"].get("taints", [])
        kept = [t for t in taints if t["key"] not in NODE_CONDITION_TAINTS]
        if len(kept) != len(taints):
            self.kube.patch(
                f"/api/v1/nodes/{node['metadata']['name']}",
                {
                    "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                    "spec": {"taints": kept},
                },
                MERGE,
            )

    def _renew_lease(self, name: str) -> None:
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": _micro_now(),
        }
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        try:
            self.kube.patch(f"{leases}/{name}", {"spec": spec}, MERGE)
        except ApiException as e:
            if e.status != 404:
                raise
            self.kube.create(
                leases,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": name,
                        "namespace": LEASE_NAMESPACE,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": name,
                                "uid": self._node_uids[name],
                            }
                        ],
                    },
                    "spec": spec,
                },
            )

    def _heartbeat(self, stop: threading.Event) -> None:
        last_status = time.monotonic()
        while not stop.wait(LEASE_RENEW_S):
            post_status = time.monotonic() - last_status >= STATUS_REPORT_S
            try:
                for name in self.nodes:
                    self._renew_lease(name)
                    if post_status:
                        conditions = self._node_status()["conditions"]
                        self.kube.patch(
                            f"/api/v1/nodes/{name}/status", {"status": {"conditions": conditions}}
                        )
                if post_status:
                    last_status = time.monotonic()
            except (ApiException, HTTPError) as e:
                log.warning("node heartbeat failed (%s)", brief(e))

    # -- watches -----------------------------------------------------------------------------------

    def _list_and_watch(
        self,
        stop: threading.Event,
        what: str,
        path: str,
        query: dict[str, str],
        watch: Callable[[str, int], Iterator[JSON]],
        sync: Callable[[list[JSON]], None],
        handle: Callable[[str, JSON], None],
    ) -> None:
        """List, then watch from the list's resourceVersion; re-list when it expires (410 Gone)."""
        version = ""
        while not stop.is_set():
            try:
                if not version:
                    listed = self.kube.get(path, query)
                    version = listed["metadata"]["resourceVersion"]
                    sync(listed["items"])
                for event in watch(version, WATCH_TIMEOUT_S):
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        handle(event["type"], obj)
            except ApiException as e:
                if e.status == 410:
                    log.info("%s watch expired (410 Gone); re-listing", what)
                else:
                    log.warning("%s watch failed (%s); re-listing", what, brief(e))
                    stop.wait(1.0)
                version = ""
            except (HTTPError, OSError) as e:
                log.warning("%s watch interrupted (%s); resuming", what, e)
                stop.wait(1.0)

    def _watch_pods(self, stop: threading.Event) -> None:
        # One node: the kubelet's own selector; several: every bound pod, filtered here.
        selector = f"spec.nodeName={self.nodes[0]}" if len(self.nodes) == 1 else "spec.nodeName!="
        self._list_and_watch(
            stop,
            "pod",
            "/api/v1/pods",
            {"fieldSelector": selector},
            lambda version, timeout: self.kube.watch(
                "/api/v1/pods", {"fieldSelector": selector}, version, timeout
            ),
            self._sync_pods,
            self._on_pod,
        )

    def _sync_pods(self, pods: list[JSON]) -> None:
        """After a (re-)list: pods that vanished while no watch was open are gone."""
        listed = {p["metadata"]["uid"] for p in pods}
        with self._lock:
            vanished = [uid for uid in self._workers if uid not in listed]
            workers = [self._workers.pop(uid) for uid in vanished]
        for w in workers:
            w.gone()
        for pod in pods:
            self._on_pod("MODIFIED", pod)

    def _on_pod(self, kind: str, pod: JSON) -> None:
        if pod["spec"].get("nodeName") not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    del self._workers[uid]
                    worker.update(pod)
                    worker.gone()
                return
            if worker is not None:
                worker.update(pod)
                return
            if self._stopping:
                return
            worker = self._workers[uid] = PodWorker(self.context, pod)
        worker.start()

    def _watch_services(self, stop: threading.Event) -> None:
        self._list_and_watch(
            stop,
            "service",
            "/api/v1/services",
            {},
            lambda version, timeout: self.kube.watch("/api/v1/services", {}, version, timeout),
            self._sync_services,
            self._on_service,
        )

    def _sync_services(self, services: list[JSON]) -> None:
        with self._lock:
            self._services = {
                (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services
            }
            namespaces = {w.namespace for w in self._workers.values()}
        for ns in namespaces:
            self.refresh_hosts(ns)

    def _on_service(self, kind: str, svc: JSON) -> None:
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        with self._lock:
            if kind == "DELETED":
                self._services.pop(key, None)
            else:
                self._services[key] = svc
        self.refresh_hosts(key[0])

    # -- names -------------------------------------------------------------------------------------

    def refresh_hosts(self, namespace: str) -> None:
        """Rewrite the hosts file of every pod in `namespace` that has an address: its own entry
        plus
        the peers cluster DNS would resolve under its subdomain."""
        with self._lock:
            workers = [w for w in self._workers.values() if w.namespace == namespace]
            services = dict(self._services)
        with self._hosts_lock:
            for w in workers:
                own = w.host_entry()
                if own is None:
                    continue
                peers = []
                svc = services.get((namespace, w.subdomain)) if w.subdomain else None
                spec = svc["spec"] if svc else {}
                selector = spec.get("selector") or {}
                if spec.get("clusterIP") == "None" and selector:
                    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
                    for p in workers:
                        entry = p.host_entry()
                        if (
                            entry is not None
                            and p.subdomain == w.subdomain
                            and p.resolvable(publish_not_ready)
                            and all(p.labels.get(k) == v for k, v in selector.items())
                        ):
                            peers.append(entry)
                write_in_place(w.hosts_path, render_hosts(own, peers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.nodeagent",
        description="Test stand-in for the kubelet (see the module docstring).",
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument(
        "--state-dir", required=True, help="pod folders, logs and claim folders live here"
    )
    parser.add_argument("--nodes", required=True, help="comma-separated node names to register")
    parser.add_argument(
        "--gpus-per-node", type=int, default=8, help="nvidia.com/gpu capacity per node"
    )
    parser.add_argument("--cpu", default="16", help="cpu capacity per node")
    parser.add_argument("--memory", default="64Gi", help="memory capacity per node")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL for pod processes when the agent stops",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    nodes = [n for n in args.nodes.split(",") if n]
    agent = NodeAgent(
        Kube(args.kubeconfig),
        os.path.abspath(args.state_dir),
        nodes,
        args.gpus_per_node,
        args.cpu,
        args.memory,
        args.shutdown_grace,
    )
    agent.run(stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

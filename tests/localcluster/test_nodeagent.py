"""The node agent (localcluster/nodeagent.py) behaves like a kubelet toward the real control plane.

Pods are scheduled by the real kube-scheduler onto the agent's nodes; Jobs go through the real job
controller. Every check reads what a kubelet would publish (pod status, termination messages, the
Job's conditions); the few that read the agent's own files (logs) skip on an external cluster.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import wait_for
from localcluster.kubejson import Kube

pytestmark = pytest.mark.cluster

IMAGE = (
    "python:3.12-slim"  # ignored by the node agent (host Python); what a real kubelet would pull
)


@pytest.fixture
def core(kube, cluster) -> client.CoreV1Api:
    if not cluster.runs_pods:
        pytest.skip("no node agent: bound pods never run")
    return client.CoreV1Api(kube)


@pytest.fixture
def agent_dir(cluster) -> Path:
    """The node agent's --state-dir (pod folders with the container logs)."""
    if not cluster.node_agent:
        pytest.skip("checks the node agent's own files")
    return cluster.state_dir / "nodeagent"


def py(name: str, script: str, **fields: object) -> dict:
    """A container running a Python snippet."""
    return {"name": name, "image": IMAGE, "command": ["python", "-c", script], **fields}


def pod(name: str, *containers: dict, **spec: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": list(containers), **spec},
    }


def wait_phase(
    core: client.CoreV1Api, namespace: str, name: str, phase: str, timeout: float = 30
) -> client.V1Pod:
    def reached() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, namespace)
        return p if p.status.phase == phase else None

    return wait_for(reached, timeout=timeout, what=f"pod {name} phase {phase}")


def wait_ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod:
    def ready() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, namespace)
        return (
            p
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            else None
        )

    return wait_for(ready, what=f"pod {name} Ready")


def statuses(p: client.V1Pod) -> dict[str, client.V1ContainerStatus]:
    return {s.name: s for s in p.status.container_statuses}


def log_file(agent_dir: Path, p: client.V1Pod, container: str) -> Path:
    return (
        agent_dir
        / "pods"
        / f"{p.metadata.namespace}_{p.metadata.name}_{p.metadata.uid}"
        / f"{container}.log"
    )


def test_nodes_registered_with_gpus_and_renewed_leases(cluster, kube, agent_dir: Path) -> None:
    core, coordination = client.CoreV1Api(kube), client.CoordinationV1Api(kube)
    for name in cluster.nodes:
        node = core.read_node(name)
        assert node.status.allocatable["nvidia.com/gpu"] == str(cluster.gpus_per_node)
        assert node.metadata.labels["kubernetes.io/hostname"] == name
        assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        lease = coordination.read_namespaced_lease(name, "kube-node-lease")
        assert lease.spec.holder_identity == name
        assert time.time() - lease.spec.renew_time.timestamp() < 30


def test_bare_pod_succeeds_with_its_log_in_a_file(
    core, cluster, namespace: str, agent_dir: Path
) -> None:
    core.create_namespaced_pod(
        namespace,
        pod("bare", py("main", "import socket; print('hello from', socket.gethostname())")),
    )

    done = wait_phase(core, namespace, "bare", "Succeeded")
    terminated = statuses(done)["main"].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.started_at <= terminated.finished_at
    conditions = {c.type: c.status for c in done.status.conditions}
    assert conditions == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "False",
        "Initialized": "True",
        "ContainersReady": "False",
        "Ready": "False",
    }
    assert done.spec.node_name in cluster.nodes
    assert ipaddress.ip_address(done.status.pod_ip) in ipaddress.ip_network("127.0.0.0/8")
    assert done.status.pod_ip != done.status.host_ip == "127.0.0.1"
    assert log_file(agent_dir, done, "main").read_text() == "hello from bare\n"


def test_failed_pod_reports_exit_codes_and_termination_messages(core, namespace: str) -> None:
    core.create_namespaced_pod(
        namespace,
        pod(
            "fails",
            py(
                "explicit",
                "open('/dev/termination-log', 'w').write('checkpoint missing'); "
                "raise SystemExit(3)",
            ),
            py(
                "fallback",
                "import sys; print('first line', flush=True); "
                "print('last line', file=sys.stderr); sys.exit(4)",
                terminationMessagePolicy="FallbackToLogsOnError",
            ),
        ),
    )

    failed = wait_phase(core, namespace, "fails", "Failed")
    explicit, fallback = (
        statuses(failed)["explicit"].state.terminated,
        statuses(failed)["fallback"].state.terminated,
    )
    assert (explicit.exit_code, explicit.reason, explicit.message) == (
        3,
        "Error",
        "checkpoint missing",
    )
    assert (fallback.exit_code, fallback.reason) == (4, "Error")
    assert fallback.message.splitlines() == ["first line", "last line"]


ENV_SCRIPT = """
import json, os, socket, sys
names = ["POD_NAME", "POD_IP", "APP", "GREETING", "TOKEN", "MESSAGE", "CM_greeting", "HOSTNAME",
         "KUBECONFIG"]
out = {k: os.environ.get(k) for k in names}
out["argv"] = sys.argv[1:]
out["cwd"] = os.getcwd()
out["config"] = open("/etc/wanops-nodeagent-test/wanops.yaml").read()
out["labels"] = open("/etc/podinfo/labels").read()
out["seed"] = open("/workspace/seed").read()
out["own_address"] = socket.gethostbyname(socket.gethostname())
json.dump(out, open("/dev/termination-log", "w"))
"""


def test_env_and_volumes_reach_the_process(core, namespace: str) -> None:
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello", "wanops.yaml": "steps: 4\n"},
        },
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    )
    manifest = pod(
        "env",
        py(
            "main",
            ENV_SCRIPT,
            args=["$(GREETING)", "$$(GREETING)"],
            workingDir="/workspace",
            env=[
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {
                    "name": "GREETING",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
                },
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "MESSAGE", "value": "$(GREETING) from $(POD_NAME), $(UNDEFINED)"},
            ],
            envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
            volumeMounts=[
                {"name": "settings", "mountPath": "/etc/wanops-nodeagent-test", "readOnly": True},
                {"name": "podinfo", "mountPath": "/etc/podinfo"},
                {"name": "work", "mountPath": "/workspace"},
            ],
        ),
        initContainers=[
            py(
                "seed",
                "open('/workspace/seed', 'w').write('from init')",
                volumeMounts=[{"name": "work", "mountPath": "/workspace"}],
            )
        ],
        volumes=[
            {"name": "settings", "configMap": {"name": "settings"}},
            {
                "name": "podinfo",
                "downwardAPI": {
                    "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                },
            },
            {"name": "work", "emptyDir": {}},
        ],
    )
    manifest["metadata"]["labels"] = {"app": "envtest"}
    core.create_namespaced_pod(namespace, manifest)

    done = wait_phase(core, namespace, "env", "Succeeded")
    seen = json.loads(statuses(done)["main"].state.terminated.message)
    assert seen == {
        "POD_NAME": "env",
        "POD_IP": done.status.pod_ip,
        "APP": "envtest",
        "GREETING": "hello",
        "TOKEN": "s3cr3t",
        "MESSAGE": "hello from env, $(UNDEFINED)",
        "CM_greeting": "hello",
        "HOSTNAME": "env",
        "KUBECONFIG": None,
        "argv": ["hello", "$(GREETING)"],
        "cwd": "/workspace",
        "config": "steps: 4\n",
        "labels": 'app="envtest"',
        "seed": "from init",
        "own_address": done.status.pod_ip,
    }
    init = done.status.init_container_statuses[0]
    assert (init.name, init.state.terminated.exit_code, init.ready) == ("seed", 0, True)


IN_CLUSTER_SCRIPT = """
import os
from kubernetes import client, config
config.load_incluster_config()
me = client.CoreV1Api().read_namespaced_pod(os.environ["POD_NAME"], os.environ["POD_NAMESPACE"])
open("/dev/termination-log", "w").write(me.metadata.uid)
"""


def test_in_cluster_client_uses_the_pods_service_account(
    core, kube, namespace: str, agent_dir: Path
) -> None:
    """The runner's path to the API (projected token, CA, KUBERNETES_SERVICE_*), under real RBAC."""
    rbac = client.RbacAuthorizationV1Api(kube)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "read-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-pods",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
        },
    )
    core.create_namespaced_pod(
        namespace,
        pod(
            "incluster",
            py(
                "main",
                IN_CLUSTER_SCRIPT,
                terminationMessagePolicy="FallbackToLogsOnError",
                env=[
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {
                        "name": "POD_NAMESPACE",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                    },
                ],
            ),
        ),
    )

    def finished() -> client.V1Pod | None:
        p = core.read_namespaced_pod("incluster", namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None

    done = wait_for(finished, what="pod incluster to finish")
    message = statuses(done)["main"].state.terminated.message
    assert done.status.phase == "Succeeded", message
    assert message == done.metadata.uid


def test_pod_waits_for_a_missing_config_map_then_starts(core, namespace: str) -> None:
    env = [{"name": "STEPS", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "steps"}}}]
    script = "import os; open('/dev/termination-log', 'w').write(os.environ['STEPS'])"
    core.create_namespaced_pod(namespace, pod("late", py("main", script, env=env)))

    def config_error() -> client.V1ContainerStatus | None:
        p = core.read_namespaced_pod("late", namespace)
        waiting = p.status.container_statuses and p.status.container_statuses[0].state.waiting
        return waiting if waiting and waiting.reason == "CreateContainerConfigError" else None

    waiting = wait_for(config_error, what="CreateContainerConfigError")
    assert "late" in waiting.message
    assert core.read_namespaced_pod("late", namespace).status.phase == "Pending"
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "late"}, "data": {"steps": "4"}}
    )
    done = wait_phase(core, namespace, "late", "Succeeded")
    assert statuses(done)["main"].state.terminated.message == "4"


def test_on_failure_restarts_the_container(core, namespace: str) -> None:
    script = (
        "import os, sys\nif os.path.exists('/state/tried'): sys.exit(0)\n"
        "open('/state/tried', 'w').close(); sys.exit(1)"
    )
    core.create_namespaced_pod(
        namespace,
        pod(
            "retry",
            py("main", script, volumeMounts=[{"name": "state", "mountPath": "/state"}]),
            restartPolicy="OnFailure",
            volumes=[{"name": "state", "emptyDir": {}}],
        ),
    )

    done = wait_phase(core, namespace, "retry", "Succeeded", timeout=60)
    main = statuses(done)["main"]
    assert main.restart_count == 1
    assert main.last_state.terminated.exit_code == 1
    assert main.state.terminated.exit_code == 0


RANK_SCRIPT = """
import json, os, socket, time
index, me = int(os.environ["JOB_COMPLETION_INDEX"]), socket.gethostname()
if index == 0:
    server = socket.create_server((socket.gethostbyname(me), int(os.environ["PORT"])))
    server.settimeout(60)
    conn, _ = server.accept()
    peer = conn.recv(100).decode()
    conn.sendall(f"hi {peer}, {me} here".encode())
    open("/dev/termination-log", "w").write(f"got {peer}")
else:
    deadline = time.time() + 60
    while True:  # rank 0 may not be up yet: retry name resolution and connect, as a runner would
        try:
            conn = socket.create_connection(("pair-0.rdzv", int(os.environ["PORT"])), timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    conn.sendall(me.encode())
    reply = conn.recv(100).decode()
    fqdn = socket.gethostbyname(f"pair-0.rdzv.{os.environ['NAMESPACE']}.svc.cluster.local")
    seen = {"reply": reply, "fqdn": fqdn, "peer": conn.getpeername()[0]}
    json.dump(seen, open("/dev/termination-log", "w"))
"""


def _unused_port() -> int:
    """A port no one on this machine listens on now: with the node agent, pods share the host's port
    space, and a wildcard listener elsewhere (a TCPStore on [::]:29500, say) blocks that port."""
    with socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True) as probe:
        return probe.getsockname()[1]


def test_indexed_job_pods_reach_each_other_by_pod_dns_name(core, kube, namespace: str) -> None:
    port = _unused_port()
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "rdzv"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"batch.kubernetes.io/job-name": "pair"},
                "ports": [{"name": "c10d", "port": port}],
            },
        },
    )
    batch = client.BatchV1Api(kube)
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "pair"},
            "spec": {
                "completions": 2,
                "parallelism": 2,
                "completionMode": "Indexed",
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "subdomain": "rdzv",
                        "restartPolicy": "Never",
                        "containers": [
                            py(
                                "rank",
                                RANK_SCRIPT,
                                terminationMessagePolicy="FallbackToLogsOnError",
                                env=[
                                    {
                                        "name": "NAMESPACE",
                                        "valueFrom": {
                                            "fieldRef": {"fieldPath": "metadata.namespace"}
                                        },
                                    },
                                    {"name": "PORT", "value": str(port)},
                                ],
                            )
                        ],
                    }
                },
            },
        },
    )

    def complete() -> client.V1Job | None:
        job = batch.read_namespaced_job_status("pair", namespace)
        conditions = {c.type: c.status for c in job.status.conditions or []}
        if conditions.get("Failed") == "True":
            pods = core.list_namespaced_pod(namespace).items
            messages = {p.metadata.name: statuses(p)["rank"].state.terminated for p in pods}
            pytest.fail(f"job failed: {messages}")
        return job if conditions.get("Complete") == "True" else None

    job = wait_for(complete, timeout=60, what="Job pair Complete")
    assert job.status.succeeded == 2
    pods = {
        p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p
        for p in core.list_namespaced_pod(
            namespace, label_selector="batch.kubernetes.io/job-name=pair"
        ).items
    }
    assert pods["0"].spec.hostname == "pair-0" and pods["1"].spec.hostname == "pair-1"
    assert statuses(pods["0"])["rank"].state.terminated.message == "got pair-1"
    seen = json.loads(statuses(pods["1"])["rank"].state.terminated.message)
    assert seen == {
        "reply": "hi pair-1, pair-0 here",
        "fqdn": pods["0"].status.pod_ip,
        "peer": pods["0"].status.pod_ip,
    }
    assert pods["0"].status.pod_ip != pods["1"].status.pod_ip


SLEEPER = """
import signal, sys, time
# {marker}
if sys.argv[1] == "graceful":
    signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM received", flush=True), sys.exit(0)))
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_deleting_running_pods_sigterms_then_sigkills_and_removes_them(
    core, namespace: str, agent_dir: Path
) -> None:
    marker = f"nodeagent-test-{namespace}"
    script = SLEEPER.replace("{marker}", marker)
    core.create_namespaced_pod(namespace, pod("graceful", py("main", script, args=["graceful"])))
    core.create_namespaced_pod(
        namespace,
        pod("stubborn", py("main", script, args=["stubborn"]), terminationGracePeriodSeconds=1),
    )
    running = {name: wait_ready(core, namespace, name) for name in ("graceful", "stubborn")}
    for p in running.values():
        assert statuses(p)["main"].state.running is not None
        wait_for(
            lambda p=p: "ready" in log_file(agent_dir, p, "main").read_text(),
            what="signal handler set",
        )
    assert len(_processes_with(marker)) == 2

    t0 = time.monotonic()
    for name in running:
        core.delete_namespaced_pod(name, namespace)

    def gone(name: str) -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(lambda: gone("graceful") and gone("stubborn"), timeout=20, what="pod objects deleted")
    assert time.monotonic() - t0 < 10  # 1 s grace for the stubborn one, not the default 30 s
    assert (
        log_file(agent_dir, running["graceful"], "main").read_text() == "ready\nSIGTERM received\n"
    )
    assert _processes_with(marker) == []


ESCAPER = """
import os, subprocess, sys, time
# {marker}
# A child in a session of its own, as torchrun starts its workers: out of the container's process
# group, so only the pod's PID namespace can take it down with the container.
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # {marker}"],
                 start_new_session=True)
print("pid", os.getpid(), "sees", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
      flush=True)
if sys.argv[1] == "wait":
    time.sleep(600)
"""


def test_a_containers_whole_process_tree_ends_with_it(
    core, namespace: str, agent_dir: Path
) -> None:
    """Each container runs in a PID namespace of its own (its command is PID 2 under an init), so a
    `setsid` child is gone when the command exits and when the pod is deleted."""
    marker = f"nodeagent-escaper-{namespace}"
    script = ESCAPER.replace("{marker}", marker)
    core.create_namespaced_pod(namespace, pod("exits", py("main", script, args=["exit"])))
    core.create_namespaced_pod(
        namespace,
        pod("deleted", py("main", script, args=["wait"]), terminationGracePeriodSeconds=1),
    )
    done = wait_phase(core, namespace, "exits", "Succeeded")
    assert log_file(agent_dir, done, "main").read_text() == "pid 2 sees [1, 2, 3]\n"
    running = wait_ready(core, namespace, "deleted")
    wait_for(lambda: "sees" in log_file(agent_dir, running, "main").read_text(), what="child up")
    assert len(_processes_with(marker)) == 2  # the waiting command and its setsid child
    core.delete_namespaced_pod("deleted", namespace)
    wait_for(
        lambda: not _processes_with(marker), timeout=20, what="no process of either pod left"
    )


def _compact_etcd(cluster) -> None:
    """Compact etcd to its current revision, as the API server does every 5 minutes, so that older
    resourceVersions are gone. The etcd URL is read from the running API server's flags."""
    state = json.loads((cluster.state_dir / "state.json").read_text())
    apiserver = next(p for p in state["processes"] if p["name"] == "kube-apiserver")
    flags = Path(f"/proc/{apiserver['pid']}/cmdline").read_bytes().decode().split("\0")
    etcd = next(f.split("=", 1)[1] for f in flags if f.startswith("--etcd-servers="))

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{etcd}{path}", json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    revision = post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    post("/v3/kv/compaction", {"revision": revision, "physical": True})


def test_expired_watch_raises_410_so_the_agent_relists(cluster) -> None:
    """A watch from a compacted resourceVersion ends with an ERROR event (code 410); the agent's
    watch must raise it as such, since its re-list depends on it. Events are watched because the API
    server keeps no watch cache for them, so the request reaches etcd and meets the compaction."""
    if not cluster.node_agent:
        pytest.skip("exercises the node agent's own watch client against our own etcd")
    kube = Kube(str(cluster.kubeconfig))
    old = kube.get("/api/v1/events")["metadata"]["resourceVersion"]
    for touch in ("1", "2"):  # a watch from `old` starts after it: compact past old + 1
        kube.patch(
            "/api/v1/namespaces/default", {"metadata": {"annotations": {"test/touch": touch}}}
        )
    _compact_etcd(cluster)
    with pytest.raises(ApiException) as expired:
        next(kube.watch("/api/v1/events", {}, resource_version=old, timeout_s=5))
    assert expired.value.status == 410


TMP_SCRIPT = """
import os
open("/tmp/scratch", "w").write("x")
greeting = open("/etc/settings/greeting").read()
open("/dev/termination-log", "w").write(greeting + " " + str(sorted(os.listdir("/tmp"))))
"""


def test_empty_dir_over_tmp_hides_no_other_volume(core, namespace: str) -> None:
    """Read-only-root pods mount an emptyDir at /tmp; the agent's files for the other mounts (the
    ConfigMap's folder, the termination-message file) often live under the host's /tmp too, and
    must still be bound after /tmp is covered."""
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}
    )
    core.create_namespaced_pod(
        namespace,
        pod(
            "tmp",
            py(
                "main",
                TMP_SCRIPT,
                volumeMounts=[
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
                ],
            ),
            volumes=[
                {"name": "tmp", "emptyDir": {}},
                {"name": "settings", "configMap": {"name": "settings"}},
            ],
        ),
    )
    done = wait_phase(core, namespace, "tmp", "Succeeded")
    assert statuses(done)["main"].state.terminated.message == "hello ['scratch']"

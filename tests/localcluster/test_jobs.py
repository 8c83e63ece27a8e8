"""Indexed Jobs go through the real job controller and the real scheduler (and run on the agent)."""

from __future__ import annotations

import pytest
from kubernetes import client

from localcluster import wait_for

pytestmark = pytest.mark.cluster

GPU = "nvidia.com/gpu"


def indexed_job(name: str, command: list[str], **pod_spec: object) -> client.V1Job:
    """Two pods, one GPU each, indexed the way our operator creates them."""
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            completion_mode="Indexed", completions=2, parallelism=2, backoff_limit=0,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                restart_policy="Never",
                containers=[client.V1Container(
                    name="main", image="busybox:1.36", command=command,
                    resources=client.V1ResourceRequirements(limits={GPU: "1"}))],
                **pod_spec,
            )),
        ),
    )


def job_pods(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items


@pytest.fixture
def private_node(kube, namespace: str):
    """A Node only this test's pods can land on (a taint keeps everyone else off); no kubelet."""
    core = client.CoreV1Api(kube)
    name = f"sched-{namespace}"[:63]
    private = {"key": "wanops.test/private", "value": namespace, "effect": "NoSchedule"}
    core.create_node(client.V1Node(
        metadata=client.V1ObjectMeta(name=name, labels={"wanops.test/node": namespace})))
    # Admission (TaintNodesByCondition) taints every new node not-ready; the node lifecycle
    # controller lifts it only once a kubelet reports, and none will, so replace the taints.
    core.patch_node(name, {"spec": {"taints": [private]}})
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "10", GPU: "8"}
    core.patch_node_status(name, {"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "TestNode",
                        "message": "created by the test, no kubelet"}],
    }})
    yield name
    core.delete_node(name)


def test_indexed_job_pods_are_created_and_scheduled(kube, namespace: str, private_node: str) -> None:
    core = client.CoreV1Api(kube)
    client.BatchV1Api(kube).create_namespaced_job(namespace, indexed_job(
        "sched", ["true"],
        node_selector={"wanops.test/node": namespace},
        tolerations=[client.V1Toleration(key="wanops.test/private", operator="Equal",
                                         value=namespace, effect="NoSchedule")],
    ))

    def both_bound() -> list[client.V1Pod] | None:
        pods = job_pods(core, namespace, "sched")
        return pods if len(pods) == 2 and all(p.spec.node_name for p in pods) else None

    pods = wait_for(both_bound, what="job-controller to create and kube-scheduler to bind 2 pods")
    assert {p.spec.node_name for p in pods} == {private_node}
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    for pod in pods:
        scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
        assert scheduled.status == "True"


def test_indexed_job_runs_to_completion(kube, cluster, namespace: str) -> None:
    if not cluster.runs_pods:
        pytest.skip("no node agent: localcluster.nodeagent is not importable, so bound pods never run")
    batch = client.BatchV1Api(kube)
    batch.create_namespaced_job(namespace, indexed_job(
        "run", ["sh", "-c", 'test -n "$JOB_COMPLETION_INDEX" && echo "rank $JOB_COMPLETION_INDEX"']))

    def complete() -> client.V1Job | None:
        job = batch.read_namespaced_job_status("run", namespace)
        conditions = {c.type: c.status for c in job.status.conditions or []}
        assert conditions.get("Failed") != "True", f"job failed: {job.status}"
        return job if conditions.get("Complete") == "True" else None

    job = wait_for(complete, timeout=120, what="Job Complete")
    assert job.status.succeeded == 2
    assert job.status.completed_indexes == "0,1"
    nodes = {p.spec.node_name for p in job_pods(client.CoreV1Api(kube), namespace, "run")}
    assert nodes and all(nodes)

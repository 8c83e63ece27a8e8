"""The API server, its admission/validation, and the garbage collector are the real thing."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import tools, wait_for

pytestmark = pytest.mark.cluster

def test_version_is_the_pinned_release(kube, cluster) -> None:
    if not cluster.kubernetes:
        pytest.skip("external cluster: its version is not ours to pin")
    info = client.VersionApi(kube).get_code()
    assert info.git_version == tools.versions()["KUBERNETES_VERSION"]
    assert (info.major, info.minor) == ("1", "36")


def test_crd_schema_rejects_invalid_object(kube, namespace: str) -> None:
    group = f"{namespace}.test.wanops.io"  # CRDs are cluster-wide: a group of its own per test
    name = f"widgets.{group}"
    ext = client.ApiextensionsV1Api(kube)
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object", "required": ["frames"],
                    "properties": {"frames": {"type": "integer", "minimum": 1, "maximum": 121}},
                }}}},
            }],
        },
    })
    objs = client.CustomObjectsApi(kube)

    def create(obj_name: str, frames: int) -> dict:
        return objs.create_namespaced_custom_object(group, "v1", namespace, "widgets", {
            "apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": obj_name},
            "spec": {"frames": frames}})

    def create_once_served() -> dict | None:
        try:
            return create("ok", 81)
        except ApiException as exc:
            if exc.status == 404:  # CRD not Established/served yet
                return None
            raise

    try:
        assert wait_for(create_once_served, what="CRD served")["spec"]["frames"] == 81
        with pytest.raises(ApiException) as err:
            create("bad", 500)
        assert err.value.status == 422
        assert "spec.frames" in err.value.body and "121" in err.value.body
    finally:
        ext.delete_custom_resource_definition(name)


def test_deleting_owner_garbage_collects_job(kube, namespace: str) -> None:
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    batch.create_namespaced_job(namespace, client.V1Job(
        metadata=client.V1ObjectMeta(name="owned", owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)]),
        spec=client.V1JobSpec(suspend=True, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(name="c", image="busybox", command=["true"])]))),
    ))
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def job_gone() -> bool:
        try:
            batch.read_namespaced_job("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(job_gone, what="garbage collection of the owned Job")

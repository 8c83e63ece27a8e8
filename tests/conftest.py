"""Shared fixtures: one real cluster and S3 store per test session.

Where the cluster comes from, first match wins:
  * ``WANOPS_KUBECONFIG`` set: that cluster (kind, see scripts/e2e-kind.sh); S3 still starts locally.
  * ``WANOPS_CLUSTER_DIR`` points at a running ``python -m localcluster up``: reuse it (fast loop).
  * otherwise: a fresh LocalCluster in a temporary directory, stopped at the end of the session.

Tests that need it carry ``@pytest.mark.cluster``. Without the binaries they skip locally with the
reason and fail in CI (``CI=true``), so a broken install can never turn into a green run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import tools
from localcluster.cluster import LocalCluster
from localcluster.rendezvous import rendezvous_turn

LOCAL_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "versitygw")


def _unavailable_reason() -> str | None:
    needed = ("versitygw",) if os.environ.get("WANOPS_KUBECONFIG") else LOCAL_TOOLS
    absent = tools.missing(needed)
    if absent:
        return (f"local cluster binaries not built ({', '.join(absent)}); "
                "run: bash scripts/install-tools.sh")
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cluster") is None:
        return
    reason = _unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The session's cluster; ``cluster.runs_pods`` says whether bound pods actually run."""
    external = os.environ.get("WANOPS_KUBECONFIG")
    if not external and os.environ.get("WANOPS_CLUSTER_DIR"):
        running = LocalCluster.attach(os.environ["WANOPS_CLUSTER_DIR"])
        if running is not None:
            yield running
            return
    with LocalCluster(tmp_path_factory.mktemp("cluster"),
                      external_kubeconfig=Path(external) if external else None) as started:
        yield started


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster):
    """A ``kubernetes.client.ApiClient`` for the session's cluster."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace(kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default ServiceAccount exists); deleted, not awaited."""
    from kubernetes import client

    core = client.CoreV1Api(kube)
    test = request.node.name.removeprefix("test_")[:40].lower().replace("_", "-")
    name = "t-" + "".join(c for c in test if c.isalnum() or c == "-") + "-" + uuid.uuid4().hex[:6]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while not core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"serviceaccount-controller did not create {name}/default in 30 s")
        time.sleep(0.1)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def s3(cluster: LocalCluster):
    """A ``minio.Minio`` client for the session's S3 store."""
    from localcluster import s3 as s3mod

    return s3mod.client(cluster.s3)


@pytest.fixture
def bucket(s3) -> Iterator[str]:
    """A fresh, empty bucket; emptied and removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(name)
    yield name
    for obj in s3.list_objects(name, recursive=True):
        s3.remove_object(name, obj.object_name)
    s3.remove_bucket(name)


@pytest.fixture(scope="session")
def crd(kube) -> dict:
    """The committed VideoGeneration CRD, applied once and served; the CRD as read back."""
    from localcluster.crds import apply_crd

    return apply_crd(kube, Path(__file__).parents[1] / "crds" / "videogenerations.wanops.io.yaml",
                     field_manager="wanops-tests")


@pytest.fixture
def rendezvous_port() -> Iterator[None]:
    """The machine's rendezvous port for this test's runner pods (`localcluster.rendezvous`)."""
    with rendezvous_turn():
        yield

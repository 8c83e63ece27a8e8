"""Fixtures of the runner tests: the CRD on the session's API server, a tiny ti2v-5B checkpoint
and `make_run` (a VideoGeneration plus its runner config, see `runner_cases.Run`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from runner_cases import ROOT, SPEC, Run

from localcluster import wait_for
from wanspec.spec import GROUP, PLURAL, VERSION

CRD_FILE = ROOT / "crds" / f"{PLURAL}.{GROUP}.yaml"


@pytest.fixture(scope="session")
def crd(kube) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube)
    body = yaml.safe_load(CRD_FILE.read_text())
    ext.patch_custom_resource_definition(
        body["metadata"]["name"],
        body,
        field_manager="wanops-tests",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def served() -> bool:
        try:
            client.CustomObjectsApi(kube).list_cluster_custom_object(
                GROUP, VERSION, PLURAL, limit=1
            )
            return True
        except client.exceptions.ApiException:
            return False

    wait_for(served, what="VideoGeneration API served")


@pytest.fixture(scope="session")
def tiny_ti2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint("ti2v-5B", tmp_path_factory.mktemp("claim") / "Wan2.2-TI2V-5B")


@pytest.fixture
def make_run(kube, cluster, namespace, bucket, crd, tiny_ti2v, tmp_path) -> Callable[..., Run]:
    def make(
        spec: dict[str, Any] | None = None, checkpoint_every: int = 0, ckpt: Path | None = None
    ) -> Run:
        return Run(
            kube,
            cluster,
            namespace,
            bucket,
            ckpt or tiny_ti2v,
            tmp_path,
            spec or SPEC,
            checkpoint_every,
        )

    return make

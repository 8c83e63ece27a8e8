"""Fixtures of the runner tests (the CRD fixture is the session's, in tests/conftest.py): a tiny
ti2v-5B checkpoint and `make_run` (a VideoGeneration plus its runner config, see `runner_cases.Run`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from runner_cases import SPEC, Run


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

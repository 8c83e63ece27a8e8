"""The runner logs the planner's estimate (rank 0, before loading)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from runner_cases import SPEC

from runner.worker import log_memory_estimate
from wanops_operator.config import OperatorConfig
from wanops_operator.render import runner_config
from wanspec.memory import estimate_resolved
from wanspec.validate import parse


def test_logs_the_estimate_the_operator_checked(caplog: pytest.LogCaptureFixture) -> None:
    vg = {"metadata": {"name": "cats", "namespace": "ns", "uid": "u-1"}, "spec": SPEC}
    cfg = runner_config(
        vg,
        parse(SPEC),
        attempt=0,
        config=OperatorConfig(store_endpoint="http://s3", store_bucket="videos"),
    )
    layout = SimpleNamespace(device=SimpleNamespace(type="cpu"))
    with caplog.at_level(logging.INFO, logger="runner"):
        fields = log_memory_estimate(cfg, layout)
    assert fields["peakGiB"] == round(estimate_resolved(cfg.resolved).peak_gib, 2)
    (record,) = [r for r in caplog.records if r.getMessage().startswith("memory estimate")]
    assert record.memory_estimate == fields
    assert set(fields["phases"]) >= {"encode", "denoise", "decode"}

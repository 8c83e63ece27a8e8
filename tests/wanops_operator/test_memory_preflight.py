"""The operator's memory pre-flight, without a cluster: the planner's verdict as an Observation."""

from __future__ import annotations

from datetime import datetime, timezone

from wanops_operator import reasons
from wanops_operator.config import OperatorConfig
from wanops_operator.reconcile import memory_problem
from wanops_operator.status import FAILED
from wanspec.validate import parse

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)
A14B = {
    "task": "t2v-A14B",
    "size": "1280*720",
    "prompt": "cats",
    "checkpoint": {"claimName": "models", "path": "Wan2.2-T2V-A14B"},
}


def test_fitting_spec_passes():
    assert memory_problem(parse(A14B), OperatorConfig(), NOW) is None


def test_spec_gpu_memory_wins_over_the_default():
    spec = parse({**A14B, "memory": {"gpuMemoryGiB": 24}})
    obs = memory_problem(spec, OperatorConfig(default_gpu_memory_gib=80), NOW)
    assert obs is not None and obs.phase == FAILED
    assert obs.reason == reasons.INSUFFICIENT_GPU_MEMORY
    assert "24 GiB GPUs" in obs.message and "would fit: gpus=" in obs.message
    assert obs.failure["reason"] == reasons.INSUFFICIENT_GPU_MEMORY


def test_default_gpu_memory_applies_when_unset():
    assert memory_problem(parse(A14B), OperatorConfig(default_gpu_memory_gib=24), NOW) is not None
    assert memory_problem(parse(A14B), OperatorConfig(default_gpu_memory_gib=80), NOW) is None


def test_default_gpu_memory_comes_from_the_environment():
    config = OperatorConfig.from_env({"WANOPS_DEFAULT_GPU_MEMORY_GIB": "141"})
    assert config.default_gpu_memory_gib == 141.0
    assert OperatorConfig.from_env({}).default_gpu_memory_gib == 80.0

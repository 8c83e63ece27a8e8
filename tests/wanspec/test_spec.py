"""The VideoGeneration models: JSON names, strictness, documentation, status shape, examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from wanspec.spec import (
    API_VERSION,
    CONDITION_TYPES,
    Condition,
    VideoGeneration,
    VideoGenerationSpec,
    VideoGenerationStatus,
)
from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, TASKS

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
MINIMAL = {
    "task": "t2v-A14B",
    "size": "1280*720",
    "prompt": "cats",
    "checkpoint": {"claimName": "models", "path": "Wan2.2-T2V-A14B"},
}


def _models(model: type[BaseModel], seen: set[type] | None = None) -> set[type[BaseModel]]:
    """Every model reachable from `model` through its fields."""
    seen = set() if seen is None else seen
    seen.add(model)
    for field in model.model_fields.values():
        for arg in _types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                _models(arg, seen)
    return seen


def _types(annotation) -> list:
    args = getattr(annotation, "__args__", None)
    return [annotation] if not args else [t for a in args for t in _types(a)]


@pytest.mark.parametrize(
    "model", sorted(_models(VideoGeneration), key=lambda m: m.__name__), ids=lambda m: m.__name__
)
def test_every_field_is_described(model):
    for name, field in model.model_fields.items():
        if model is VideoGeneration and name in ("spec", "status"):
            continue  # described by their own models
        assert field.description and len(field.description) > 10, f"{model.__name__}.{name}"


def test_json_names_are_camel_case_and_round_trip():
    spec = VideoGenerationSpec.model_validate(
        {
            **MINIMAL,
            "negativePrompt": "blur",
            "gpusPerPod": 1,
            "memory": {"gpuMemoryGiB": 80},
            "promptExtension": {"targetLanguage": "en"},
            "ttlSecondsAfterFinished": 60,
        }
    )
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert {
        "negativePrompt",
        "gpusPerPod",
        "ttlSecondsAfterFinished",
        "startTimeoutSeconds",
    } <= set(dumped)
    assert dumped["memory"]["gpuMemoryGiB"] == 80
    assert dumped["promptExtension"]["targetLanguage"] == "en"
    assert VideoGenerationSpec.model_validate(dumped) == spec


def test_static_defaults():
    spec = VideoGenerationSpec.model_validate(MINIMAL)
    assert (spec.seed, spec.gpus, spec.suspend, spec.retry_limit) == (-1, 1, False, 2)
    assert spec.sampling.solver == "unipc" and spec.sampling.steps is None
    assert spec.frames is None  # per-task: see wanspec.validate.resolve
    assert spec.effective_negative_prompt == DEFAULT_NEGATIVE_PROMPT


def test_unknown_fields_are_refused():
    with pytest.raises(ValidationError, match="promt"):
        VideoGenerationSpec.model_validate({**MINIMAL, "promt": "typo"})


def test_spec_is_frozen():
    spec = VideoGenerationSpec.model_validate(MINIMAL)
    with pytest.raises(ValidationError):
        spec.prompt = "other"


def test_model_validator_applies_the_cross_field_rules():
    with pytest.raises(ValidationError, match=r"spec.size: 1280\*720 is not a size of ti2v-5B"):
        VideoGenerationSpec.model_validate({**MINIMAL, "task": "ti2v-5B"})


def test_task_and_size_enums_come_from_the_task_table():
    schema = VideoGenerationSpec.model_json_schema(by_alias=True)["properties"]
    assert schema["task"]["enum"] == list(TASKS)
    assert set(schema["size"]["enum"]) == {str(s) for t in TASKS.values() for s in t.sizes}


def test_quantities_accept_ints_and_strings():
    spec = VideoGenerationSpec.model_validate(
        {**MINIMAL, "placement": {"resources": {"requests": {"cpu": 16, "memory": "200Gi"}}}}
    )
    assert spec.placement.resources.requests == {"cpu": "16", "memory": "200Gi"}
    with pytest.raises(ValidationError, match="memory"):
        VideoGenerationSpec.model_validate(
            {**MINIMAL, "placement": {"resources": {"requests": {"memory": "lots"}}}}
        )


def test_status_has_the_kstatus_shape():
    status = VideoGenerationStatus.model_validate(
        {
            "phase": "Running",
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Reconciling",
                    "status": "True",
                    "reason": "Running",
                    "message": "step 3/40",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                }
            ],
            "progress": {
                "stage": "Denoising",
                "step": 3,
                "totalSteps": 40,
                "expert": "high_noise",
                "percent": 9,
                "etaSeconds": 300,
            },
            "failure": {
                "reason": "OOMKilled",
                "exitCode": 137,
                "pod": "x-0",
                "time": "2026-01-01T00:00:00Z",
            },
            "kopf": {"anything": {"goes": 1}},
        }
    )
    assert status.conditions[0].observed_generation == 1
    assert set(CONDITION_TYPES) == {"Ready", "Reconciling", "Stalled"}
    assert set(Condition.model_fields) == {
        "type",
        "status",
        "reason",
        "message",
        "last_transition_time",
        "observed_generation",
    }
    with pytest.raises(ValidationError):
        VideoGenerationStatus.model_validate({"phase": "Done"})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse_as_whole_resources(path):
    resource = VideoGeneration.model_validate(yaml.safe_load(path.read_text()))
    assert resource.api_version == API_VERSION


def test_there_is_one_example_per_task():
    tasks = {yaml.safe_load(p.read_text())["spec"]["task"] for p in EXAMPLES}
    assert tasks == set(TASKS)

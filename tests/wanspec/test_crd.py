"""The generated CRD: no drift, structural, bounded, documented, rules from the task table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from wanspec import crd
from wanspec.spec import MAX_NAME_LENGTH, VideoGenerationSpec
from wanspec.tasks import TASKS

CRD_FILE = Path(__file__).parents[2] / "crds" / "videogenerations.wanops.io.yaml"


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def schema(doc) -> dict:
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """(path, node) for node and every schema below it."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_generator():
    assert CRD_FILE.read_text() == crd.render(), (
        "crds/ is stale: run `python -m wanspec.crd > crds/videogenerations.wanops.io.yaml`"
    )


def test_generation_is_deterministic():
    assert crd.render() == crd.render()


def test_identity(doc):
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "videogenerations.wanops.io"
    assert (spec["group"], spec["scope"], spec["names"]["kind"], spec["names"]["shortNames"]) == (
        "wanops.io",
        "Namespaced",
        "VideoGeneration",
        ["vg"],
    )
    [version] = spec["versions"]
    assert (
        version["name"] == "v1alpha1"
        and version["storage"]
        and version["subresources"] == {"status": {}}
    )
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Task", "Size", "Phase", "Progress", "Age", "Output"]


def test_schema_is_structural(schema):
    for path, node in walk(schema):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert node.get("type") != "null" and "nullable" not in node, path
        if "anyOf" in node:  # only the int-or-string form is allowed
            assert node.get("x-kubernetes-int-or-string") and node["anyOf"] == [
                {"type": "integer"},
                {"type": "string"},
            ], path
        else:
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("exclusiveMinimum") in (None, True), path  # OpenAPI v3.0 boolean form


def test_every_property_is_described(schema):
    for path, node in walk(schema):
        if path.endswith(("[]", "{}")) and "properties" not in node:
            continue  # list items and map values of a scalar type are described by their field
        if path and path != ".metadata":
            assert node.get("description"), f"{path} has no description"


def test_spec_strings_lists_and_maps_are_bounded(schema):
    """Unbounded values make the API server's CEL cost estimate explode."""
    for path, node in walk(schema["properties"]["spec"], ".spec"):
        if node.get("type") == "string":
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def test_status_keeps_kopf_state_and_condition_list_map(schema):
    status = schema["properties"]["status"]["properties"]
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["conditions"]["items"]["required"] == [
        "type",
        "status",
        "reason",
        "lastTransitionTime",
    ]
    assert set(status["phase"]["enum"]) == {
        "Pending",
        "Queued",
        "Suspended",
        "Running",
        "Succeeded",
        "Failed",
    }


def test_defaults_match_the_models(schema):
    props = schema["properties"]["spec"]["properties"]
    for field in VideoGenerationSpec.model_fields.values():
        crd_default = props[field.alias].get("default")
        if field.default_factory is not None:
            assert crd_default == {}, field.alias
        elif field.default is None:
            assert crd_default is None, field.alias
        elif not field.is_required():
            assert crd_default == field.default, field.alias


def test_descriptions_carry_default_bounds_and_mutability(schema):
    props = schema["properties"]["spec"]["properties"]
    steps = props["sampling"]["properties"]["steps"]["description"]
    assert "At least 1 and at most 1000." in steps and steps.endswith(crd.IMMUTABLE)
    assert "Default: 1." in props["gpus"]["description"]
    assert crd.IMMUTABLE not in props["suspend"]["description"]
    assert "Greater than 0" in props["sampling"]["properties"]["shift"]["description"]


def test_every_spec_field_but_suspend_is_immutable(schema):
    spec = schema["properties"]["spec"]
    guarded = {r["fieldPath"] for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]}
    assert guarded == {f".{name}" for name in spec["properties"]} - {".suspend"}


def test_rules_take_their_numbers_from_the_task_table(schema):
    rules = " ".join(r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"])
    for name, task in TASKS.items():
        assert f"'{name}': {task.num_heads}" in rules
        assert f"'{name}': [{', '.join(repr(str(s)) for s in task.sizes)}]" in rules
    root = " ".join(r["rule"] for r in schema["x-kubernetes-validations"])
    assert f"size(self.metadata.name) <= {MAX_NAME_LENGTH}" in root


def test_every_rule_has_a_message(schema):
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"] and rule["rule"], path

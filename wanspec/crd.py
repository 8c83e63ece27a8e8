"""Generate the `videogenerations.wanops.io` CRD from the pydantic models, with CEL rules.

    python -m wanspec.crd > crds/videogenerations.wanops.io.yaml

The pydantic JSON schema is turned into a structural OpenAPI v3 schema (refs inlined, optional
values without a null branch, int-or-string marked, every string and list bounded so CEL cost
estimates stay small). Each spec field's description gets a generated tail with its static default,
its bounds and "Immutable after creation", so the text cannot drift from the constraints.

The CEL rules below are the API server's copy of `wanspec.validate`'s rules; numbers in them come
from `wanspec.tasks`. `tests/wanspec/test_crd_apiserver.py` checks both copies refuse the same
objects on a real API server. Output is deterministic; a test fails when the committed file differs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from wanspec.spec import (
    CONTROL_CHARACTERS,
    GPU_RESOURCE,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    VideoGenerationSpec,
    VideoGenerationStatus,
)
from wanspec.tasks import TASKS

Schema = dict[str, Any]
MUTABLE_SPEC_FIELDS = ("suspend",)
IMMUTABLE = "Immutable after creation."


# --------------------------------------------------------------------------- CEL rules


def _rule(rule: str, message: str, field_path: str | None = None, **extra: str) -> Schema:
    out: Schema = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    out.update(extra)
    return out


def _cel_map(values: dict[str, Any]) -> str:
    """A CEL map literal from task names, e.g. {'t2v-A14B': 40, ...}."""
    return (
        "{"
        + ", ".join(f"'{k}': {json.dumps(v).replace(chr(34), chr(39))}" for k, v in values.items())
        + "}"
    )


def _cel_list(names: list[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def spec_rules() -> list[Schema]:
    """Cross-field rules evaluated with `self` = spec."""
    sizes = _cel_map({n: [str(s) for s in t.sizes] for n, t in TASKS.items()})
    heads_by_task = _cel_map({n: t.num_heads for n, t in TASKS.items()})
    heads = f"{heads_by_task}[self.task]"
    needs_image = [n for n, t in TASKS.items() if t.needs_image]
    accepts_image = [n for n, t in TASKS.items() if t.accepts_image]
    moe = [n for n, t in TASKS.items() if t.is_moe]
    u, cfg = "self.?parallelism.?ulysses", "self.?parallelism.?cfgParallel"
    heads_text = "; ".join(
        f"{n}: {t.num_heads} heads, degrees {', '.join(map(str, t.ulysses_degrees()))}"
        for n, t in TASKS.items()
    )
    even_half = f"(self.gpus % 2 == 0 && {heads} % (self.gpus / 2) == 0)"
    return [
        _rule(
            f"self.size in {sizes}[self.task]",
            "spec.size is not a size of spec.task; "
            + "; ".join(f"{n}: {', '.join(map(str, t.sizes))}" for n, t in TASKS.items()),
            ".size",
        ),
        _rule(
            f"!(self.task in {_cel_list(needs_image)}) || has(self.inputImage)",
            f"spec.inputImage is required for {', '.join(needs_image)}",
            ".inputImage",
        ),
        _rule(
            f"!has(self.inputImage) || self.task in {_cel_list(accepts_image)}",
            f"spec.inputImage is only accepted by {', '.join(accepts_image)}",
            ".inputImage",
        ),
        _rule(
            "size(self.?sampling.?guideScale.orValue([0.0])) == 1 || "
            f"self.task in {_cel_list(moe)}",
            "spec.sampling.guideScale takes two values (low, high) only for the two-expert "
            f"tasks {', '.join(moe)}; give one value",
            ".sampling.guideScale",
        ),
        _rule(
            f"!{u}.hasValue() || {heads} % {u}.value() == 0",
            f"spec.parallelism.ulysses must divide the task's attention heads ({heads_text})",
            ".parallelism.ulysses",
        ),
        _rule(
            f"!{cfg}.orValue(false) || self.gpus % 2 == 0",
            "spec.parallelism.cfgParallel needs an even spec.gpus",
            ".parallelism.cfgParallel",
        ),
        _rule(
            f"!{u}.hasValue() || ({cfg}.hasValue() ? "
            f"{u}.value() * ({cfg}.value() ? 2 : 1) == self.gpus"
            f" : (self.gpus == {u}.value() || self.gpus == 2 * {u}.value()))",
            "spec.parallelism.ulysses times 2 with cfgParallel (1 without) must equal spec.gpus",
            ".parallelism.ulysses",
        ),
        _rule(
            f"{u}.hasValue() || ({cfg}.hasValue() ? "
            f"({cfg}.value() ? {even_half} : {heads} % self.gpus == 0)"
            f" : ({heads} % self.gpus == 0 || {even_half}))",
            "spec.gpus must divide the task's attention heads, or be twice a divisor (with "
            f"CFG-parallel) ({heads_text})",
            ".gpus",
        ),
        _rule(
            "!has(self.gpusPerPod) || self.gpus % self.gpusPerPod == 0",
            "spec.gpusPerPod must divide spec.gpus",
            ".gpusPerPod",
        ),
        _rule(
            "!self.?parallelism.?ditFsdp.orValue(false) || self.gpus > 1",
            "spec.parallelism.ditFsdp needs spec.gpus > 1",
            ".parallelism.ditFsdp",
        ),
        _rule(
            "!self.?parallelism.?t5Fsdp.orValue(false) || self.gpus > 1",
            "spec.parallelism.t5Fsdp needs spec.gpus > 1",
            ".parallelism.t5Fsdp",
        ),
        _rule(
            "!(self.?precision.orValue('exact') != 'exact' && self.?parallelism.?ditFsdp.orValue(false))",
            "spec.precision fp8 and fp8-full cannot be combined with spec.parallelism.ditFsdp (FP8 "
            "weights are not sharded): set ditFsdp false or precision exact",
            ".precision",
        ),
        _rule(
            "!(self.?parallelism.?t5Fsdp.orValue(false) && self.?memory.?t5Cpu.orValue(false))",
            "spec.memory.t5Cpu cannot be combined with spec.parallelism.t5Fsdp",
            ".memory.t5Cpu",
        ),
    ]


def immutability_rules(spec: Schema) -> list[Schema]:
    """Transition rules: every spec field but `suspend` keeps its value (or its absence).

    Fields that are always present (required, or defaulted by the server) compare directly; the
    others also compare presence. Optional selection (`self.?f == oldSelf.?f`) would be shorter,
    but the API server's cost estimator loses the fields' size bounds through it and refuses.
    """
    always = set(spec.get("required", [])) | {
        f for f, p in spec["properties"].items() if "default" in p
    }
    rules = []
    for f in spec["properties"]:
        if f in MUTABLE_SPEC_FIELDS:
            continue
        rule = (
            f"self.{f} == oldSelf.{f}"
            if f in always
            else f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
        )
        rules.append(
            _rule(
                rule, f"spec.{f} is immutable after creation; only spec.suspend may change", f".{f}"
            )
        )
    return rules


# Rules on one field, keyed by the JSON path of the field below spec.
FIELD_RULES: dict[str, list[Schema]] = {
    "frames": [
        # A static message: a messageExpression with string(int) has no size bound, which the
        # API server's cost estimator refuses.
        _rule("self % 4 == 1", "spec.frames must be of the form 4n+1 (…, 77, 81, 85, …, 121, …)"),
    ],
    "checkpoint.path": [
        _rule(
            "!self.split('/').exists(p, p == '..')", "spec.checkpoint.path must not contain `..`"
        ),
    ],
    **{
        field: [
            _rule(
                "!self.matches('{}')".format(CONTROL_CHARACTERS.replace("\\", "\\\\")),
                f"spec.{field} must not contain control characters (tab and line breaks are "
                "allowed); remove them",
            )
        ]
        for field in ("prompt", "negativePrompt")
    },
    "output.prefix": [
        _rule(
            "self == '' || self.endsWith('/')",
            "spec.output.prefix must be empty or end with `/`: the key is "
            "<prefix><namespace>/<name>.mp4, and without the `/` one namespace's key could be "
            "another's (prefix `te` in namespace `am` writes to `team/`)",
        ),
    ],
    "promptExtension": [
        _rule(
            "self.method != 'dashscope' || has(self.apiKeySecretRef)",
            "spec.promptExtension.apiKeySecretRef is required for method dashscope",
            ".apiKeySecretRef",
        ),
    ],
    "placement.resources.requests": [
        _rule(
            f"!('{GPU_RESOURCE}' in self)",
            f"spec.placement.resources.requests must not set {GPU_RESOURCE}: "
            "it follows spec.gpusPerPod",
        ),
    ],
    "placement.resources.limits": [
        _rule(
            f"!('{GPU_RESOURCE}' in self)",
            f"spec.placement.resources.limits must not set {GPU_RESOURCE}: "
            "it follows spec.gpusPerPod",
        ),
    ],
    "placement.tolerations[]": [
        _rule(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "toleration value must be empty with operator Exists",
            ".value",
        ),
        _rule(
            "self.operator == 'Exists' || (has(self.key) && self.key != '')",
            "a toleration with an empty key needs operator Exists",
            ".operator",
        ),
        _rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "toleration tolerationSeconds only applies with effect NoExecute",
            ".tolerationSeconds",
        ),
    ],
}

ROOT_RULES = [
    _rule(
        f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        f"metadata.name must be at most {MAX_NAME_LENGTH} characters, so derived Job and pod "
        "host names fit 63",
        reason="FieldValueInvalid",
    ),
    _rule(
        f"self.metadata.name.matches('{NAME_PATTERN}')",
        "metadata.name must be a DNS label starting with a letter (lowercase letters, digits, "
        "'-'): the headless Service is named after it",
        reason="FieldValueInvalid",
    ),
]


# ------------------------------------------------------------------------ structural schema

_DROP = {"title", "propertyNames", "additionalProperties", "$defs"}
_FIRST = ("description", "type", "format")


def _order(node: Schema) -> Schema:
    """description, type, format first, the rest in a fixed order; properties keep field order."""
    head = {k: node[k] for k in _FIRST if k in node}
    return head | {k: node[k] for k in sorted(node) if k not in head}


def structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One pydantic JSON-schema node as a Kubernetes structural schema node."""
    node = dict(node)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if node.get("default", 0) is None:
            del node["default"]
        if len(branches) != 1:
            raise ValueError(f"unsupported union in schema: {branches}")
        node = {**branches[0], **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if node.get("x-kubernetes-int-or-string"):
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out[key.replace("exclusiveM", "m")] = value
            out[key] = True
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = structural(extra, defs)
    if out.get("type") == "string" and "enum" in out and "maxLength" not in out:
        out["maxLength"] = max(len(v) for v in out["enum"])
    return _order(out)


def _model_schema(model: type) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _describe(node: Schema, immutable: bool) -> None:
    """Append default, bounds and mutability to every description below node, recursively."""
    tail = []
    if "default" in node and node["default"] not in ({}, [], ""):
        tail.append(f"Default: {json.dumps(node['default'], ensure_ascii=False)}.")
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None or high is not None:
        bound = []
        if low is not None:
            bound.append(
                ("greater than " if node.get("exclusiveMinimum") else "at least ") + str(low)
            )
        if high is not None:
            bound.append(f"at most {high}")
        tail.append(" and ".join(bound).capitalize() + ".")
    if node.get("type") == "string" and "enum" not in node and "maxLength" in node:
        tail.append(f"At most {node['maxLength']} characters.")
    if node.get("type") == "array" and "maxItems" in node:
        tail.append(f"{node.get('minItems', 0)} to {node['maxItems']} items.")
    if immutable:
        tail.append(IMMUTABLE)
    if tail:
        node["description"] = " ".join([node["description"], *tail])
    for sub in node.get("properties", {}).values():
        _describe(sub, immutable)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict) and "description" in node[key]:
            _describe(node[key], immutable)


def _at(spec: Schema, path: str) -> Schema:
    node = spec
    for part in path.split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    return node


def spec_schema() -> Schema:
    """The spec's structural schema with descriptions, CEL rules and sub-object defaults."""
    spec = _model_schema(VideoGenerationSpec)
    for field in VideoGenerationSpec.model_fields.values():
        if field.default_factory is not None:
            # Sub-objects made by a factory default to {} so the server fills in their defaults.
            spec["properties"][field.alias]["default"] = {}
    for name, prop in spec["properties"].items():
        _describe(prop, immutable=name not in MUTABLE_SPEC_FIELDS)
    for path, rules in FIELD_RULES.items():
        _at(spec, path).setdefault("x-kubernetes-validations", []).extend(rules)
    spec["x-kubernetes-validations"] = spec_rules() + immutability_rules(spec)
    return _order(spec)


def _column(name: str, kind: str, path: str, **extra: Any) -> Schema:
    return {"name": name, "type": kind, "jsonPath": path, **extra}


def crd() -> Schema:
    """The whole CustomResourceDefinition object."""
    status = _model_schema(VideoGenerationStatus)
    root: Schema = {
        "description": "VideoGeneration turns a prompt (and, for image tasks, an image) into an "
        "MP4 in object storage with Wan2.2. The spec is fixed at creation except `suspend`; "
        "progress and the result appear in status.",
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion of this object: wanops.io/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": "Kind of this object: VideoGeneration.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status,
        },
        "required": ["spec"],
        "x-kubernetes-validations": ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "wanops", "app.kubernetes.io/part-of": "wanops"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["wanops"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _column("Task", "string", ".spec.task"),
                        _column("Size", "string", ".spec.size"),
                        _column("Phase", "string", ".status.phase"),
                        _column(
                            "Progress",
                            "integer",
                            ".status.progress.percent",
                            description="Percent done",
                        ),
                        _column("Age", "date", ".metadata.creationTimestamp"),
                        _column("Output", "string", ".status.output.uri"),
                        _column("GPUs", "integer", ".spec.gpus", priority=1),
                        _column("Reason", "string", ".status.failure.reason", priority=1),
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m wanspec.crd` from wanspec/spec.py and wanspec/crd.py. Do not edit;\n"
    "# tests/wanspec/test_crd.py fails when this file differs from the generator's output.\n"
)


def render() -> str:
    """The CRD as YAML text, exactly as committed under crds/."""
    import yaml  # only the generator needs it; wanspec itself needs only pydantic

    body = yaml.safe_dump(crd(), sort_keys=False, allow_unicode=True, width=100)
    return HEADER + "---\n" + body


if __name__ == "__main__":
    sys.stdout.write(render())

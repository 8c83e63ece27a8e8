"""A small builder of VideoGeneration dicts, as the API server returns them, for operator tests."""

from __future__ import annotations

import copy
from typing import Any

from wanspec.spec import API_VERSION, KIND

SPECS: dict[str, dict[str, Any]] = {
    "t2v-A14B": {
        "task": "t2v-A14B",
        "size": "1280*720",
        "prompt": "cats",
        "checkpoint": {"claimName": "models", "path": "Wan2.2-T2V-A14B"},
    },
    "i2v-A14B": {
        "task": "i2v-A14B",
        "size": "832*480",
        "prompt": "a cat surfs",
        "inputImage": "s3://inputs/cat.jpg",
        "checkpoint": {"claimName": "models", "path": "Wan2.2-I2V-A14B"},
    },
    "ti2v-5B": {
        "task": "ti2v-5B",
        "size": "1280*704",
        "prompt": "rain",
        "checkpoint": {"claimName": "models", "path": "Wan2.2-TI2V-5B"},
    },
}


def make_vg(
    task: str = "t2v-A14B",
    *,
    name: str = "cats",
    namespace: str = "team",
    uid: str = "0b5e7a2c-0000-4000-8000-000000000001",
    generation: int = 1,
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A resource of `task` with spec fields replaced by the keyword arguments (camelCase)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "generation": generation,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if labels:
        meta["labels"] = labels
    vg = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {**copy.deepcopy(SPECS[task]), **spec},
    }
    if status is not None:
        vg["status"] = status
    return vg

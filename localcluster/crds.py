"""Install a CustomResourceDefinition and wait until its API serves requests.

Established is not enough for a client: discovery and the REST mapping catch up afterwards, so we
wait until a list of the new resource succeeds. Used by the test fixtures and the demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from localcluster.cluster import wait_for


def apply_crd(api: Any, path: Path, *, field_manager: str = "wanops", timeout: float = 30.0) -> dict:
    """Server-side apply the CRD in `path` (a `kubernetes` ApiClient) and return it as read back."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(path.read_text())
    name = body["metadata"]["name"]
    ext.patch_custom_resource_definition(
        name, body, field_manager=field_manager, force=True,
        _content_type="application/apply-patch+yaml",
    )
    spec = body["spec"]
    version = next(v["name"] for v in spec["versions"] if v.get("served", True))

    def served() -> bool:
        try:
            client.CustomObjectsApi(api).list_cluster_custom_object(
                spec["group"], version, spec["names"]["plural"], limit=1
            )
            return True
        except ApiException:
            return False

    wait_for(served, timeout=timeout, what=f"the {name} API served")
    return api.sanitize_for_serialization(ext.read_custom_resource_definition(name))

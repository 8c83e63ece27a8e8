"""Plain-JSON access to the API server for the node agent, on top of the `kubernetes` client.

The agent reads and writes pods, nodes and leases as the API server sends them (camelCase dicts),
the way the kubelet's code and the API docs name every field; the generated model classes would
rename them and reject fields they do not know. Transport, TLS and auth come from the client's
kubeconfig loader; watches use `kubernetes.watch` with `deserialize=False`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

JSON = dict[str, Any]
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class Kube:
    """A kubeconfig's API server, spoken to in JSON."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.server = urlparse(cfg.host)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30) -> JSON:
        """One call; raises ApiException (with .status) for any non-2xx answer."""
        params = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        resp = self.api.call_api(*params, _request_timeout=timeout)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            ApiException.from_response(http_resp=resp, body=data.decode(errors="replace"), data=None)
        return json.loads(data) if data else {}

    def get(self, path: str, query: dict[str, Any] | None = None) -> JSON:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> JSON | None:
        try:
            return self.get(path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def patch(self, path: str, body: JSON, content_type: str = STRATEGIC) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body)

    def watch_pods(self, field_selector: str, resource_version: str, timeout_s: int) -> Iterator[JSON]:
        """Raw watch events ({type, object}) for pods in all namespaces, ending after timeout_s."""
        return watch.Watch().stream(
            self.core.list_pod_for_all_namespaces, field_selector=field_selector,
            resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=timeout_s, _request_timeout=timeout_s + 30, deserialize=False)

    def watch_services(self, resource_version: str, timeout_s: int) -> Iterator[JSON]:
        return watch.Watch().stream(
            self.core.list_service_for_all_namespaces, resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=timeout_s, _request_timeout=timeout_s + 30, deserialize=False)

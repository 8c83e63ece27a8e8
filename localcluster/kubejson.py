"""Plain-JSON access to the API server for the node agent, on top of the `kubernetes` client.

The agent reads and writes pods, nodes and leases as the API server sends them (camelCase dicts),
the way the kubelet's code and the API docs name every field; the generated model classes would
rename them and reject fields they do not know. Transport, TLS and auth come from the client's
kubeconfig loader.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

JSON = dict[str, Any]
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def brief(error: Exception) -> str:
    """One line for a log: an ApiException's str() carries headers and body over many lines."""
    if not isinstance(error, ApiException):
        return str(error)
    try:
        message = json.loads(error.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        message = error.reason
    return f"{error.status}: {message}"


class Kube:
    """A kubeconfig's API server, spoken to in JSON."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 32  # two watches, the heartbeat and a thread per pod share it
        self.api = client.ApiClient(cfg)
        self.server = urlparse(cfg.host)
        self._watches: set[Any] = set()  # open watch responses (urllib3)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> JSON:
        """One call; raises ApiException (with .status) for any non-2xx answer."""
        params = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(*params, _request_timeout=timeout)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            ApiException.from_response(
                http_resp=resp, body=data.decode(errors="replace"), data=None
            )
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

    def watch(
        self, path: str, query: dict[str, Any], resource_version: str, timeout_s: int
    ) -> Iterator[JSON]:
        """Raw watch events ({type, object}) from resource_version on, ending after timeout_s.

        An ERROR event raises ApiException with its code (410 when the version expired). The lines
        are read here rather than through `kubernetes.watch.Watch(deserialize=False)`, which in
        client 37.0.2 looks for a `raw_object` key that only its deserializing path sets, so an
        ERROR event (the 410 a re-list must follow) becomes a KeyError.
        """
        params = self.api.param_serialize(
            "GET",
            path,
            query_params=[
                *query.items(),
                ("watch", "true"),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", timeout_s),
            ],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(*params, _request_timeout=timeout_s + 30)
        self._watches.add(resp.response)
        try:
            if resp.status != 200:
                ApiException.from_response(
                    http_resp=resp, body=resp.read().decode(errors="replace"), data=None
                )
            for line in iter_resp_lines(resp.response):
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    raise ApiException(
                        status=status.get("code", 500), reason=status.get("message", "")
                    )
                yield event
        finally:
            self._watches.discard(resp.response)
            resp.response.release_conn()

    def close_watches(self) -> None:
        """Unblock every open watch: shut its socket down, so the reading thread sees the end.

        Closing instead would wait for the SSL lock that the blocked read holds (the same reason
        `kubernetes.watch.Watch.stop` shuts the socket down first).
        """
        for resp in list(self._watches):
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

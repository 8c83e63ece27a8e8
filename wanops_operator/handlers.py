"""kopf handlers: each asks for one reconcile pass of the VideoGeneration concerned.

- The resource: created, resumed after an operator restart, or `spec.suspend` edited (the only
  mutable field).
- Its Jobs: any change (pods started, failed, completed, suspended by Kueue) maps back to the
  owner through the `wanops.io/videogeneration` annotation.
- Time: a start timeout passes without any event, so `resync_forever` re-checks every
  unfinished resource every `resync_seconds`; it also covers events a dead watch lost.

Deletion has no handler and so no finalizer: owner references let the garbage collector remove
Jobs, pods, Service and ConfigMap, and deletion works while the operator is down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kubeconfig
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from wanops_operator.config import OperatorConfig
from wanops_operator.reconcile import reconcile
from wanops_operator.render import ANNOTATION_OWNER, LABEL_MANAGED_BY, MANAGED_BY
from wanops_operator.status import TERMINAL
from wanspec.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("wanops_operator")
STALE_RESYNCS = 3  # the liveness probe fails after this many resync intervals without one


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


@functools.cache
def api() -> client.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig (`KUBECONFIG`)."""
    try:
        kubeconfig.load_incluster_config()
    except kubeconfig.ConfigException:
        kubeconfig.load_kube_config()
    return client.ApiClient()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.suspend")
def videogeneration(namespace: str, name: str, **_: Any) -> None:
    reconcile(api(), namespace, name, config=config())


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
def job(namespace: str, annotations: kopf.Annotations, **_: Any) -> None:
    """Event handlers are not retried by kopf; errors wait for the next event or resync."""
    owner = annotations.get(ANNOTATION_OWNER)
    if owner:
        _quietly(namespace, owner)


def _quietly(namespace: str, name: str) -> None:
    try:
        reconcile(api(), namespace, name, config=config())
    except (kopf.PermanentError, kopf.TemporaryError, ApiException, HTTPError) as e:
        log.warning("videogeneration %s/%s: %s", namespace, name, e)


class Resync:
    """When the resync loop last finished a round (monotonic seconds), for the liveness probe."""

    last: float = time.monotonic()


def _unfinished() -> list[tuple[str, str]]:
    custom = client.CustomObjectsApi(api())
    cfg = config()
    if cfg.namespaces:
        items = [
            vg
            for ns in cfg.namespaces
            for vg in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        ]
    else:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    return [
        (vg["metadata"]["namespace"], vg["metadata"]["name"])
        for vg in items
        if (vg.get("status") or {}).get("phase") not in TERMINAL
    ]


async def resync_forever() -> None:
    """Re-check unfinished resources periodically (start timeouts, missed events)."""
    interval = config().resync_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            keys = await asyncio.to_thread(_unfinished)
        except (ApiException, HTTPError) as e:
            log.warning("resync: cannot list videogenerations: %s", e)
            continue
        for namespace, name in keys:
            await asyncio.to_thread(_quietly, namespace, name)
        Resync.last = time.monotonic()


@kopf.on.probe(id="resync")
def resync_age(**_: Any) -> float:
    """Seconds since the last resync round; raises (liveness fails) when it has stalled."""
    age = time.monotonic() - Resync.last
    if age > STALE_RESYNCS * config().resync_seconds + 60:
        raise kopf.PermanentError(f"no resync round for {age:.0f} s")
    return round(age, 1)

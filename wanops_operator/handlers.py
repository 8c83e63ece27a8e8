"""kopf handlers: each asks for one reconcile pass of the VideoGeneration concerned.

- The resource: created, resumed after an operator restart, or `spec.suspend` edited (the only
  mutable field).
- Its Jobs: a change that can move the resource's phase (pods ready, succeeded or failed, a
  condition, suspended by Kueue) maps back to the owner through the `wanops.io/videogeneration`
  annotation. Other Job updates (the echo of our own create, start time, counters of pods not yet
  running) would only repeat the last pass, so they are skipped: under load they were most of the
  operator's API calls.
- Time: a start timeout passes without any event, so `resync_forever` re-checks every
  unfinished resource every `resync_seconds`; it also covers events a dead watch lost. Resource
  handlers (create, resume, `suspend` edits) also repair drift of ConfigMap and Service.

Several replicas (kopf peering): kopf pauses the handlers of every replica but the one with the
highest priority, and each replica draws its priority at random when it starts (with equal
priorities kopf would pause them all). The resync loop is ours, not kopf's, so it asks the peering
object itself whether this replica is the active one, by kopf's rule, and does nothing otherwise.

Deletion has no handler and so no finalizer: owner references let the garbage collector remove
Jobs, pods, Service and ConfigMap, and deletion works while the operator is down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
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
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
# Threads for passes: a pass is a chain of ~10 API calls, mostly waiting on the API server, so
# more passes in flight than cores keep it busy when its answers are slow (kopf's default: 6
# threads on 2 cores, which under load made 200 creations take minutes).
WORKERS = 16
PEERING_RECHECK_S = 1.0  # during a resync round, how often it asks again whether it may work


@functools.cache
def config() -> OperatorConfig:
    return OperatorConfig.from_env()


@functools.cache
def api() -> client.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig (`KUBECONFIG`); one connection per
    handler thread, kept (a smaller pool would open and drop a TLS connection per call)."""
    cfg = client.Configuration()
    try:
        kubeconfig.load_incluster_config(client_configuration=cfg)
    except kubeconfig.ConfigException:
        kubeconfig.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = WORKERS + 4  # the resync loop, probes
    return client.ApiClient(cfg)


@functools.cache
def identity() -> str:
    """This process in the peering: the pod name (host name), pid and a random part, so a
    restarted container is a new peer and never mistaken for its dead predecessor."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


@functools.cache
def priority() -> int:
    """This replica's peering priority, drawn once: distinct priorities let exactly one replica
    work (kopf pauses every replica when the highest priority is shared)."""
    return 1 + secrets.randbelow(2**31 - 2)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.suspend")
def videogeneration(namespace: str, name: str, **_: Any) -> None:
    reconcile(api(), namespace, name, config=config())
    _passed[(namespace, name)] = time.monotonic()


def job_mark(job: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a Job can move its resource's phase: suspension, pods ready, succeeded, failed or
    terminating, and the Job's conditions. Start time, active (created, not yet running) and
    uncounted pods cannot; time-based changes (start timeouts) are the resync loop's."""
    status = job.get("status") or {}
    conditions = tuple(
        (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []
    )
    return (
        bool((job.get("spec") or {}).get("suspend")),
        status.get("ready"),
        status.get("succeeded"),
        status.get("failed"),
        status.get("terminating"),  # a pod being deleted: maybe evicted
        conditions,
    )


_handled: dict[str, tuple[Any, ...]] = {}  # Job uid -> the mark its last successful pass saw


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
def job(
    type: str | None,  # kopf's name for the watch event's type
    namespace: str,
    annotations: kopf.Annotations,
    body: kopf.Body,
    uid: str,
    **_: Any,
) -> None:
    """Event handlers are not retried by kopf; errors wait for the next event or resync. A pass
    already made for this Job in the same state is not repeated."""
    owner = annotations.get(ANNOTATION_OWNER)
    if not owner:
        return
    if type == "ADDED" and not body.get("status"):
        return  # our own create: the pass that made it has observed it
    mark = job_mark(body)
    if type != "DELETED" and _handled.get(uid) == mark:
        return
    if _quietly(namespace, owner, repair=False):
        finished = any(
            kind in ("Complete", "Failed") and state == "True" for kind, state, _ in mark[-1]
        )
        if type == "DELETED" or finished:
            _handled.pop(uid, None)  # nothing more to save a pass for: the memo stays small
        else:
            _handled[uid] = mark


def _quietly(namespace: str, name: str, *, repair: bool = True) -> bool:
    """One pass; False (logged) when it failed."""
    try:
        reconcile(api(), namespace, name, config=config(), repair=repair)
    except (kopf.PermanentError, kopf.TemporaryError, ApiException, HTTPError) as e:
        log.warning("videogeneration %s/%s: %s", namespace, name, e)
        return False
    _passed[(namespace, name)] = time.monotonic()
    return True


# (namespace, name) -> when its last pass succeeded (monotonic), so resync skips fresh ones
_passed: dict[tuple[str, str], float] = {}


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


def leads(peering: Mapping[str, Any], me: str, my_priority: int, now: datetime) -> bool:
    """kopf's rule on one peering object: this peer works if its keep-alive is there and no other
    live peer has the same or a higher priority (kopf pauses all of equal highest priority)."""
    peers = (peering.get("status") or {}) if peering else {}
    if me not in peers:
        return False  # kopf has not announced us yet, so it has not started handling either
    for peer, info in peers.items():
        if peer == me or not isinstance(info, Mapping):
            continue
        seen = datetime.fromisoformat(info.get("lastseen") or "1970-01-01T00:00:00+00:00")
        alive = seen + timedelta(seconds=int(info.get("lifetime", 60))) > now
        if alive and int(info.get("priority", 0)) >= my_priority:
            return False
    return True


def active() -> bool:
    """Whether this replica is the one that works: always when standalone; with peering, when it
    leads every peering object it takes part in (a missing one pauses kopf, and so the loop)."""
    cfg = config()
    if not cfg.peering:
        return True
    custom = client.CustomObjectsApi(api())
    now = datetime.now(timezone.utc)
    try:
        if cfg.namespaces:
            objects = [
                custom.get_namespaced_custom_object(
                    PEERING_GROUP, PEERING_VERSION, ns, "kopfpeerings", cfg.peering
                )
                for ns in cfg.namespaces
            ]
        else:
            objects = [
                custom.get_cluster_custom_object(
                    PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", cfg.peering
                )
            ]
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return all(leads(o, identity(), priority(), now) for o in objects)


async def resync_forever() -> None:
    """Re-check unfinished resources periodically (start timeouts, missed events), while this
    replica is the active one; a paused round still counts for the liveness probe. A resource
    with a pass in the last interval is skipped, and the passes re-read, not repair: with 200
    resources waiting for GPUs, full passes every round kept the operator busy on its own."""
    interval = config().resync_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            keys = await asyncio.to_thread(_unfinished) if await asyncio.to_thread(active) else []
            for gone in _passed.keys() - set(keys):  # finished or deleted: the memo stays small
                _passed.pop(gone, None)
            checked = time.monotonic()
            for key in keys:
                if time.monotonic() - _passed.get(key, -interval) < interval:
                    continue
                if time.monotonic() - checked > PEERING_RECHECK_S:  # paused during a long round?
                    if not await asyncio.to_thread(active):
                        break
                    checked = time.monotonic()
                await asyncio.to_thread(_quietly, *key, repair=False)
        except (ApiException, HTTPError) as e:
            log.warning("resync: cannot list videogenerations: %s", e)
            continue
        Resync.last = time.monotonic()


@kopf.on.probe(id="resync")
def resync_age(**_: Any) -> float:
    """Seconds since the last resync round; raises (liveness fails) when it has stalled."""
    age = time.monotonic() - Resync.last
    if age > STALE_RESYNCS * config().resync_seconds + 60:
        raise kopf.PermanentError(f"no resync round for {age:.0f} s")
    return round(age, 1)

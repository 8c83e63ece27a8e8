"""kopf's settings, all in the one startup handler (values from `OperatorConfig.from_env`)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from wanops_operator.handlers import WORKERS, config, priority

PREFIX = "wanops.io"
CONNECT_TIMEOUT_S = 30


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Handler threads, watch timeouts, where kopf keeps its records, event posting and peering.

    - Watches end server-side after `watch_server_timeout` and are renewed; the client gives up a
      little later, so a stream that silently died (kopf#1276) is noticed instead of waiting
      forever. The resync loop covers anything missed in between.
    - kopf's progress and last-handled spec go to annotations under `wanops.io/`, so `status`
      holds only the API's documented fields.
    - kopf posts only warnings as Events; the operator posts its own Event per transition.
    - One replica runs standalone; several need `WANOPS_PEERING` (and the chart's peering
      resource), so only the highest-priority replica handles resources. Priorities are drawn at
      random per replica: kopf pauses every replica when the highest priority is shared, which
      with the default (0 for all) left a chart with `replicas: 2` doing no work at all. A dead
      replica's keep-alive counts for `WANOPS_PEERING_LIFETIME` seconds, then another takes over.
    """
    cfg = config()
    settings.execution.max_workers = WORKERS
    settings.watching.server_timeout = cfg.watch_server_timeout
    settings.watching.client_timeout = cfg.watch_server_timeout + CONNECT_TIMEOUT_S
    settings.watching.connect_timeout = CONNECT_TIMEOUT_S
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/kopf"  # none is added: no handler needs one
    settings.posting.level = logging.WARNING
    settings.peering.standalone = not cfg.peering
    if cfg.peering:
        settings.peering.name = cfg.peering
        settings.peering.mandatory = True
        settings.peering.priority = priority()
        settings.peering.lifetime = cfg.peering_lifetime

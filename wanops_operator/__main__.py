"""`python -m wanops_operator`: the operator with its settings from `WANOPS_*` variables.

Watches every namespace unless `WANOPS_NAMESPACES` lists some; standalone unless
`WANOPS_PEERING` names a kopf peering; serves /metrics on `WANOPS_METRICS_PORT` and kopf's
liveness probe at `WANOPS_LIVENESS_ENDPOINT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import kopf

from wanops_operator import handlers, metrics, settings  # noqa: F401  (registers the handlers)


async def main() -> None:
    cfg = handlers.config()
    metrics.serve(cfg.metrics_port)
    resync = asyncio.create_task(handlers.resync_forever())
    try:
        await kopf.operator(
            identity=handlers.identity(),  # the resync loop finds itself in the peering by it
            clusterwide=not cfg.namespaces,
            namespaces=cfg.namespaces,
            liveness_endpoint=cfg.liveness_endpoint or None,
        )
    finally:
        resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resync


if __name__ == "__main__":
    kopf.configure(verbose=False)
    logging.getLogger("wanops_operator").setLevel(logging.INFO)
    asyncio.run(main())

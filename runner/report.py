"""Rank 0's reports on its own VideoGeneration: `status.progress` and `status.output`.

Written through the status subresource with the pod's ServiceAccount (the chart's Role grants
`patch` on `videogenerations/status` and nothing else), as JSON merge patches that touch only
these two fields; the operator owns the rest of the status (k8s-notes §1.3). Progress is
throttled to about one patch a second, so a fast tiny model cannot flood the API server, but the
first and the last step always go out. Progress is best effort: a lost patch is logged and the
next progress event goes out whatever the throttle says, so the status catches up as soon as the
API server answers again (a restart, a network blip). The output is retried with backoff for up to
`OUTPUT_RETRY_S` (an API server restart takes seconds to tens of seconds), and not getting it into
the status fails the attempt (retriable: the retry finds the published object and reports it
without generating again). Refusals (401, 403, 404) are retried too, but only for
`REFUSAL_RETRY_S`: an API server that has just started serves requests before its RBAC and
CustomResource caches are filled, and refuses them meanwhile (measured: 403 for a ServiceAccount
allowed the patch, 0.2 s on an idle machine, longer on a loaded one); a refusal that outlasts that
is real (no permission, the resource deleted).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from runner import errors
from runner.store import Published
from wanspec.contract import ResourceRef
from wanspec.spec import GROUP, PLURAL, VERSION, OutputInfo, Progress

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0
REQUEST_TIMEOUT_S = 10.0
OUTPUT_RETRY_S = 120.0  # how long the output report is retried before the attempt fails
REFUSAL_RETRY_S = 20.0  # how long a refusal of it is taken for an API server still starting

# Share of the whole run each stage starts at (denoising fills 5 → 90 step by step), so `percent`
# moves through loading and upload too; rough, but never backwards.
STAGE_PERCENT = {
    "Loading": 0,
    "EncodingPrompt": 5,
    "Denoising": 5,
    "Decoding": 90,
    "Encoding": 95,
    "Uploading": 97,
}


class Throttle:
    """Lets an event through at most once per `interval_s`; forced events always pass."""

    def __init__(
        self, interval_s: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ):
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None

    def reset(self) -> None:
        """Let the next event through whatever the interval."""
        self._last = None

    def ready(self, force: bool = False) -> bool:
        now = self.clock()
        if force or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False


def api_client() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere (tests, a laptop): $KUBECONFIG."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config()


class StatusReporter:
    """Patches progress and output of one VideoGeneration."""

    def __init__(
        self, resource: ResourceRef, api: client.ApiClient, *, throttle: Throttle | None = None
    ) -> None:
        self.resource = resource
        self.custom = client.CustomObjectsApi(api)
        self.throttle = throttle or Throttle()
        self._started = time.monotonic()
        self._first_step: tuple[int, float] | None = None

    def _patch(self, status: dict) -> None:
        r = self.resource
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            r.namespace,
            PLURAL,
            r.name,
            {"status": status},
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def _progress(self, progress: Progress, force: bool) -> bool:
        if not self.throttle.ready(force):
            return False
        try:
            self._patch(
                {"progress": progress.model_dump(by_alias=True, exclude_none=True, mode="json")}
            )
        except (ApiException, HTTPError, OSError) as e:
            log.warning("status: progress patch failed: %s", e)
            self.throttle.reset()  # the next event goes out at once, and catches the status up
        return True

    def stage(self, stage: str, total_steps: int, step: int = 0) -> None:
        """A new stage; always sent."""
        progress = Progress(
            stage=stage, step=step, total_steps=total_steps, percent=STAGE_PERCENT[stage]
        )
        self._progress(progress, force=True)

    def step(self, step: int, total: int, expert: str | None) -> bool:
        """Denoising step `step` of `total` done; sent if the throttle allows (always the last).
        Returns whether it was sent."""
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = (step - 1, now - 1e-9)  # resumed runs start past step 0
        done, since = step - self._first_step[0], now - self._first_step[1]
        eta = int((total - step) * since / done) if done > 0 else None
        percent = (
            STAGE_PERCENT["Denoising"]
            + (STAGE_PERCENT["Decoding"] - STAGE_PERCENT["Denoising"]) * step // total
        )
        progress = Progress(
            stage="Denoising",
            step=step,
            total_steps=total,
            # the pipelines name the expert by its subfolder (`high_noise_model`), status by role
            expert=expert.removesuffix("_model") if expert else None,
            percent=percent,
            eta_seconds=eta,
        )
        return self._progress(progress, force=step in (1, total))

    def output(
        self,
        published: Published,
        total_steps: int,
        log_uri: str | None,
        retry_s: float = OUTPUT_RETRY_S,
        refusal_retry_s: float = REFUSAL_RETRY_S,
    ) -> None:
        """The finished video in `status.output` (and progress at 100 %); retried with backoff
        (0.5 s doubling to 8 s) for up to `retry_s` (refusals: `refusal_retry_s`), then a
        temporary failure."""
        status = {
            "progress": Progress(step=total_steps, total_steps=total_steps, percent=100).model_dump(
                by_alias=True, exclude_none=True
            ),
            "output": OutputInfo(
                uri=published.uri, sha256=published.sha256, bytes=published.bytes, log_uri=log_uri
            ).model_dump(by_alias=True, exclude_none=True),
        }
        start = time.monotonic()
        deadline, refusal_deadline = start + retry_s, start + min(retry_s, refusal_retry_s)
        tries = 0
        while True:
            tries += 1
            try:
                self._patch(status)
                return
            except (ApiException, HTTPError, OSError) as e:
                problem: Exception = e
                refused = isinstance(e, ApiException) and e.status in (401, 403, 404)
                delay = min(8.0, 0.5 * 2 ** (tries - 1))
                if time.monotonic() + delay > (refusal_deadline if refused else deadline):
                    break
                log.warning("status: output patch failed (%s); retry %d in %.1f s", e, tries, delay)
                time.sleep(delay)
        raise errors.temporary(
            errors.STATUS_UPDATE_FAILED,
            f"the video is at {published.uri} but status.output of {self.resource.namespace}/"
            f"{self.resource.name} could not be written after {tries} tries: {problem}; check the "
            "API server is reachable and the runner ServiceAccount may patch "
            "videogenerations/status",
        )

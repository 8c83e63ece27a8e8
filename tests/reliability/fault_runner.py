"""The runner command of the reliability tests' operator: plays a workload fault on cue, or runs
the real runner.

It keeps the runner contract (`wanspec.contract`) and uses the runner's own store and status code
(`runner.store.Store`: atomic upload through a temporary key and a server-side copy, retries with
backoff; `runner.report.StatusReporter`), so what lands in the bucket and the status is what the
real runner would leave, without torch. Words in the prompt choose what it does (`<n>`: on
attempts below n, so a retry can succeed):

    real-runner            exec `python -m runner` (the real pipeline, tiny checkpoint), with
                           `collective-timeout:<s>` as WANOPS_COLLECTIVE_TIMEOUT_S
    exit:<code>:<n>        termination message `SimulatedFault: ...`, exit <code> (42 is bad input:
                           reason ImageNotReadable, as the runner writes it)
    crash:<n>              SIGKILL itself (a segfault or the OOM killer: no message, exit 137)
    sleep:<s>:<n>          check the store, then sleep <s> seconds before publishing (a run under
                           way)
    (then)                 publish a small deterministic object under the final key and report it
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path


def cue(prompt: str, word: str, attempt: int) -> list[int] | None:
    """The numbers of `word:<a>[:<n>]` if it applies to this attempt (n defaults to all)."""
    match = re.search(rf"\b{word}:(\d+)(?::(\d+))?", prompt)
    if match is None:
        return None
    value, below = int(match.group(1)), match.group(2)
    return [value] if below is None or attempt < int(below) else None


def main() -> int:
    from runner import errors
    from runner.inputs import load_config, run_identity
    from wanspec import contract

    cfg = load_config()
    prompt, attempt = cfg.resolved.spec.prompt, cfg.attempt
    print(f"fault runner: {cfg.resource.name} attempt {attempt}, prompt {prompt!r}", flush=True)
    if "real-runner" in prompt:
        env = dict(os.environ)
        if timeout := cue(prompt, "collective-timeout", attempt):
            env["WANOPS_COLLECTIVE_TIMEOUT_S"] = str(timeout[0])
        os.execve(sys.executable, [sys.executable, "-m", "runner"], env)
    if code := cue(prompt, "exit", attempt):
        reason = contract.IMAGE_NOT_READABLE if code[0] == 42 else "SimulatedFault"
        errors.write_termination_message(
            contract.termination_message(reason, f"exit {code[0]} on attempt {attempt}")
        )
        return code[0]
    if (crash := re.search(r"\bcrash:(\d+)", prompt)) and attempt < int(crash.group(1)):
        os.kill(os.getpid(), signal.SIGKILL)

    from runner import report
    from runner.store import Store

    try:
        store = Store.from_env(cfg.output, os.environ)
        store.check()  # as the runner does first: the store answers and the bucket exists
        print("store checked", flush=True)
        if seconds := cue(prompt, "sleep", attempt):
            time.sleep(seconds[0])
        run_id = run_identity(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            video = Path(tmp, "video.mp4")
            video.write_bytes(f"fault-runner video of run {run_id}\n".encode() * 64)
            published = store.publish(video, run_id)
        if int(os.environ.get("PET_NODE_RANK", "0")) == 0:
            reporter = report.StatusReporter(cfg.resource, report.api_client())
            reporter.output(published, cfg.resolved.steps, None)
        store.discard_work(run_id)
    except errors.RunnerError as e:
        print(e, file=sys.stderr, flush=True)
        errors.write_termination_message(e.termination_message)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

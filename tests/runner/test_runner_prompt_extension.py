"""spec.promptExtension in the runner (`python -m runner` against the real API server and S3, and
the local DashScope stand-in): rank 0 extends, every rank encodes the answer, the outcome is a
structured log line; a failed extension falls back with a WARNING line; a missing key is fatal."""

from __future__ import annotations

import pytest
from runner_cases import SPEC, log_events

from runner.errors import TERMINATION_PATH_ENV
from wan_core.prompt_extend import system_prompts
from wan_core.testing.dashscope_server import DashScopeStandIn
from wanspec import contract

pytestmark = pytest.mark.cluster

KEY = "sk-runner-test"
DASHSCOPE = {"method": "dashscope", "apiKeySecretRef": {"name": "dashscope", "key": "apiKey"}}


def _extension_events(out: str) -> list[dict]:
    return [e for e in log_events(out) if "prompt_extension" in e]


def test_dashscope_extension_on_two_ranks(make_run, s3, bucket) -> None:
    run = make_run({**SPEC, "gpus": 2, "promptExtension": {**DASHSCOPE, "targetLanguage": "en"}})
    with DashScopeStandIn(api_key=KEY) as server:
        code, out = run.run(PET_NPROC_PER_NODE="2", DASH_API_KEY=KEY, DASH_API_URL=server.base_url)
    assert code == 0, out[-4000:]
    (request,) = server.generation_requests()  # rank 0 only
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json["model"] == "qwen-plus"
    assert request.json["parameters"] == {"seed": run.config.seed, "result_format": "message"}
    assert request.json["input"]["messages"] == [
        {"role": "system", "content": system_prompts.T2V_EN},  # ti2v-5B without an image
        {"role": "user", "content": SPEC["prompt"]},
    ]
    (event,) = _extension_events(out)
    assert event["level"] == "INFO" and event["rank"] == 0
    assert event["prompt_extension"] == {
        "status": "extended",
        "method": "dashscope",
        "model": "qwen-plus",
        "original_prompt": SPEC["prompt"],
        "prompt": f"EXTENDED by qwen-plus: {SPEC['prompt']}, golden hour, slow dolly-in",
        "message": "",
    }
    assert run.status()["output"]["uri"].endswith(run.config.output.key)
    names = sorted(o.object_name for o in s3.list_objects(bucket, recursive=True))
    assert names == sorted(
        [run.config.output.key, run.config.output.log_key]
    )  # prompt.json cleared
    assert b"EXTENDED by qwen-plus" in s3.get_object(bucket, run.config.output.log_key).read()


def test_dashscope_failure_falls_back_with_a_warning(make_run) -> None:
    run = make_run({**SPEC, "promptExtension": DASHSCOPE})
    with DashScopeStandIn(api_key=KEY, mode="error") as server:
        code, out = run.run(DASH_API_KEY=KEY, DASH_API_URL=server.base_url)
    assert code == 0, out[-4000:]
    assert len(server.generation_requests()) == 4  # upstream's attempts
    (event,) = _extension_events(out)
    assert event["level"] == "WARNING"
    record = event["prompt_extension"]
    assert (record["status"], record["prompt"]) == ("fallback", SPEC["prompt"])
    assert "HTTP 500 InternalError" in record["message"]
    assert run.status()["output"]["uri"].endswith(run.config.output.key)


def test_missing_dashscope_key_is_fatal(make_run, tmp_path) -> None:
    run = make_run({**SPEC, "promptExtension": DASHSCOPE})
    termination = tmp_path / "termination"
    termination.touch()
    code, out = run.run(DASH_API_KEY="", **{TERMINATION_PATH_ENV: str(termination)})
    assert code == contract.EXIT_INVALID_INPUT, out[-4000:]
    assert termination.read_text() == (
        "SecretInvalid: DASH_API_KEY is empty; put the DashScope API key in the key apiKey of Secret dashscope"
    )

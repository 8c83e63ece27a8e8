"""The bad-input catalogue: invalid and hostile VideoGenerations and inputs, each with the layer
that refuses it and what its refusal must say. `test_bad_input.py` runs every row through that
layer on the real control plane; docs/reliability.md cites `len(CASES)`.

Layers, cheapest first:
- ADMISSION: the API server refuses the object (OpenAPI schema or our CEL rules); `expect` is the
  field its message names, `text` the rule or what would be valid.
- OPERATOR: admitted, then the operator's pre-flight (`reconcile`) ends it `Failed` before any
  Job; `expect` is status.failure.reason, `text` part of the message that says what to fix.
- RUNNER: admitted and rendered, then `python -m runner`'s pre-flight (no model loaded) exits
  `EXIT_INVALID_INPUT` (the Job's pod failure policy: fail at once, no retry) with the termination
  message `<expect>: ...<text>...`, which the operator copies into status.failure.

Every admitted case carries HOSTILE_PROMPT, shell metacharacters that would create CANARY if any
layer handed the prompt to a shell; the tests check it never appears. A missing s3:// image is not
a row: tests/e2e/test_videogeneration.py runs that one through the operator and runner pods.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.runner.runner_cases import SPEC as RUNNER_SPEC
from tests.wanspec.vg_cases import spec
from wanops_operator import reasons
from wanspec import contract

ADMISSION, OPERATOR, RUNNER = "admission", "operator", "runner"

# Outside /tmp: runner pods get an emptyDir there, and a canary must land where the test looks.
CANARY = Path("/var/tmp") / f"wanops-canary-{uuid.uuid4().hex}"
HOSTILE_PROMPT = (
    f"a red fox $(touch {CANARY}) `touch {CANARY}`; touch {CANARY} | touch {CANARY} && "
    f"touch {CANARY} > {CANARY} ${{IFS}} '\" \\ \n\t in the snow"
)


@dataclass(frozen=True)
class Case:
    name: str
    layer: str
    spec: dict[str, Any]
    expect: str  # ADMISSION: the field named; OPERATOR, RUNNER: the reason
    text: str  # in the message: the rule broken or what to fix
    prepare: str = ""  # OPERATOR, RUNNER: what test_bad_input sets up first (see there)
    name_: str = field(default="vg")  # metadata.name


def _runner(**changes: Any) -> dict[str, Any]:
    """The runner tests' small ti2v-5B spec with the hostile prompt and `changes`."""
    return {**RUNNER_SPEC, "prompt": HOSTILE_PROMPT, **changes}


def _operator(**changes: Any) -> dict[str, Any]:
    return {**spec("ti2v-5B"), "prompt": HOSTILE_PROMPT, **changes}


_MiB = 1 << 20

CASES: list[Case] = [
    # ---- refused by the API server at admission
    Case("task enum, wrong case", ADMISSION, spec(task="t2v-a14b"), "spec.task",
         'supported values: "t2v-A14B", "i2v-A14B", "ti2v-5B"'),
    Case("solver enum", ADMISSION, spec(sampling__solver="euler"), "spec.sampling.solver",
         'supported values: "unipc", "dpm++"'),
    Case("size of another task", ADMISSION, spec("ti2v-5B", size="832*480"), "spec.size",
         "ti2v-5B: 704*1280, 1280*704"),
    Case("frames not 4n+1", ADMISSION, spec(frames=82), "spec.frames", "4n+1 (…, 77, 81, 85"),
    Case("absurd frames", ADMISSION, spec(frames=1_000_000), "spec.frames",
         "less than or equal to 1001"),
    Case("absurd steps", ADMISSION, spec(sampling__steps=1_000_000), "spec.sampling.steps",
         "less than or equal to 1000"),
    Case("absurd shift", ADMISSION, spec(sampling__shift=1e300), "spec.sampling.shift",
         "less than or equal to 100"),
    Case("negative guide scale", ADMISSION, spec(sampling__guideScale=[-1.0]),
         "spec.sampling.guideScale[0]", "greater than or equal to 0"),
    Case("i2v without an image", ADMISSION, spec("i2v-A14B", inputImage=None), "spec.inputImage",
         "required for i2v-A14B"),
    Case("Ulysses degree not dividing the heads", ADMISSION, spec(gpus=6, parallelism__ulysses=6),
         "spec.parallelism.ulysses", "t2v-A14B: 40 heads, degrees 1, 2, 4, 5, 8, 10, 20, 40"),
    Case("Ulysses degree not matching the GPUs", ADMISSION, spec(gpus=4, parallelism__ulysses=8),
         "spec.parallelism.ulysses", "must equal spec.gpus"),
    Case("no GPUs", ADMISSION, spec(gpus=0), "spec.gpus", "greater than or equal to 1"),
    Case("a 1 MB prompt", ADMISSION, spec(prompt="x" * _MiB), "spec.prompt",
         "may not be more than 10000"),
    Case("a 1 MB negative prompt", ADMISSION, spec(negativePrompt="x" * _MiB),
         "spec.negativePrompt", "may not be more than 10000"),
    Case("control characters in the prompt", ADMISSION, spec(prompt="a cat\x00\x1b[2J\x07"),
         "spec.prompt", "must not contain control characters (tab and line breaks are allowed)"),
    Case("image URL of a local file", ADMISSION, spec("i2v-A14B", inputImage="file:///etc/passwd"),
         "spec.inputImage", "should match '^(s3://"),
    Case("image URL over plain http (metadata service)", ADMISSION,
         spec("i2v-A14B", inputImage="http://169.254.169.254/latest/meta-data"),
         "spec.inputImage", "should match '^(s3://"),
    Case("shell in the checkpoint path", ADMISSION,
         spec(checkpoint={"claimName": "models", "path": f"$(touch {CANARY})"}),
         "spec.checkpoint.path", "should match"),
    Case("checkpoint path escaping the claim", ADMISSION,
         spec(checkpoint={"claimName": "models", "path": "../../etc"}),
         "spec.checkpoint.path", "must not contain `..`"),
    Case("shell in the claim name", ADMISSION,
         spec(checkpoint={"claimName": "models;rm -rf /", "path": "Wan2.2-T2V-A14B"}),
         "spec.checkpoint.claimName", "should match"),
    Case("shell in the bucket name", ADMISSION, spec(output={"bucket": "v`id`;ls"}),
         "spec.output.bucket", "should match"),
    Case("prefix writing into another namespace's keys", ADMISSION,
         spec(output={"bucket": "videos", "prefix": "te"}), "spec.output.prefix",
         "must be empty or end with `/`"),
    Case("seed beyond 64 bits", ADMISSION, spec(seed=2**64), "spec.seed",
         "must be of type integer"),
    Case("frames as a string", ADMISSION, spec(frames="81"), "spec.frames",
         "must be of type integer"),
    Case("unknown field (typo)", ADMISSION, spec(promt="typo"), "spec.promt",
         'unknown field "spec.promt"'),
    Case("absurd retry limit", ADMISSION, spec(retryLimit=100), "spec.retryLimit",
         "less than or equal to 9"),
    Case("DashScope without its key Secret", ADMISSION,
         spec(promptExtension={"method": "dashscope"}), "spec.promptExtension.apiKeySecretRef",
         "required for method dashscope"),
    Case("shell in the name", ADMISSION, spec(), "metadata.name", "RFC 1123",
         name_=f"a;touch {CANARY}"),
    # ---- admitted, refused by the operator's pre-flight before any Job
    Case("missing PVC", OPERATOR,
         _operator(checkpoint={"claimName": "nowhere", "path": "Wan2.2-TI2V-5B"}),
         reasons.CHECKPOINT_NOT_FOUND, "'nowhere' (spec.checkpoint.claimName) not found"),
    Case("missing store Secret", OPERATOR,
         _operator(output={"bucket": "videos", "credentialsSecretRef": {"name": "absent"}}),
         reasons.SECRET_NOT_FOUND, "Secret 'absent' (spec.output.credentialsSecretRef) not found"),
    Case("store Secret without the secret key", OPERATOR,
         _operator(output={"bucket": "videos", "credentialsSecretRef": {"name": "half"}}),
         reasons.SECRET_KEY_NOT_FOUND, f"has no key(s) {contract.SECRET_KEY_ENV}; add them",
         prepare="secret half"),
    Case("DashScope Secret without its key", OPERATOR,
         _operator(promptExtension={"method": "dashscope",
                                    "apiKeySecretRef": {"name": "dash", "key": "DASH_API_KEY"}}),
         reasons.SECRET_KEY_NOT_FOUND, "has no key(s) DASH_API_KEY; add them",
         prepare="secret dash"),
    # ---- admitted, refused by the runner's pre-flight (exit 42, never retried)
    Case("image larger than 32 MiB", RUNNER, _runner(inputImage="s3://{bucket}/inputs/huge.png"),
         contract.IMAGE_NOT_READABLE, "is larger than 32 MiB; use a JPEG or PNG",
         prepare="s3 huge.png"),
    Case("decompression bomb", RUNNER, _runner(inputImage="s3://{bucket}/inputs/bomb.png"),
         contract.IMAGE_NOT_READABLE, "pixels is more than 64000000", prepare="s3 bomb.png"),
    Case("image URL of a web page", RUNNER, _runner(inputImage="https://{https}/fox.html"),
         contract.IMAGE_NOT_READABLE, "spec.inputImage must point at a JPEG, PNG or WebP"),
    Case("image URL of 1 GiB", RUNNER, _runner(inputImage="https://{https}/huge.png"),
         contract.IMAGE_NOT_READABLE, "is larger than 32 MiB"),
    Case("image URL with an untrusted certificate", RUNNER,
         _runner(inputImage="https://{https}/fox.png"), contract.IMAGE_NOT_READABLE,
         "TLS certificate is not trusted", prepare="untrusted CA"),
    Case("checkpoint folder of another task", RUNNER,
         _runner(task="t2v-A14B", size="1280*720",
                 checkpoint={"claimName": "models", "path": "Wan2.2-T2V-A14B"}),
         contract.CHECKPOINT_INVALID, "holds a ti2v-5B checkpoint"),
    Case("corrupted (truncated) DiT shard", RUNNER, _runner(), contract.CHECKPOINT_INVALID,
         "unreadable safetensors file, truncated or corrupt?", prepare="truncated shard"),
    Case("empty key in the store Secret", RUNNER, _runner(), contract.SECRET_INVALID,
         f"lacks {contract.SECRET_KEY_ENV}; add both keys", prepare="empty secret key"),
    Case("output bucket that does not exist", RUNNER,
         _runner(output={"bucket": "no-such-bucket-{bucket}"}), "OutputBucketNotFound",
         "does not exist", prepare="missing bucket"),
]  # fmt: skip

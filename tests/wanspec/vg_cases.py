"""Shared VideoGeneration specs for the wanspec tests: one valid spec per task, a builder for
variants, and the table of invalid specs that both validate() and the API server must refuse."""

from __future__ import annotations

import copy

BASE = {
    "t2v-A14B": {
        "task": "t2v-A14B",
        "size": "1280*720",
        "prompt": "cats",
        "checkpoint": {"claimName": "models", "path": "Wan2.2-T2V-A14B"},
    },
    "i2v-A14B": {
        "task": "i2v-A14B",
        "size": "832*480",
        "prompt": "a cat surfs",
        "inputImage": "s3://inputs/cat.jpg",
        "checkpoint": {"claimName": "models", "path": "Wan2.2-I2V-A14B"},
    },
    "ti2v-5B": {
        "task": "ti2v-5B",
        "size": "1280*704",
        "prompt": "rain",
        "checkpoint": {"claimName": "models", "path": "Wan2.2-TI2V-5B"},
    },
}


def spec(base: str = "t2v-A14B", /, **changes) -> dict:
    """A valid spec of task `base` with changes, nested by '__' (sampling__steps); None deletes."""
    out = copy.deepcopy(BASE[base])
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out


# (id, spec, expected path, text in the message or valid part)
INVALID = [
    ("unknown task", spec(task="s2v-14B"), "spec.task", "t2v-A14B"),
    ("size of another task", spec("ti2v-5B", size="1280*720"), "spec.size", "1280*704"),
    ("size nobody has", spec(size="1920*1080"), "spec.size", "1280*720"),
    ("frames not 4n+1", spec(frames=80), "spec.frames", "77 or 81"),
    ("frames zero", spec(frames=0), "spec.frames", "greater than or equal to 1"),
    ("frames absurd", spec(frames=100001), "spec.frames", "less than or equal to 1001"),
    (
        "i2v without image",
        spec("i2v-A14B", inputImage=None),
        "spec.inputImage",
        "needs an input image",
    ),
    ("t2v with image", spec(inputImage="https://x.org/a.png"), "spec.inputImage", "ti2v-5B"),
    (
        "image scheme",
        spec("i2v-A14B", inputImage="http://x.org/a.png"),
        "spec.inputImage",
        "pattern",
    ),
    (
        "image s3 without key",
        spec("i2v-A14B", inputImage="s3://bucket"),
        "spec.inputImage",
        "pattern",
    ),
    ("empty prompt", spec(prompt=""), "spec.prompt", "at least 1"),
    ("control characters", spec(prompt="cats\x1b[2J\x00"), "spec.prompt", "control characters"),
    (
        "control characters in the negative prompt",
        spec(negativePrompt="blur\x07"),
        "spec.negativePrompt",
        "control characters",
    ),
    (
        "prefix without a slash",
        spec(output={"bucket": "videos", "prefix": "te"}),
        "spec.output.prefix",
        "te/",
    ),
    ("prompt too long", spec(prompt="x" * 10_001), "spec.prompt", "at most 10000"),
    ("steps zero", spec(sampling__steps=0), "spec.sampling.steps", "greater than or equal to 1"),
    ("steps huge", spec(sampling__steps=1001), "spec.sampling.steps", "1000"),
    ("shift zero", spec(sampling__shift=0), "spec.sampling.shift", "greater than 0"),
    ("solver", spec(sampling__solver="euler"), "spec.sampling.solver", "'unipc' or 'dpm++'"),
    (
        "two guide scales for 5B",
        spec("ti2v-5B", sampling__guideScale=[3.0, 4.0]),
        "spec.sampling.guideScale",
        "one guide scale",
    ),
    (
        "three guide scales",
        spec(sampling__guideScale=[1.0, 2.0, 3.0]),
        "spec.sampling.guideScale",
        "at most 2",
    ),
    (
        "ulysses not dividing heads",
        spec(gpus=3, parallelism__ulysses=3),
        "spec.parallelism.ulysses",
        "1, 2, 4, 5, 8, 10, 20, 40",
    ),
    (
        "ulysses not dividing 5B heads",
        spec("ti2v-5B", gpus=5, parallelism__ulysses=5),
        "spec.parallelism.ulysses",
        "1, 2, 3, 4, 6, 8, 12, 24",
    ),
    (
        "ulysses not matching gpus",
        spec(gpus=8, parallelism__ulysses=2),
        "spec.parallelism.ulysses",
        "does not equal gpus 8",
    ),
    (
        "cfg with odd gpus",
        spec(gpus=5, parallelism__cfgParallel=True),
        "spec.parallelism.cfgParallel",
        "even",
    ),
    ("gpus without a layout", spec(gpus=3), "spec.gpus", "1, 2, 4, 5, 8, 10, 16, 20, 40, 80"),
    (
        "gpus not dividing 5B heads",
        spec("ti2v-5B", gpus=5),
        "spec.gpus",
        "1, 2, 3, 4, 6, 8, 12, 16, 24, 48",
    ),
    ("gpusPerPod not dividing", spec(gpus=16, gpusPerPod=3), "spec.gpusPerPod", "1, 2, 4, 8, 16"),
    ("too many gpus", spec(gpus=81), "spec.gpus", "80"),
    ("ditFsdp on one gpu", spec(parallelism__ditFsdp=True), "spec.parallelism.ditFsdp", "gpus > 1"),
    ("t5Fsdp on one gpu", spec(parallelism__t5Fsdp=True), "spec.parallelism.t5Fsdp", "gpus > 1"),
    ("fp8 with ditFsdp", spec(gpus=2, precision="fp8", parallelism__ditFsdp=True), "spec.precision", "ditFsdp"),
    ("fp8-full with ditFsdp", spec(gpus=2, precision="fp8-full", parallelism__ditFsdp=True), "spec.precision", "ditFsdp"),
    ("unknown precision", spec(precision="int4"), "spec.precision", "exact"),
    (
        "t5Fsdp with t5Cpu",
        spec(gpus=2, parallelism__t5Fsdp=True, memory__t5Cpu=True),
        "spec.memory.t5Cpu",
        "t5Fsdp",
    ),
    (
        "dashscope without key",
        spec(promptExtension={"method": "dashscope"}),
        "spec.promptExtension.apiKeySecretRef",
        "DASH_API_KEY",
    ),
    (
        "extension language",
        spec(promptExtension={"targetLanguage": "fr"}),
        "spec.promptExtension.targetLanguage",
        "'zh' or 'en'",
    ),
    (
        "checkpoint path escapes",
        spec(checkpoint={"claimName": "m", "path": "a/../b"}),
        "spec.checkpoint.path",
        "`..`",
    ),
    (
        "checkpoint path absolute",
        spec(checkpoint={"claimName": "m", "path": "/models"}),
        "spec.checkpoint.path",
        "pattern",
    ),
    ("checkpoint missing", spec(checkpoint=None), "spec.checkpoint", "required"),
    (
        "claim name",
        spec(checkpoint={"claimName": "Models!", "path": "x"}),
        "spec.checkpoint.claimName",
        "pattern",
    ),
    ("bucket name", spec(output={"bucket": "UPPER"}), "spec.output.bucket", "pattern"),
    (
        "gpu in resources",
        spec(placement={"resources": {"limits": {"nvidia.com/gpu": 8}}}),
        "spec.placement.resources.limits",
        "gpusPerPod",
    ),
    (
        "bad quantity",
        spec(placement={"resources": {"requests": {"memory": "lots"}}}),
        "spec.placement.resources.requests.memory",
        "pattern",
    ),
    (
        "toleration value with Exists",
        spec(placement={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.placement.tolerations[0].value",
        "Exists",
    ),
    (
        "toleration effect",
        spec(placement={"tolerations": [{"key": "k", "effect": "Never"}]}),
        "spec.placement.tolerations[0].effect",
        "NoSchedule",
    ),
    ("seed below -1", spec(seed=-2), "spec.seed", "-1"),
    ("retry limit", spec(retryLimit=10), "spec.retryLimit", "9"),
    ("start timeout", spec(startTimeoutSeconds=0), "spec.startTimeoutSeconds", "1"),
    ("unknown field", spec(promt="typo"), "spec.promt", "not permitted"),
    ("wrong type", spec(gpus="eight"), "spec.gpus", "integer"),
]

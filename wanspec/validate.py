"""Every rule of a `VideoGeneration` spec in Python, and the spec with its defaults resolved.

`validate()` reports every problem at once, each with its field path, what is wrong and what would
be valid, so the CLI can print them all and the operator can put them all into one `Failed`
condition. The API server checks the same rules with the CEL in `wanspec.crd` (the tests check the
two agree on a real API server); what neither can check (the PVC exists, the image is reachable)
is the operator's job.

`resolve()` turns a valid spec into the effective values the runner uses. Unset fields take:
- size-independent numbers (frames, steps, shift, guide scales) from the task table;
- the GPU layout from `gpus`, by `default_layout()`:
  * gpusPerPod: the largest divisor of gpus that is at most 8 (one pod per 8-GPU node);
  * cfgParallel: on only if gpus does not divide the heads but gpus / 2 does, or if ulysses is set
    to gpus / 2; ulysses: gpus / (2 if cfgParallel else 1) — so every GPU is used, the heads split
    evenly, and CFG-parallel is used only where Ulysses alone cannot use all GPUs;
  * ditFsdp: on for two-expert A14B tasks with gpus > 1 (off with precision fp8 / fp8-full); t5Fsdp: the same, unless t5Cpu;
- memory modes: offloadModel on with one GPU only (as upstream), convertModelDtype on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from wanspec.spec import (
    CONTROL_CHARACTERS,
    GPU_RESOURCE,
    MAX_GPUS,
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    VideoGenerationSpec,
)
from wanspec.tasks import TASKS, Size, TaskSpec

GPUS_PER_NODE = 8  # default pod width: the common 8-GPU node


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (JSON path from the root), what, and what would do."""

    path: str
    message: str
    valid: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (f" (valid: {self.valid})" if self.valid else "")


class InvalidSpec(ValueError):
    """A spec with problems; carries all of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ------------------------------------------------------------------------------- GPU layout


def _cfg_default(heads: int, gpus: int, ulysses: int | None) -> bool:
    if ulysses is not None:
        return gpus == 2 * ulysses
    return heads % gpus != 0 and gpus % 2 == 0 and heads % (gpus // 2) == 0


def default_gpus_per_pod(gpus: int) -> int:
    """The largest divisor of gpus that fits one 8-GPU node."""
    return max(d for d in range(1, min(gpus, GPUS_PER_NODE) + 1) if gpus % d == 0)


def valid_gpu_counts(task: TaskSpec) -> list[int]:
    """GPU counts with a layout: a divisor of the heads, or twice one (with CFG-parallel)."""
    divisors = task.ulysses_degrees()
    return sorted(set(divisors) | {2 * d for d in divisors if 2 * d <= MAX_GPUS})


def layout_problems(
    task: TaskSpec, gpus: int, ulysses: int | None, cfg_parallel: bool | None
) -> list[Problem]:
    """Why (task, gpus, ulysses, cfgParallel) has no Ulysses × CFG layout using every GPU."""
    degrees = ", ".join(map(str, task.ulysses_degrees()))
    if ulysses is not None and task.num_heads % ulysses:
        return [
            Problem(
                "spec.parallelism.ulysses",
                f"{ulysses} does not divide the {task.num_heads} attention heads of {task.name}",
                degrees,
            )
        ]
    cfg = _cfg_default(task.num_heads, gpus, ulysses) if cfg_parallel is None else cfg_parallel
    if cfg and gpus % 2:
        return [
            Problem(
                "spec.parallelism.cfgParallel",
                f"CFG-parallel needs an even gpus, got {gpus}",
                "false, or an even gpus",
            )
        ]
    factor = 2 if cfg else 1
    if ulysses is not None and ulysses * factor != gpus:
        want = f"{gpus // factor}" if gpus % factor == 0 else "none for this gpus"
        return [
            Problem(
                "spec.parallelism.ulysses",
                f"ulysses {ulysses} × {factor} (cfgParallel {'on' if cfg else 'off'}) "
                f"does not equal gpus {gpus}",
                want,
            )
        ]
    if ulysses is None and task.num_heads % (gpus // factor):
        counts = ", ".join(map(str, valid_gpu_counts(task)))
        return [
            Problem(
                "spec.gpus",
                f"{gpus} GPUs cannot split the {task.num_heads} attention heads of "
                f"{task.name} (Ulysses degree gpus{' / 2' if cfg else ''})",
                counts,
            )
        ]
    return []


@dataclass(frozen=True)
class Layout:
    """How the GPUs are used: gpus = pods × gpusPerPod = ulysses × (2 if cfgParallel else 1)."""

    gpus: int
    gpus_per_pod: int
    ulysses: int
    cfg_parallel: bool
    dit_fsdp: bool
    t5_fsdp: bool

    @property
    def pods(self) -> int:
        return self.gpus // self.gpus_per_pod


def default_layout(spec: VideoGenerationSpec) -> Layout:
    """The layout of a valid spec, unset fields derived as the module docstring says."""
    task, p = TASKS[spec.task], spec.parallelism
    cfg = (
        _cfg_default(task.num_heads, spec.gpus, p.ulysses)
        if p.cfg_parallel is None
        else p.cfg_parallel
    )
    dit_fsdp = (task.is_moe and spec.gpus > 1 and spec.precision == "exact") if p.dit_fsdp is None else p.dit_fsdp
    t5_fsdp = (dit_fsdp and not spec.memory.t5_cpu) if p.t5_fsdp is None else p.t5_fsdp
    return Layout(
        gpus=spec.gpus,
        gpus_per_pod=spec.gpus_per_pod or default_gpus_per_pod(spec.gpus),
        ulysses=p.ulysses or spec.gpus // (2 if cfg else 1),
        cfg_parallel=cfg,
        dit_fsdp=dit_fsdp,
        t5_fsdp=t5_fsdp,
    )


# ---------------------------------------------------------------------------- the rules


def _get(spec: Mapping[str, Any], dotted: str) -> Any:
    """spec['a']['b'] for 'a.b', or None where any level is missing or not a mapping."""
    value: Any = spec
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def rule_problems(spec: Mapping[str, Any]) -> list[Problem]:
    """The cross-field rules on a camelCase spec dict; fields of the wrong type are skipped here
    (the structural check reports them), so every rule that can be checked is."""
    problems: list[Problem] = []
    task = TASKS.get(spec.get("task")) if isinstance(spec.get("task"), str) else None
    gpus = _int(spec.get("gpus", 1))

    if task is not None:
        sizes = [str(s) for s in task.sizes]
        if isinstance(spec.get("size"), str) and spec["size"] not in sizes:
            problems.append(
                Problem(
                    "spec.size", f"{spec['size']} is not a size of {task.name}", ", ".join(sizes)
                )
            )
        image = spec.get("inputImage")
        if task.needs_image and image is None:
            problems.append(
                Problem(
                    "spec.inputImage",
                    f"{task.name} needs an input image",
                    "s3://bucket/key or https://host/path",
                )
            )
        if image is not None and not task.accepts_image:
            accepting = ", ".join(n for n, t in TASKS.items() if t.accepts_image)
            problems.append(
                Problem(
                    "spec.inputImage",
                    f"{task.name} takes no input image",
                    f"unset, or task {accepting}",
                )
            )
        guide = _get(spec, "sampling.guideScale")
        if isinstance(guide, list) and len(guide) == 2 and not task.is_moe:
            problems.append(
                Problem(
                    "spec.sampling.guideScale",
                    f"{task.name} has one expert, so one guide scale",
                    "a single value, e.g. [5.0]",
                )
            )
        if gpus is not None and gpus >= 1:
            ulysses = _int(_get(spec, "parallelism.ulysses"))
            cfg = _bool(_get(spec, "parallelism.cfgParallel"))
            if ulysses is None or ulysses >= 1:
                problems += layout_problems(task, gpus, ulysses, cfg)

    frames = _int(spec.get("frames"))
    if frames is not None and frames >= 1 and frames % 4 != 1:
        lower = 4 * ((frames - 1) // 4) + 1
        problems.append(
            Problem("spec.frames", f"{frames} is not of the form 4n+1", f"{lower} or {lower + 4}")
        )

    if (
        _get(spec, "promptExtension.method") == "dashscope"
        and _get(spec, "promptExtension.apiKeySecretRef") is None
    ):
        problems.append(
            Problem(
                "spec.promptExtension.apiKeySecretRef",
                "method dashscope needs the Secret holding the API key",
                "{name: <secret>, key: DASH_API_KEY}",
            )
        )

    path = _get(spec, "checkpoint.path")
    if isinstance(path, str) and ".." in path.split("/"):
        problems.append(
            Problem(
                "spec.checkpoint.path",
                "must not contain `..`",
                "a path inside the claim, e.g. Wan2.2-T2V-A14B",
            )
        )

    for field in ("prompt", "negativePrompt"):
        text = spec.get(field)
        if isinstance(text, str) and re.search(CONTROL_CHARACTERS, text):
            problems.append(
                Problem(
                    f"spec.{field}",
                    "contains control characters",
                    "text without them (tab and line breaks are allowed)",
                )
            )

    prefix = _get(spec, "output.prefix")
    if isinstance(prefix, str) and prefix and not prefix.endswith("/"):
        problems.append(
            Problem(
                "spec.output.prefix",
                f"{prefix!r} does not end with `/`, so one namespace's key could be another's",
                f"{prefix}/ (the key is <prefix><namespace>/<name>.mp4)",
            )
        )

    per_pod = _int(spec.get("gpusPerPod"))
    if gpus is not None and per_pod is not None and per_pod >= 1 and gpus % per_pod:
        divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
        problems.append(
            Problem(
                "spec.gpusPerPod",
                f"{per_pod} does not divide gpus {gpus}",
                ", ".join(map(str, divisors)),
            )
        )

    for switch in ("ditFsdp", "t5Fsdp"):
        if _get(spec, f"parallelism.{switch}") is True and gpus == 1:
            problems.append(
                Problem(
                    f"spec.parallelism.{switch}",
                    "FSDP needs more than one GPU",
                    "false, or gpus > 1",
                )
            )
    if _get(spec, "precision") not in (None, "exact") and _get(spec, "parallelism.ditFsdp") is True:
        problems.append(
            Problem(
                "spec.precision",
                f"{_get(spec, 'precision')} cannot be combined with parallelism.ditFsdp (FP8 weights are not sharded)",
                "ditFsdp false or precision exact",
            )
        )
    if _get(spec, "parallelism.t5Fsdp") is True and _get(spec, "memory.t5Cpu") is True:
        problems.append(
            Problem(
                "spec.memory.t5Cpu", "cannot be combined with parallelism.t5Fsdp", "one of the two"
            )
        )

    for kind in ("requests", "limits"):
        amounts = _get(spec, f"placement.resources.{kind}")
        if isinstance(amounts, Mapping) and GPU_RESOURCE in amounts:
            problems.append(
                Problem(
                    f"spec.placement.resources.{kind}",
                    f"{GPU_RESOURCE} is set by the operator from gpusPerPod",
                    "cpu, memory, ephemeral-storage, …",
                )
            )

    tolerations = _get(spec, "placement.tolerations")
    for i, tol in enumerate(tolerations if isinstance(tolerations, list) else []):
        if isinstance(tol, Mapping):
            problems += _toleration_problems(f"spec.placement.tolerations[{i}]", tol)
    return problems


def _toleration_problems(at: str, tol: Mapping[str, Any]) -> list[Problem]:
    """The core/v1 rules the Job would otherwise refuse minutes later."""
    problems = []
    operator = tol.get("operator", "Equal")
    if operator == "Exists" and tol.get("value"):
        problems.append(Problem(f"{at}.value", "must be empty with operator Exists", "unset"))
    if not tol.get("key") and operator != "Exists":
        problems.append(Problem(f"{at}.operator", "an empty key needs operator Exists", "Exists"))
    if tol.get("tolerationSeconds") is not None and tol.get("effect") != "NoExecute":
        problems.append(
            Problem(
                f"{at}.tolerationSeconds",
                "only applies with effect NoExecute",
                "unset, or effect NoExecute",
            )
        )
    return problems


def name_problems(name: str) -> list[Problem]:
    """The resource name must leave room for derived Job and pod host names (63-char DNS labels)."""
    problems = []
    if len(name) > MAX_NAME_LENGTH:
        problems.append(
            Problem(
                "metadata.name",
                f"{len(name)} characters is longer than "
                f"{MAX_NAME_LENGTH}, so derived pod host names would pass 63",
                f"at most {MAX_NAME_LENGTH} characters",
            )
        )
    if not re.match(NAME_PATTERN, name):
        problems.append(
            Problem(
                "metadata.name",
                f"{name!r} is not a DNS label starting with a "
                "letter (the headless Service is named after it)",
                "lowercase letters, digits and '-', starting with a letter",
            )
        )
    return problems


def _pydantic_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for e in error.errors(include_url=False):
        path = "spec"
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        ctx = e.get("ctx") or {}
        valid = ""
        valid = str(ctx["expected"]) if "expected" in ctx else ""
        problems.append(Problem(path, e["msg"], valid))
    return problems


def validate(spec: Mapping[str, Any], *, name: str | None = None) -> list[Problem]:
    """Every problem of a spec dict (camelCase, as in the resource) and, if given, its name."""
    problems = name_problems(name) if name is not None else []
    try:
        model = VideoGenerationSpec.model_validate(spec, context={"structure_only": True})
    except ValidationError as e:
        return problems + _pydantic_problems(e) + rule_problems(spec)
    return problems + rule_problems(model.model_dump(by_alias=True, exclude_none=True))


def parse(spec: Mapping[str, Any]) -> VideoGenerationSpec:
    """The spec as a model, or InvalidSpec listing every problem."""
    problems = validate(spec)
    if problems:
        raise InvalidSpec(problems)
    return VideoGenerationSpec.model_validate(spec, context={"structure_only": True})


# ------------------------------------------------------------------------------ resolution


class ResolvedSpec(BaseModel):
    """The effective values of a valid spec: no field left to a default."""

    model_config = ConfigDict(frozen=True)

    spec: VideoGenerationSpec
    task: str
    size: str
    width: int
    height: int
    frames: int
    fps: int
    negative_prompt: str
    solver: str
    steps: int
    shift: float
    guide_scale: tuple[float, float]  # (low-noise, high-noise), as upstream orders them
    gpus: int
    gpus_per_pod: int
    pods: int
    ulysses: int
    cfg_parallel: bool
    dit_fsdp: bool
    t5_fsdp: bool
    offload_model: bool
    convert_model_dtype: bool
    t5_cpu: bool
    precision: str


def resolve(spec: VideoGenerationSpec | Mapping[str, Any]) -> ResolvedSpec:
    """Effective values, per the module docstring; a dict is parsed (and checked) first."""
    if not isinstance(spec, VideoGenerationSpec):
        spec = parse(spec)
    task = TASKS[spec.task]
    size = Size.parse(spec.size)
    layout = default_layout(spec)
    guide = spec.sampling.guide_scale
    mem = spec.memory
    return ResolvedSpec(
        spec=spec,
        task=spec.task,
        size=str(size),
        width=size.width,
        height=size.height,
        frames=spec.frames or task.frame_num,
        fps=task.fps,
        negative_prompt=spec.effective_negative_prompt,
        solver=spec.sampling.solver,
        steps=spec.sampling.steps or task.sample_steps,
        shift=spec.sampling.shift or task.sample_shift,
        guide_scale=task.guide_scale if guide is None else (guide[0], guide[-1]),
        gpus=layout.gpus,
        gpus_per_pod=layout.gpus_per_pod,
        pods=layout.pods,
        ulysses=layout.ulysses,
        cfg_parallel=layout.cfg_parallel,
        dit_fsdp=layout.dit_fsdp,
        t5_fsdp=layout.t5_fsdp,
        offload_model=layout.gpus == 1 if mem.offload_model is None else mem.offload_model,
        convert_model_dtype=True if mem.convert_model_dtype is None else mem.convert_model_dtype,
        t5_cpu=mem.t5_cpu,
        precision=spec.precision,
    )


__all__ = [
    "InvalidSpec",
    "Layout",
    "Problem",
    "ResolvedSpec",
    "default_gpus_per_pod",
    "default_layout",
    "layout_problems",
    "name_problems",
    "parse",
    "resolve",
    "rule_problems",
    "validate",
    "valid_gpu_counts",
]

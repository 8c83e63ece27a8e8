"""The `VideoGeneration` API (`wanops.io/v1alpha1`): spec and status as pydantic models.

These models are the one definition of the resource. The CRD in `crds/` is generated from them
(`python -m wanspec.crd`), the operator parses resources with them and the runner reads the same
spec from its ConfigMap. Descriptions become the CRD's descriptions, so `kubectl explain` reads
them: each says what the field does and how unset values are derived. Static defaults, bounds and
"immutable after creation" are appended by the generator from the schema itself, so they cannot
drift from the constraints. Per-task numbers come from `wanspec.tasks` (the only copy).

Rules that span fields (size valid for the task, 4n+1 frames, Ulysses layout, ...) live in
`wanspec.validate` for Python and as CEL in `wanspec.crd` for the API server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, PRECISIONS, TASKS, TEXT_LEN

GROUP = "wanops.io"
VERSION = "v1alpha1"
KIND = "VideoGeneration"
PLURAL = "videogenerations"
SINGULAR = "videogeneration"
SHORT_NAMES = ("vg",)
API_VERSION = f"{GROUP}/{VERSION}"

# The operator derives child names from the resource name: Job `<name>-<attempt>` and pod hostname
# `<job>-<index>`, plus the headless Service `<name>`. Hostnames are DNS labels (63 characters), so
# the name keeps this many characters free for those suffixes ("-a10" + "-79" fits with room).
NAME_SUFFIX_BUDGET = 10
MAX_NAME_LENGTH = 63 - NAME_SUFFIX_BUDGET
# DNS-1035 label: the Service and pod subdomain are named after the resource.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# Largest useful GPU count: Ulysses degree ≤ heads, times 2 with CFG-parallel.
MAX_GPUS = 2 * max(t.num_heads for t in TASKS.values())
MAX_GPUS_PER_POD = 16  # the largest GPU nodes sold (HGX-2 class); a pod never spans nodes
MAX_RETRY_LIMIT = 9  # attempts are numbered 0..9 in derived names
MAX_FRAMES = 1001  # 250 latent frames; far beyond what fits in GPU memory today
MAX_PROMPT_CHARS = 10_000  # umT5 keeps TEXT_LEN tokens; the rest is ignored, but prompt
# extension may shorten a long text first. Bounded so CEL cost estimates stay small.
# C0 control characters but tab, line feed and carriage return, and DEL: nothing a prompt means,
# but terminal escapes and NULs in every log and tool that prints the spec. Python `re` and
# RE2 (CEL) read this pattern alike.
CONTROL_CHARACTERS = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]"
GPU_RESOURCE = "nvidia.com/gpu"

TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]  # the keys of the task table
SizeName = Literal[  # type: ignore[valid-type]  # every size any task supports, in table order
    tuple(dict.fromkeys(str(s) for t in TASKS.values() for s in t.sizes))
]
PrecisionName = Literal[PRECISIONS]  # type: ignore[valid-type]
Phase = Literal["Pending", "Queued", "Suspended", "Running", "Succeeded", "Failed"]

# Kubernetes name shapes (apimachinery validation): DNS-1123 subdomain and label.
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, starting and ending alnum.
S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
IMAGE_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\s]+|https://[^\s/]+/[^\s]*)$"
# resource.Quantity's canonical form (k8s.io/apimachinery/pkg/api/resource).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

DnsName = Annotated[str, StringConstraints(max_length=253, pattern=_DNS_SUBDOMAIN)]


def _per_task(attr: str) -> str:
    """'t2v-A14B: 40, i2v-A14B: 40, ti2v-5B: 50' for a TaskSpec attribute, for descriptions."""
    return ", ".join(f"{name}: {getattr(t, attr)}" for name, t in TASKS.items())


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# A resource quantity as Kubernetes accepts it: `2`, `500m`, `64Gi`. Ints are kept as strings.
Quantity = Annotated[
    str,
    BeforeValidator(_int_to_str),
    StringConstraints(max_length=64, pattern=QUANTITY_PATTERN),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]


class ApiModel(BaseModel):
    """Base of every API object: camelCase JSON names, unknown fields refused, values frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


# ---------------------------------------------------------------------------------------- spec


class SecretKeyRef(ApiModel):
    """One key of a Secret in the resource's namespace."""

    name: DnsName = Field(description="Name of the Secret, in the VideoGeneration's namespace.")
    key: Annotated[str, StringConstraints(max_length=253, pattern=_SECRET_KEY)] = Field(
        "DASH_API_KEY",
        description="Key inside the Secret whose value is used (upstream reads DASH_API_KEY).",
    )


class SecretRef(ApiModel):
    """A whole Secret in the resource's namespace."""

    name: DnsName = Field(description="Name of the Secret, in the VideoGeneration's namespace.")


class Sampling(ApiModel):
    """Solver settings; unset values take the task's upstream defaults."""

    solver: Literal["unipc", "dpm++"] = Field(
        "unipc",
        description="Flow-matching solver: `unipc` (upstream default) or `dpm++` "
        "(multistep DPM-Solver++).",
    )
    steps: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=f"Denoising steps. Unset: the task's default ({_per_task('sample_steps')}).",
    )
    shift: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Noise-schedule shift; larger values spend more steps at high noise. "
        f"Unset: the task's default ({_per_task('sample_shift')}); upstream suggests 3.0 for "
        "i2v at 480p.",
    )
    guide_scale: list[Annotated[float, Field(ge=0, le=100)]] | None = Field(
        None,
        min_length=1,
        max_length=2,
        description="Classifier-free guidance scale. `[g]` applies g to every expert; "
        "`[low, high]` sets the low-noise and the high-noise expert separately (two-expert A14B "
        f"tasks only). Unset: the task's default as (low, high): {_per_task('guide_scale')}.",
    )


class PromptExtension(ApiModel):
    """Rewrite the prompt with an LLM before encoding it (upstream `--use_prompt_extend`)."""

    method: Literal["local_qwen", "dashscope"] = Field(
        "local_qwen",
        description="`local_qwen` runs a Qwen model inside the runner pod (loaded on CPU, moved to "
        "the GPU for the call); `dashscope` calls Alibaba Cloud's DashScope API and needs "
        "`apiKeySecretRef`. On a DashScope failure the original prompt is kept.",
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None,
        description="Model name, Hugging Face id or path inside the checkpoint volume. Unset: the "
        "backend's upstream default (local_qwen: Qwen2.5_14B, or QwenVL2.5_7B with an image; "
        "dashscope: qwen-plus, or qwen-vl-max with an image).",
    )
    target_language: Literal["zh", "en"] = Field(
        "zh", description="Language of the extended prompt: `zh` (upstream default) or `en`."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="The Secret key holding the DashScope API key. Required for `dashscope`, "
        "ignored otherwise. A missing Secret ends the generation Failed (reason SecretNotFound).",
    )
    api_url: Annotated[str, StringConstraints(max_length=512, pattern=r"^https://\S+$")] | None = (
        Field(
            None,
            description="DashScope base URL. Unset: https://dashscope.aliyuncs.com/api/v1 "
            "(international accounts use https://dashscope-intl.aliyuncs.com/api/v1).",
        )
    )


class CheckpointSource(ApiModel):
    """Where the official checkpoint folder lives: a PersistentVolumeClaim, mounted read-only."""

    claim_name: DnsName = Field(
        description="PersistentVolumeClaim in the VideoGeneration's namespace that holds the "
        "checkpoints. Mounted read-only in every runner pod (ReadOnlyMany or ReadWriteMany "
        "claims for multi-pod layouts). A missing claim ends the generation Failed (reason "
        "CheckpointNotFound)."
    )
    path: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
        ),
    ] = Field(
        description="Relative path inside the claim of the task's official folder as published "
        "(e.g. `Wan2.2-T2V-A14B`), with the DiT, VAE and umT5 files in their upstream layout. "
        "No leading `/`, no `..`."
    )


class Parallelism(ApiModel):
    """How the GPUs split the work. Unset fields are derived from `gpus` (see each field)."""

    ulysses: int | None = Field(
        None,
        ge=1,
        le=max(t.num_heads for t in TASKS.values()),
        description="Ulysses sequence-parallel degree: each attention layer's heads are split "
        "over this many GPUs. Must divide the task's attention heads "
        f"({_per_task('num_heads')}) and equal gpus (gpus / 2 with cfgParallel). Unset: "
        "gpus, or gpus / 2 when cfgParallel is on.",
    )
    cfg_parallel: bool | None = Field(
        None,
        description="Run the conditional and unconditional guidance passes on two halves of the "
        "GPUs at once (needs an even gpus). Unset: on only when gpus does not divide the task's "
        "heads but gpus / 2 does (e.g. 16 GPUs for the "
        f"{TASKS['t2v-A14B'].num_heads} heads of t2v-A14B → 2 × Ulysses 8), or when ulysses is "
        "set to gpus / 2.",
    )
    dit_fsdp: bool | None = Field(
        None,
        description="Shard the DiT weights over all GPUs with FSDP (upstream `--dit_fsdp`); each "
        "block is gathered just before it runs. Needs gpus > 1. Unset: on for the two-expert "
        "A14B tasks with gpus > 1 (both experts do not fit whole next to the activations), off "
        "otherwise.",
    )
    t5_fsdp: bool | None = Field(
        None,
        description="Shard the umT5 text encoder with FSDP (upstream `--t5_fsdp`). Needs gpus > 1 "
        "and cannot be combined with memory.t5Cpu. Unset: same as the effective ditFsdp, except "
        "off when memory.t5Cpu is on.",
    )


class MemoryModes(ApiModel):
    """Trade speed for GPU memory (upstream --offload_model, --convert_model_dtype, --t5_cpu)."""

    offload_model: bool | None = Field(
        None,
        description="Move models to CPU memory when not in use (the idle A14B expert, umT5 after "
        "encoding). Slower, much less GPU memory. Unset: on with one GPU, off otherwise (as "
        "upstream).",
    )
    convert_model_dtype: bool | None = Field(
        None,
        description="Cast DiT weights to bfloat16, halving their memory; with ditFsdp each rank "
        "stores its shards in bfloat16 (upstream ignores the flag there and keeps fp32 shards). "
        "Unset: on (every upstream README command uses it).",
    )
    t5_cpu: bool = Field(
        False,
        description="Keep the umT5 text encoder (about 11 GB) on CPU and encode there: saves GPU "
        "memory, costs a few seconds per prompt. Cannot be combined with parallelism.t5Fsdp.",
    )
    gpu_memory_gi_b: int | None = Field(
        None,
        alias="gpuMemoryGiB",
        ge=1,
        le=4096,
        description="GPU memory of the target nodes in GiB, used by the memory planner to refuse "
        "layouts that cannot fit before anything starts (reason InsufficientGPUMemory). Unset: "
        "the chart's `gpuMemoryGiB` value.",
    )


class OutputLocation(ApiModel):
    """Where the MP4 is uploaded: an S3-compatible bucket."""

    bucket: Annotated[
        str, StringConstraints(min_length=3, max_length=63, pattern=S3_BUCKET_PATTERN)
    ] = Field(description="Bucket the video is uploaded to.")
    prefix: Annotated[str, StringConstraints(max_length=512, pattern=r"^([^/\s][^\s]*)?$")] = Field(
        "",
        description="Key prefix, no leading `/`; the video lands at "
        "`<prefix><namespace>/<name>.mp4`, the runner's log beside it as `.log`.",
    )
    endpoint: (
        Annotated[str, StringConstraints(max_length=512, pattern=r"^https?://\S+$")] | None
    ) = Field(
        None,
        description="S3 endpoint URL (`https://…`, or `http://…` inside the cluster). Unset: "
        "the chart's object store endpoint.",
    )
    credentials_secret_ref: SecretRef | None = Field(
        None,
        description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the bucket. "
        "Unset: the chart's object store credentials.",
    )


class Toleration(ApiModel):
    """A core/v1 Toleration, copied into the runner pods."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = Field(
        None, description="Taint key to tolerate; empty with operator Exists means every taint."
    )
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="`Equal` matches key and value; `Exists` matches the key alone."
    )
    value: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        None, description="Taint value to match with operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match. Unset: every effect."
    )
    toleration_seconds: int | None = Field(
        None,
        ge=0,
        description="For NoExecute: how long the pod stays bound after the taint appears. "
        "Unset: forever.",
    )


class ResourceOverride(ApiModel):
    """CPU, memory and other requests/limits of the runner container."""

    requests: dict[Annotated[str, StringConstraints(max_length=253)], Quantity] | None = Field(
        None,
        max_length=16,
        description="Resource requests (e.g. cpu: 16, memory: 200Gi) replacing the operator's "
        f"defaults. `{GPU_RESOURCE}` is not allowed: it follows gpusPerPod.",
    )
    limits: dict[Annotated[str, StringConstraints(max_length=253)], Quantity] | None = Field(
        None,
        max_length=16,
        description=f"Resource limits replacing the operator's defaults. `{GPU_RESOURCE}` is not "
        "allowed: it follows gpusPerPod.",
    )


class Placement(ApiModel):
    """Where and how the runner pods run; copied into every pod of the Job."""

    node_selector: (
        dict[
            Annotated[str, StringConstraints(max_length=316)],
            Annotated[str, StringConstraints(max_length=63)],
        ]
        | None
    ) = Field(None, max_length=64, description="Node labels the runner pods require.")
    tolerations: list[Toleration] | None = Field(
        None, max_length=64, description="Taints the runner pods tolerate (e.g. GPU node taints)."
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="A core/v1 Affinity (nodeAffinity, podAffinity, podAntiAffinity), copied "
        "verbatim into the pod spec; the API server checks it when the Job is created.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: DnsName | None = Field(
        None, description="PriorityClass of the runner pods. Unset: the cluster default."
    )
    runner_image: (
        Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")] | None
    ) = Field(None, description="Container image of the runner. Unset: the chart's runner image.")
    resources: ResourceOverride | None = Field(
        None,
        description="Requests and limits of the runner container other than GPUs. Unset: the "
        "operator's defaults for the task.",
    )


class VideoGenerationSpec(ApiModel):
    """What to generate and with which resources. All but `suspend` is fixed at creation."""

    task: TaskName = Field(
        description="Which Wan2.2 model runs: `t2v-A14B` (text to video, two 14B experts), "
        "`i2v-A14B` (image and text to video, two 14B experts) or `ti2v-5B` (one dense 5B "
        "model; text to video, or image and text to video when inputImage is set)."
    )
    size: SizeName = Field(
        description="Video size as WIDTH*HEIGHT, one the task supports: "
        + "; ".join(f"{n}: {', '.join(map(str, t.sizes))}" for n, t in TASKS.items())
        + ". With an input image it is the maximum area and the aspect ratio follows the image."
    )
    frames: int | None = Field(
        None,
        ge=1,
        le=MAX_FRAMES,
        description="Number of frames; must be 4n+1 (the VAE compresses time by 4). Unset: the "
        f"task's default ({_per_task('frame_num')}). Frames per second of the video: "
        f"{_per_task('fps')}.",
    )
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)] = Field(
        description=f"Text describing the video. Encoded to at most {TEXT_LEN} umT5 tokens; "
        "longer text is cut."
    )
    negative_prompt: Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)] = Field(
        "",
        description="What the video should not show. Empty: the upstream default negative prompt "
        "(Chinese, against oversaturation, blur, static frames, deformed limbs and the like).",
    )
    input_image: (
        Annotated[str, StringConstraints(max_length=2048, pattern=IMAGE_URI_PATTERN)] | None
    ) = Field(
        None,
        description="Conditioning image, as `s3://bucket/key` in the object store of `output` "
        "(or the chart's store) or an `https://` URL. Required for i2v-A14B, optional for "
        "ti2v-5B (selects image-to-video), not accepted by t2v-A14B. An image that cannot "
        "be read ends the generation Failed (reason ImageNotReadable).",
    )
    seed: int = Field(
        -1,
        ge=-1,
        le=2**32 - 1,
        description="Random seed; the same seed, spec and GPU layout give the same video. -1 "
        "picks one at random, reported in status.seed. Bounded to 32 bits so every JSON tool "
        "keeps it exact.",
    )
    sampling: Sampling = Field(
        default_factory=Sampling, description="Solver, steps, shift and guidance."
    )
    prompt_extension: PromptExtension | None = Field(
        None,
        description="Rewrite the prompt with an LLM first. Unset: the prompt is used as given.",
    )
    checkpoint: CheckpointSource = Field(
        description="The model weights, from a PersistentVolumeClaim."
    )
    gpus: int = Field(
        1,
        ge=1,
        le=MAX_GPUS,
        description="GPUs used in total, across all pods. With more than one, the layout in "
        "`parallelism` must fit: gpus divides the task's heads, or is twice a divisor with "
        "CFG-parallel.",
    )
    gpus_per_pod: int | None = Field(
        None,
        ge=1,
        le=MAX_GPUS_PER_POD,
        description="GPUs per runner pod; the Job runs gpus / gpusPerPod pods, one per node (e.g. "
        "16 GPUs as 2 pods × 8). Must divide gpus. Unset: the largest divisor of gpus that is "
        "at most 8.",
    )
    parallelism: Parallelism = Field(
        default_factory=Parallelism, description="Ulysses, CFG-parallel and FSDP switches."
    )
    memory: MemoryModes = Field(
        default_factory=MemoryModes, description="Offload, dtype and text-encoder placement."
    )
    precision: PrecisionName = Field(
        "exact",
        description="`exact`: the official numbers (bf16 GEMMs and attention, fp32 residual "
        "stream). `fp8`: opt-in, lossy: the DiT blocks' linear layers run as FP8 GEMMs with "
        "per-row scales (needs GPUs with FP8 tensor cores: H100, H200, L40S, RTX 4090 and "
        "newer); about 10% faster and half the DiT weight memory at 720P A14B, at a measured "
        "cosine of 0.9986 against exact (BENCHMARKS.md). `fp8-full`: also the self-attention "
        "in FP8 (cuDNN's FP8 attention; Hopper GPUs only: H100, H200), faster again at a larger "
        "measured cost (BENCHMARKS.md). Neither with parallelism.ditFsdp.",
    )
    output: OutputLocation | None = Field(
        None,
        description="Where the MP4 goes. Unset: the chart's object store, its default bucket "
        "and prefix.",
    )
    suspend: bool = Field(
        False,
        description="true stops the runner pods (the Job is suspended) and keeps the resource; "
        "false lets it run. The only field that may change after creation. When the resource "
        "carries a `kueue.x-k8s.io/queue-name` label, Kueue decides when the Job runs.",
    )
    retry_limit: int = Field(
        2,
        ge=0,
        le=MAX_RETRY_LIMIT,
        description="Fresh attempts after an infrastructure failure (a pod lost, a node gone). "
        "Ranks depend on each other, so an attempt is always restarted whole. Bad input (exit "
        "code of the runner's invalid-input class) never retries.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        le=31_536_000,
        description="Seconds after Succeeded or Failed when the Job, its pods (and their logs), "
        "the Service and the ConfigMap are deleted; the VideoGeneration and its status stay. "
        "Unset: kept until the VideoGeneration is deleted.",
    )
    start_timeout_seconds: int = Field(
        1800,
        ge=1,
        le=604_800,
        description="How long the runner pods may wait to start (unschedulable, quota, image "
        "pull) before the generation ends Failed (reason StartTimeout). Time spent suspended "
        "does not count.",
    )
    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        le=604_800,
        description="Longest time one attempt's Job may exist, counted from the Job's start (its "
        "creation, or the moment it is unsuspended; "
        "time spent pending counts too; see startTimeoutSeconds for the pending part alone), after "
        "which it ends Failed (reason DeadlineExceeded). Unset: no limit.",
    )
    placement: Placement = Field(
        default_factory=Placement,
        description="Node selection, tolerations, affinity, priority, image and resources of "
        "the runner pods.",
    )

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> VideoGenerationSpec:
        """Apply the cross-field rules of `wanspec.validate`, unless it asked for structure only."""
        if info.context and info.context.get("structure_only"):
            return self
        from wanspec.validate import rule_problems  # validate imports this module

        problems = rule_problems(self.model_dump(by_alias=True, exclude_none=True))
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return self

    @property
    def effective_negative_prompt(self) -> str:
        """The negative prompt the pipeline uses: upstream's default when empty."""
        return self.negative_prompt or DEFAULT_NEGATIVE_PROMPT


# -------------------------------------------------------------------------------------- status

READY = "Ready"  # True once the video is uploaded (kstatus: the resource is current)
RECONCILING = "Reconciling"  # True while pending, queued or running
STALLED = "Stalled"  # True after a permanent failure; the reason says what to fix
CONDITION_TYPES = (READY, RECONCILING, STALLED)

_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"  # metav1.Condition reason


class Condition(ApiModel):
    """A metav1.Condition: one aspect of the state, as kstatus, Argo CD and kubectl wait read it."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)] = Field(
        description="Condition type: Ready, Reconciling or Stalled (kstatus conventions)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=_REASON)] = (
        Field(description="CamelCase reason for the last transition, e.g. InsufficientGPUMemory.")
    )
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        "", description="Human-readable details; for failures, what to fix."
    )
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class Progress(ApiModel):
    """How far the runner is, written by rank 0 through the status subresource."""

    stage: (
        Literal["Loading", "EncodingPrompt", "Denoising", "Decoding", "Encoding", "Uploading"]
        | None
    ) = Field(None, description="What the runner is doing now.")
    step: int | None = Field(None, ge=0, description="Denoising steps completed.")
    total_steps: int | None = Field(None, ge=1, description="Denoising steps in total.")
    expert: Literal["high_noise", "low_noise"] | None = Field(
        None, description="The A14B expert running the current step; unset for ti2v-5B."
    )
    percent: int | None = Field(
        None, ge=0, le=100, description="Overall progress, loading and upload included."
    )
    eta_seconds: int | None = Field(
        None, ge=0, description="Estimated seconds until the video is uploaded."
    )


class OutputInfo(ApiModel):
    """The uploaded video."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(
        description="`s3://bucket/key` of the MP4."
    )
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        None, description="SHA-256 of the MP4, lowercase hex."
    )
    bytes: int | None = Field(None, ge=0, description="Size of the MP4 in bytes.")
    content_type: Annotated[str, StringConstraints(max_length=255)] = Field(
        "video/mp4", description="MIME type of the object."
    )
    log_uri: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        None, description="`s3://bucket/key` of rank 0's log, kept after the pods are gone."
    )


class FailureInfo(ApiModel):
    """The last failure, as KServe's lastFailureInfo: which pod, how it ended, when."""

    reason: Annotated[str, StringConstraints(max_length=1024)] = Field(
        description="CamelCase reason, e.g. StartTimeout, CheckpointNotFound, OOMKilled."
    )
    message: Annotated[str, StringConstraints(max_length=32768)] = Field(
        "",
        description="What happened and what to fix; from the runner's termination message "
        "when there is one.",
    )
    exit_code: int | None = Field(None, description="Exit code of the failing container.")
    pod: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        None, description="Name of the failing pod."
    )
    time: datetime | None = Field(None, description="When the failure was seen.")


class VideoGenerationStatus(ApiModel):
    """Observed state: the operator writes phase, conditions and failure; the runner progress
    and output."""

    phase: Phase | None = Field(
        None,
        description="Pending (accepted, Job not started), Queued (Job waiting for admission, e.g. "
        "by Kueue), Suspended (spec.suspend), Running, Succeeded (video uploaded) or Failed.",
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] | None = Field(
        None,
        max_length=16,
        description="Ready (video uploaded), Reconciling (queued or running) and Stalled "
        "(failed permanently), one entry per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: Progress | None = Field(None, description="Where the runner is.")
    output: OutputInfo | None = Field(None, description="The uploaded video, once Succeeded.")
    failure: FailureInfo | None = Field(None, description="The last failure.")
    seed: int | None = Field(None, description="The seed actually used (resolves spec.seed -1).")
    attempt: int | None = Field(
        None, ge=0, le=MAX_RETRY_LIMIT, description="Current attempt, from 0."
    )
    job_name: Annotated[str, StringConstraints(max_length=63)] | None = Field(
        None, description="Name of the current attempt's Job."
    )
    start_time: datetime | None = Field(None, description="When the first runner pod started.")
    completion_time: datetime | None = Field(
        None, description="When the phase became Succeeded or Failed."
    )
    kopf: dict[str, Any] | None = Field(
        None,
        description="Reserved for the kopf framework's own records; not part of the API.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class VideoGeneration(ApiModel):
    """A whole resource, as the operator receives it."""

    api_version: Literal[API_VERSION] = Field(API_VERSION, description=f"{API_VERSION}.")  # type: ignore[valid-type]
    kind: Literal[KIND] = Field(KIND, description=f"{KIND}.")  # type: ignore[valid-type]
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: VideoGenerationSpec
    status: VideoGenerationStatus | None = None

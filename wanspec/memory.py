"""Peak GPU memory per GPU of a generation, estimated before anything loads; and a planner that
refuses layouts that cannot fit, naming ones that would (issue 6, "Memory planner").

Torch-free and pure: the CLI (a warning before loading), the operator (pre-flight: `Failed` with
reason `InsufficientGPUMemory`) and the runner (a log line) share it.

What is on one GPU, phase by phase (spec §4.4, §9, §11; `wan_core/pipelines/common.py`,
`wan_core/parallel/`). The peak is the largest phase; rank 0 decodes, so it is rank 0's peak.

- encode: VAE weights (the VAE lives on the GPU for the whole run; sized as fp32); umT5 (bf16) while
  it encodes, unless `t5_cpu`, 1/N of it with `t5_fsdp`; FSDP shards of every DiT (loaded onto the
  GPUs at load time with `dit_fsdp`).
- image encode (i2v-A14B only: the image plus F−1 zero frames go through the VAE encoder):
  VAE encode working set, assumed equal to the decode's (not measured).
- denoise: DiT weights — with `dit_fsdp` every expert's shard, `E · P · b / N`, plus two gathered
  blocks in bf16 (the running one and FSDP2's prefetch); without it one expert whole (the pipeline
  keeps only the active A14B expert on the GPU unless, with `offload_model=False`, it measures
  room for both beyond this estimate), `P · b`; b = 2 bytes with `convert_model_dtype`,
  4 as stored (§2.1: the DiT shards are fp32). umT5 stays if it was not offloaded (ours: only under
  torchrun; one process moves it off after encoding either way). Activations of
  one DiT forward (one CFG branch at a time) for the S = L/ulysses tokens of this rank:
      S · c_arch                                   (calibrated: see below)
    + per-token time embedding, only where it is expanded to every token (the official code
      always; ours never: one row per distinct timestep, gathered inside the fused kernels):
      L · dim · 28 B (e and e0 in fp32, whole on every Ulysses rank) + S · dim · 24 B
      (modulation + e0 in each block)
    + with ulysses > 1: S · dim · 12 B (q/k/v bf16 all-to-all send and receive buffers).
- decode (rank 0): VAE weights + a working set per output pixel of one frame (the causal decode
  goes chunk by chunk, so it scales with H·W, not F); the official code also holds the whole output
  video, sized as fp32 (F·H·W·3·4 B), where ours hands each chunk's frames to the MP4 encoder as
  uint8 and keeps no video on the GPU; plus what is
  left: FSDP shards, umT5 unless offloaded, the last expert in one process without offload
  (with torchrun, replicated DiTs are moved off the GPU before rank 0 decodes).
- always: CUDA context, cuBLAS/cuDNN workspaces (not in `max_memory_allocated`), and NCCL
  buffers with more than one GPU.

Calibrated vs extrapolated, honestly:
- c_arch (bytes per token of one forward beyond the per-token time embedding) is fitted so that
  the formula reproduces exactly the two forwards we measured on an H100 with the compiled blocks
  the pipelines run on CUDA (BENCHMARKS.md, issue 10: A14B 1280×720×81 → 31.83 GiB, TI2V-5B
  1280×704×121 → 10.66 GiB, both incl. bf16 weights). Linearity
  in tokens (no quadratic attention term: cuDNN/flash attention keep no L×L matrix) is checked by
  the official code's 720P and 480P A14B peaks of issue 10 (464 KB/token both). Other sizes and
  frame counts are extrapolated along it.
- The VAE working set per pixel is fitted on our streamed decode → MP4 (the bf16 fast path, each
  latent frame's video frames converted to uint8 on the GPU and handed to ffmpeg), what the
  generate command and the runner run on CUDA: allocated at its peak beyond the resident weights
  and latents, Wan2.1 720P×81 6.12 GiB, Wan2.2 1280×704×121 5.44 GiB (H100, `bench/decode_to_mp4.py`,
  BENCHMARKS.md). With the weights sized as fp32 this only overestimates.
- The Ulysses all-to-all buffers, the FSDP gathered blocks, the i2v encode working set, the CUDA
  context (0.75 GiB) and NCCL (0.5 GiB) are first-principles or assumed, not measured here.
  Everything under torchrun is extrapolated: no multi-GPU peak of ours has been measured yet.
- The `OFFICIAL` profile re-fits c_arch and the decode on the official code's peaks of issue 10
  and follows its placement (per-token time embedding always, fp32 FSDP shards since
  `--convert_model_dtype` is not applied under `--dit_fsdp`, whole DiTs on every GPU under Ulysses
  without FSDP). It exists to check the phase accounting against upstream's published end-to-end
  peaks (single H100 T2V-A14B 720P 59.8 GB, I2V 59.7 GB, TI2V-5B on a 4090 22.9 GB, 8 GPUs with
  FSDP + Ulysses 37 GB), which only exist for upstream; the planner uses `WANOPS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wanspec.tasks import PATCH_SIZE, TASKS, Size, TaskSpec, latent_frames

GIB = 1 << 30

# ------------------------------------------------------------------------ architecture facts


@dataclass(frozen=True)
class DiTArch:
    """What sizes a DiT's memory: spec §1.2 (dim, ffn_dim, num_layers, parameters per DiT)."""

    key: str  # "A14B" or "5B": the calibration key
    dim: int
    ffn_dim: int
    num_layers: int
    params: int  # per DiT (per expert for A14B), [verified] counts of §1.2

    @property
    def block_linear_params(self) -> int:
        """Weights of the blocks' Linear layers (q/k/v/o twice, the FFN): what `fp8` quantizes."""
        return self.num_layers * (8 * self.dim * self.dim + 2 * self.dim * self.ffn_dim)


DIT_ARCH: dict[str, DiTArch] = {
    "t2v-A14B": DiTArch("A14B", 5120, 13824, 40, 14_288_491_584),
    "i2v-A14B": DiTArch("A14B", 5120, 13824, 40, 14_288_901_184),
    "ti2v-5B": DiTArch("5B", 3072, 14336, 30, 4_999_787_712),
}

# umT5-XXL encoder (§4.1): 256,384 × 4096 embedding + 24 layers of q/k/v/o (4 · 4096²) and a gated
# FFN (3 · 4096 · 10240); norms and position tables are < 0.01%. 5.69 B params, bf16: 11.4 GB,
# the size of `models_t5_umt5-xxl-enc-bf16.pth` (§2.1).
T5_LAYERS = 24
T5_LAYER_PARAMS = 4 * 4096 * 4096 + 3 * 4096 * 10240
T5_PARAMS = 256_384 * 4096 + T5_LAYERS * T5_LAYER_PARAMS
T5_BYTES = T5_PARAMS * 2

# VAE weights as stored and run (fp32, §2.1 file sizes, §5.5).
VAE_WEIGHT_BYTES = {"Wan2.1_VAE.pth": 508e6, "Wan2.2_VAE.pth": 2.8e9}

# Not in max_memory_allocated: CUDA context with cuBLAS/cuDNN workspaces (assumed, typical of
# torch on Hopper: nvidia-smi minus the allocator's peak), and NCCL's buffers per process.
CUDA_CONTEXT_BYTES = 0.75 * GIB
NCCL_BYTES = 0.5 * GIB
# The planner wants the estimate at most (1 − this) of the GPU: allocator fragmentation and what
# the estimate misses. 5% keeps upstream's TI2V-5B on a 24 GB card (its README setup) possible.
SAFETY_FRACTION = 0.05

PER_TOKEN_FULL_BYTES_PER_DIM = 28  # e (4 B) + e0 (6 × 4 B) per token, fp32, whole on every rank
PER_TOKEN_RANK_BYTES_PER_DIM = 24  # modulation + e0 (6 × 4 B) per local token in each block
ULYSSES_A2A_BYTES_PER_DIM = 12  # q, k, v bf16 (3 × 2 B), send and receive buffers (× 2)
FSDP_GATHERED_BLOCKS = 2  # the running block and the prefetched one, unsharded, bf16


def tokens(task: TaskSpec, width: int, height: int, frames: int) -> int:
    """DiT tokens: F_lat · (H/stride/2) · (W/stride/2) (spec §1.4)."""
    _, sh, sw = task.vae_stride
    return latent_frames(frames) * (height // sh // PATCH_SIZE[1]) * (width // sw // PATCH_SIZE[2])


def _time_embedding_bytes(dim: int, full: int, local: int) -> float:
    return full * dim * PER_TOKEN_FULL_BYTES_PER_DIM + local * dim * PER_TOKEN_RANK_BYTES_PER_DIM


def _out_video_bytes(width: int, height: int, frames: int) -> float:
    return frames * height * width * 3 * 4  # fp32 [3, F, H, W]


# ----------------------------------------------------------------------------- calibration

# Measured one-forward peaks: (task, W, H, frames, per-token timesteps, peak GiB incl. bf16 weights).
# Ours: BENCHMARKS.md "Exact-mode speed", bench/results/2026-11-26-h100-dit-mem.jsonl (H100,
# torch 2.11, compiled blocks, commit 028fe5f). The 5B bench passes per-token timesteps; ours keeps them compact.
MEASURED_FORWARD = {
    "A14B": ("t2v-A14B", 1280, 720, 81, False, 31.83),
    "5B": ("ti2v-5B", 1280, 704, 121, False, 10.66),
}
# The official code on the same kind of GPU, issue 10's table (A14B 720P and 5B; 480P is held out).
OFFICIAL_FORWARD = {
    "A14B": ("t2v-A14B", 1280, 720, 81, True, 59.3),
    "5B": ("ti2v-5B", 1280, 704, 121, True, 16.4),
}
# VAE decode: (W, H, frames, GiB). Ours: the streamed decode → MP4's allocation at its peak beyond
# the resident weights and latents (bench/results/2026-11-27-h100-decode-to-mp4-peaks.jsonl);
# official (fp32, the whole video held, weights included): issue 10's table.
MEASURED_DECODE = {
    "Wan2.1_VAE.pth": (1280, 720, 81, 6.12),
    "Wan2.2_VAE.pth": (1280, 704, 121, 5.44),
}
OFFICIAL_DECODE = {
    "Wan2.1_VAE.pth": (1280, 720, 81, 19.4),
    "Wan2.2_VAE.pth": (1280, 704, 121, 23.7),
}


def _fit_forward(point: tuple[str, int, int, int, bool, float]) -> float:
    """c_arch in bytes per token: the measured peak less bf16 weights and the time embedding."""
    task_name, w, h, f, per_token, gib = point
    arch, n = DIT_ARCH[task_name], tokens(TASKS[task_name], w, h, f)
    rest = gib * GIB - arch.params * 2 - (_time_embedding_bytes(arch.dim, n, n) if per_token else 0)
    return rest / n


def _fit_decode(point: tuple[int, int, int, float], vae: str) -> float:
    """Working bytes per output pixel of one frame: the official peak less weights and two
    outputs (module doc)."""
    w, h, f, gib = point
    return (gib * GIB - VAE_WEIGHT_BYTES[vae] - 2 * _out_video_bytes(w, h, f)) / (w * h)


def _fit_streamed_decode(point: tuple[int, int, int, float]) -> float:
    """Working bytes per output pixel of one frame: what the streamed decode allocates beyond
    the resident weights, which holds no video."""
    w, h, _, gib = point
    return gib * GIB / (w * h)


@dataclass(frozen=True)
class Profile:
    """How an implementation places and sizes things; see the module docstring."""

    name: str
    forward_bytes_per_token: Mapping[str, float]  # c_arch by DiTArch.key
    decode_bytes_per_pixel: Mapping[str, float]  # by VAE checkpoint
    decode_holds_video: bool  # the official decode returns the whole fp32 video on the GPU; ours streams it out
    per_token_time_always: bool  # the time embedding is expanded to every token (official Wan2.2); ours never
    convert_under_fsdp: bool  # ours stores bf16 shards; upstream ignores the flag under FSDP
    replicas_on_gpu: bool  # upstream puts whole DiTs on every GPU under Ulysses without FSDP
    t5_leaves_in_one_process: bool  # ours moves umT5 off the GPU after encoding in one process; upstream only with offload


WANOPS = Profile(
    name="wanops",
    forward_bytes_per_token={k: _fit_forward(p) for k, p in MEASURED_FORWARD.items()},
    decode_bytes_per_pixel={k: _fit_streamed_decode(p) for k, p in MEASURED_DECODE.items()},
    decode_holds_video=False,
    per_token_time_always=False,
    convert_under_fsdp=True,
    replicas_on_gpu=False,
    t5_leaves_in_one_process=True,
)
OFFICIAL = Profile(
    name="official",
    forward_bytes_per_token={k: _fit_forward(p) for k, p in OFFICIAL_FORWARD.items()},
    decode_bytes_per_pixel={k: _fit_decode(p, k) for k, p in OFFICIAL_DECODE.items()},
    decode_holds_video=True,
    per_token_time_always=True,
    convert_under_fsdp=False,
    replicas_on_gpu=True,
    t5_leaves_in_one_process=False,
)

# ------------------------------------------------------------------------------ estimator


@dataclass(frozen=True)
class GpuLayout:
    """How the GPUs are used (a `wanspec.validate.Layout` without the pod split)."""

    gpus: int = 1
    ulysses: int = 1
    cfg_parallel: bool = False
    dit_fsdp: bool = False
    t5_fsdp: bool = False


@dataclass(frozen=True)
class Modes:
    """The memory modes (spec.memory / upstream flags)."""

    offload_model: bool = True
    convert_model_dtype: bool = True
    t5_cpu: bool = False
    precision: str = "exact"  # spec.precision; fp8 and fp8-full store the blocks' Linear weights in 1 byte


@dataclass(frozen=True)
class Phase:
    """One phase's memory on one GPU: (what, bytes) parts."""

    name: str
    parts: tuple[tuple[str, float], ...]

    @property
    def bytes(self) -> float:
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        shown = ", ".join(f"{what} {b / GIB:.1f}" for what, b in self.parts if b >= 0.05 * GIB)
        return f"{self.name}: {shown}"


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU estimate: every phase, the largest one, and the overhead outside the allocator."""

    task: str
    width: int
    height: int
    frames: int
    layout: GpuLayout
    modes: Modes
    image: bool
    tokens: int
    tokens_per_rank: int
    phases: tuple[Phase, ...]
    overhead_bytes: float
    profile: str = "wanops"

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.bytes)

    @property
    def allocated_gib(self) -> float:
        """What `torch.cuda.max_memory_allocated` would report at the peak."""
        return self.peak_phase.bytes / GIB

    @property
    def peak_gib(self) -> float:
        """What the GPU must hold: the allocated peak plus CUDA context and NCCL."""
        return (self.peak_phase.bytes + self.overhead_bytes) / GIB

    def describe(self) -> str:
        return (
            f"≈{self.peak_gib:.1f} GiB per GPU at {self.peak_phase.describe()} GiB; "
            f"CUDA context{' and NCCL' if self.layout.gpus > 1 else ''} "
            f"{self.overhead_bytes / GIB:.2f} GiB"
        )

    def as_dict(self) -> dict[str, Any]:
        """For logs and status: GiB figures, phase by phase."""
        return {
            "peakGiB": round(self.peak_gib, 2),
            "allocatedGiB": round(self.allocated_gib, 2),
            "peakPhase": self.peak_phase.name,
            "tokens": self.tokens,
            "tokensPerRank": self.tokens_per_rank,
            "phases": {
                p.name: {what: round(b / GIB, 2) for what, b in p.parts} for p in self.phases
            },
        }


def forward_activation_bytes(task: str | TaskSpec, tokens: int) -> float:
    """Device memory one of our DiT forwards (one CFG branch, compact time embedding) adds to its
    weights at `tokens` tokens: the calibrated c_arch (module docstring). The pipelines use it to
    decide whether both A14B experts fit on the device at once."""
    spec = TASKS[task] if isinstance(task, str) else task
    return tokens * WANOPS.forward_bytes_per_token[DIT_ARCH[spec.name].key]


def estimate_peak(
    task: str | TaskSpec,
    size: str | Size | tuple[int, int],
    frames: int | None = None,
    layout: GpuLayout | None = None,
    modes: Modes | None = None,
    *,
    image: bool = False,
    profile: Profile = WANOPS,
) -> MemoryEstimate:
    """The per-GPU peak of one generation, phase by phase (formulas in the module docstring).

    size: the output size, or for i2v-A14B the pixel budget (the video's aspect follows the image;
    its token count stays within rounding of the budget's). image: an input image is given (TI2V
    then runs per-token timesteps; i2v-A14B always has one).
    """
    spec = TASKS[task] if isinstance(task, str) else task
    if isinstance(size, str):
        size = Size.parse(size)
    elif isinstance(size, tuple):
        size = Size(*size)
    frames = spec.frame_num if frames is None else frames
    layout = layout or GpuLayout()
    modes = modes or Modes()
    arch = DIT_ARCH[spec.name]
    image = image or spec.needs_image
    world, sp = layout.gpus, layout.ulysses
    experts = len(spec.experts)

    n = tokens(spec, size.width, size.height, frames)
    padded = math.ceil(n / sp) * sp
    local = padded // sp

    # DiT weights
    bf16 = modes.convert_model_dtype and (profile.convert_under_fsdp or not layout.dit_fsdp)
    expert_bytes = arch.params * (2 if bf16 else 4)
    dtype = "bf16" if bf16 else "fp32"
    if modes.precision != "exact":  # weights in bf16 but the blocks' Linears (1 byte); scales are < 0.1%
        expert_bytes = arch.params * 2 - arch.block_linear_params
        dtype = "fp8"
    gathered = 0.0
    if layout.dit_fsdp:
        static = experts * expert_bytes / world
        static_what = f"DiT shards ({experts}×{dtype}/{world})"
        active, decode_dit = 0.0, static
        gathered = FSDP_GATHERED_BLOCKS * arch.params / arch.num_layers * 2
    elif world > 1 and profile.replicas_on_gpu:
        static, static_what = experts * expert_bytes, f"DiT ({experts}×{dtype}, whole)"
        active, decode_dit = 0.0, 0.0 if modes.offload_model else static
    else:
        static, static_what = 0.0, "DiT"
        active = expert_bytes
        # one process keeps the last expert through the decode unless offloaded; torchrun frees it
        decode_dit = expert_bytes if world == 1 and not modes.offload_model else 0.0

    # umT5
    if modes.t5_cpu:
        t5_encode = t5_after = 0.0
    elif layout.t5_fsdp:
        t5_encode = t5_after = T5_BYTES / world
    else:
        t5_encode = T5_BYTES
        leaves = modes.offload_model or (world == 1 and profile.t5_leaves_in_one_process)
        t5_after = 0.0 if leaves else T5_BYTES
    t5_gather = (
        FSDP_GATHERED_BLOCKS * T5_LAYER_PARAMS * 2 if layout.t5_fsdp and not modes.t5_cpu else 0
    )

    # activations of one DiT forward on this rank
    per_token = profile.per_token_time_always
    acts = local * profile.forward_bytes_per_token[arch.key]
    acts += _time_embedding_bytes(arch.dim, padded, local) if per_token else 0.0
    acts += local * arch.dim * ULYSSES_A2A_BYTES_PER_DIM if sp > 1 else 0.0

    # VAE
    vae_w = VAE_WEIGHT_BYTES[spec.vae_checkpoint]
    out = _out_video_bytes(size.width, size.height, frames)
    work = size.width * size.height * profile.decode_bytes_per_pixel[spec.vae_checkpoint]

    phases = [
        Phase(
            "encode",
            (("VAE weights", vae_w), ("umT5", t5_encode + t5_gather), (static_what, static)),
        ),
    ]
    if spec.needs_image:  # the image + F−1 zero frames through the VAE encoder (assumed ≈ decode)
        phases.append(
            Phase(
                "image encode",
                (("VAE encode", vae_w + out + work), ("umT5", t5_after), (static_what, static)),
            )
        )
    phases.append(
        Phase(
            "denoise",
            (
                (static_what if layout.dit_fsdp or static else f"DiT (1×{dtype})", static + active),
                ("FSDP gathered blocks", gathered),
                ("activations", acts),
                ("umT5", t5_after),
                ("VAE weights", vae_w),
            ),
        )
    )
    phases.append(
        Phase(
            "decode",
            (("VAE decode", vae_w + (out if profile.decode_holds_video else 0.0) + work),
             ("umT5", t5_after), ("DiT left", decode_dit)),
        )
    )
    overhead = CUDA_CONTEXT_BYTES + (NCCL_BYTES if world > 1 else 0.0)
    return MemoryEstimate(
        task=spec.name,
        width=size.width,
        height=size.height,
        frames=frames,
        layout=layout,
        modes=modes,
        image=image,
        tokens=n,
        tokens_per_rank=local,
        phases=tuple(phases),
        overhead_bytes=overhead,
        profile=profile.name,
    )


# -------------------------------------------------------------------------------- planner


def usable_gib(gpu_memory_gib: float) -> float:
    """What the planner lets an estimate use of a GPU."""
    return gpu_memory_gib * (1 - SAFETY_FRACTION)


def fits(estimate: MemoryEstimate, gpu_memory_gib: float) -> bool:
    return estimate.peak_gib <= usable_gib(gpu_memory_gib)


# ResolvedSpec attribute → the spec field a suggestion names.
_FIELDS = (
    ("gpus", "gpus"),
    ("ulysses", "parallelism.ulysses"),
    ("cfg_parallel", "parallelism.cfgParallel"),
    ("dit_fsdp", "parallelism.ditFsdp"),
    ("t5_fsdp", "parallelism.t5Fsdp"),
    ("offload_model", "memory.offloadModel"),
    ("convert_model_dtype", "memory.convertModelDtype"),
    ("t5_cpu", "memory.t5Cpu"),
)


@dataclass(frozen=True)
class Suggestion:
    """A change to the spec (dotted camelCase paths under `spec`; None = unset), the effective
    values it changes (field, before, after) and its estimate."""

    changes: tuple[tuple[str, Any], ...]
    effect: tuple[tuple[str, Any, Any], ...]
    estimate: MemoryEstimate

    def describe(self) -> str:
        shown = ", ".join(f"{f}={_json(after)}" for f, _, after in self.effect)
        return f"{shown} (≈{self.estimate.peak_gib:.1f} GiB)"


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate of a resolved spec against a GPU size, with what would fit when it does not."""

    estimate: MemoryEstimate
    gpu_memory_gib: float
    suggestions: tuple[Suggestion, ...] = field(default=())
    smallest: MemoryEstimate | None = None  # the smallest estimate tried, when nothing fits

    @property
    def fits(self) -> bool:
        return fits(self.estimate, self.gpu_memory_gib)

    @property
    def message(self) -> str:
        """Why it cannot fit and what would; empty when it fits."""
        if self.fits:
            return ""
        head = (
            f"estimated peak {self.estimate.peak_gib:.1f} GiB per GPU "
            f"({self.estimate.peak_phase.describe()} GiB) exceeds "
            f"{usable_gib(self.gpu_memory_gib):.1f} GiB usable of the "
            f"{self.gpu_memory_gib:g} GiB GPUs (spec.memory.gpuMemoryGiB)"
        )
        if self.suggestions:
            return head + "; would fit: " + "; or ".join(s.describe() for s in self.suggestions)
        tail = "; no layout up to the task's largest GPU count fits GPUs of this size"
        if self.smallest is not None:
            need = math.ceil(self.smallest.peak_gib / (1 - SAFETY_FRACTION))
            tail += (
                f" (the smallest estimate is {self.smallest.describe()}); "
                f"use GPUs with at least {need} GiB"
            )
        return head + tail

    def problems(self) -> list[Any]:
        """As `wanspec.validate.Problem`s (empty when it fits), for the CLI and the operator."""
        from wanspec.validate import Problem

        return [] if self.fits else [Problem("spec", self.message)]


def _json(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def estimate_resolved(resolved: Any, profile: Profile = WANOPS) -> MemoryEstimate:
    """The estimate of a `wanspec.validate.ResolvedSpec`."""
    return estimate_peak(
        resolved.task,
        Size(resolved.width, resolved.height),
        resolved.frames,
        GpuLayout(
            resolved.gpus,
            resolved.ulysses,
            resolved.cfg_parallel,
            resolved.dit_fsdp,
            resolved.t5_fsdp,
        ),
        Modes(resolved.offload_model, resolved.convert_model_dtype, resolved.t5_cpu, resolved.precision),
        image=resolved.spec.input_image is not None,
        profile=profile,
    )


def _set(spec: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value


def _try(
    base: Mapping[str, Any],
    resolved: Any,
    changes: tuple[tuple[str, Any], ...],
    profile: Profile,
) -> Suggestion | None:
    """The changed spec's effect and estimate if the changed spec is valid, else None."""
    from wanspec.validate import resolve, validate

    spec = _deep_copy(base)
    for path, value in changes:
        _set(spec, path, value)
    if validate(spec):
        return None
    after = resolve(spec)
    effect = tuple(
        (name, getattr(resolved, attr), getattr(after, attr))
        for attr, name in _FIELDS
        if getattr(resolved, attr) != getattr(after, attr)
    )
    return Suggestion(changes, effect, estimate_resolved(after, profile)) if effect else None


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def alternatives(resolved: Any) -> list[tuple[tuple[str, Any], ...]]:
    """Changes to try, cheapest first: memory modes on the same GPUs, then FSDP on them, then
    more GPUs (each count the task allows, FSDP on, Ulysses/CFG/pods derived)."""
    task = TASKS[resolved.task]
    modes: list[tuple[str, Any]] = []
    if not resolved.convert_model_dtype:
        modes.append(("memory.convertModelDtype", True))
    if not resolved.t5_cpu:
        modes.append(("memory.t5Cpu", True))
    if not resolved.offload_model and not (resolved.dit_fsdp or resolved.t5_fsdp):
        modes.append(("memory.offloadModel", True))
    tries: list[tuple[tuple[str, Any], ...]] = []
    for change in modes:  # one switch at a time, then all of them
        tries.append(_with_t5(change))
    if len(modes) > 1:
        tries.append(tuple(c for m in modes for c in _with_t5(m)))
    fsdp = (
        ("parallelism.ditFsdp", True),
        ("parallelism.t5Fsdp", None if resolved.t5_cpu else True),
        ("memory.offloadModel", False),
        ("memory.convertModelDtype", True),
    )
    if resolved.gpus > 1 and not (resolved.dit_fsdp and (resolved.t5_fsdp or resolved.t5_cpu)):
        tries.append(fsdp)
        tries.append(fsdp[:1] + (("parallelism.t5Fsdp", None), ("memory.t5Cpu", True)) + fsdp[2:])
    from wanspec.validate import valid_gpu_counts

    for gpus in valid_gpu_counts(task):
        if gpus <= resolved.gpus:
            continue
        more = (
            ("gpus", gpus),
            ("gpusPerPod", None),
            ("parallelism.ulysses", None),
            ("parallelism.cfgParallel", None),
        )
        tries.append(more + fsdp)
        tries.append(
            more + fsdp[:1] + (("parallelism.t5Fsdp", None), ("memory.t5Cpu", True)) + fsdp[2:]
        )
    return tries


def _with_t5(change: tuple[str, Any]) -> tuple[tuple[str, Any], ...]:
    """t5Cpu needs t5Fsdp off."""
    if change == ("memory.t5Cpu", True):
        return (("parallelism.t5Fsdp", None), change)
    return (change,)


def plan(
    resolved: Any, gpu_memory_gib: float, *, profile: Profile = WANOPS, max_suggestions: int = 3
) -> MemoryPlan:
    """Estimate a `ResolvedSpec`; if it cannot fit `gpu_memory_gib` GPUs, find (through the same
    estimator and the spec's own validation) up to `max_suggestions` changes that would: the first
    fitting memory-mode change, the first fitting FSDP change on the same GPUs, and the smallest
    GPU count that fits."""
    estimate = estimate_resolved(resolved, profile)
    if fits(estimate, gpu_memory_gib):
        return MemoryPlan(estimate, gpu_memory_gib)
    base = resolved.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    found: list[Suggestion] = []
    kinds: set[str] = set()
    smallest = estimate
    for changes in alternatives(resolved):
        paths = {p for p, _ in changes}
        kind = "gpus" if "gpus" in paths else "fsdp" if "parallelism.ditFsdp" in paths else "modes"
        if kind in kinds:
            continue
        suggestion = _try(base, resolved, changes, profile)
        if suggestion is None:
            continue
        if suggestion.estimate.peak_gib < smallest.peak_gib:
            smallest = suggestion.estimate
        if fits(suggestion.estimate, gpu_memory_gib):
            kinds.add(kind)
            found.append(suggestion)
            if len(found) == max_suggestions:
                break
    return MemoryPlan(estimate, gpu_memory_gib, tuple(found), None if found else smallest)


def apply_suggestion(spec: Mapping[str, Any], suggestion: Suggestion) -> dict[str, Any]:
    """The spec dict (camelCase) with a suggestion's changes made."""
    changed = _deep_copy(dict(spec))
    for path, value in suggestion.changes:
        _set(changed, path, value)
    return changed


__all__ = [
    "DIT_ARCH",
    "GIB",
    "OFFICIAL",
    "SAFETY_FRACTION",
    "WANOPS",
    "GpuLayout",
    "MemoryEstimate",
    "MemoryPlan",
    "Modes",
    "Phase",
    "Profile",
    "Suggestion",
    "alternatives",
    "apply_suggestion",
    "estimate_peak",
    "estimate_resolved",
    "fits",
    "plan",
    "tokens",
    "usable_gib",
]

"""What the three Wan2.2 pipelines share: loading, memory modes, checks, prompts, noise, the loop.

Matches the parts common to `wan/text2video.py`, `wan/image2video.py` and
`wan/textimage2video.py` of Wan-Video/Wan2.2@42bf4cf: `shared/wan22-spec.md` §6.4–6.5 (guidance,
expert choice), §7 (seed, noise, sampling), §11 (offload) and the precision map of §3.8 / §12.

Same seed, same noise. The initial latent is drawn exactly as upstream draws it: one call
`torch.randn(shape, dtype=float32, device=device, generator=torch.Generator(device).manual_seed(seed))`
with upstream's 4-D shape `[z, F_lat, H_lat, W_lat]`, and no other random number is drawn (both
solvers are deterministic). With the same seed, size, frame count and device type (CPU, or CUDA,
whose Philox generator is the same on every NVIDIA GPU) the initial noise is therefore
bit-identical to the official code's, so a user can reproduce an upstream video's starting point
exactly; the video itself agrees to the bf16 tolerances of §12, not bit for bit. A negative seed
picks one at random as upstream does (`random.randint(0, sys.maxsize)`); callers that must report
the seed resolve it first with `resolve_seed`.

Precision. With `dtype=torch.float32` every component (umT5 included) runs in fp32: the CPU parity
path. With bf16 (the CUDA default) the official map applies: umT5 in bf16; the DiT
weights stay fp32 as stored and its matmuls run in bf16 under autocast, as upstream's
`autocast(bf16)` does, unless `convert_model_dtype` casts the weights to bf16 (§11). The DiT keeps
its fp32 islands (time embedding, modulation, norms, head) either way. The VAE is where bf16 mode
leaves upstream's map: upstream encodes and decodes in fp32; we run the VAE's fast path
(`ChunkedVAE.set_fast`: bf16, channels-last, fused norms): at 720P on an H100 it decodes 2.6–3.3×
faster than fp32 in about a third of the memory, 51–55 dB PSNR against the fp32 decode
(bench/results/2026-11-25-h100-vae-fast.jsonl).

Memory modes (§11). The DiTs are loaded to the CPU and moved to the device when needed; each keeps
its host copy, so leaving the device is free (`residency.py`). `offload_model` (default True in a
single process, False under torchrun, as upstream) keeps only the active A14B expert on the device
and also moves umT5 back to the CPU after encoding and the DiT(s) after the loop. Without it, both
experts stay on the device when they fit (the second copied in while the first samples), else one
at a time as upstream. In a single process umT5 leaves the device after encoding either way (its
host copy stays, so that is free), which upstream does only with `offload_model`. `t5_cpu` keeps
umT5 on the CPU and encodes there. `convert_model_dtype` stores the DiT weights in bf16 (half the
memory); in one process on a GPU the cast happens on the GPU as the weights are copied in, and the
host copy stays the checkpoint's fp32 file mapping (`residency.py`).

The VAE's file is checked when the pipeline loads, and its weights go to the device when first
needed: before sampling to encode an image (I2V, TI2V image mode), else on a thread while the
DiT samples (`VAELoader`), off the path to the first step.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image
from torch import Tensor

from wan_core.checkpoint import readahead
from wan_core.checkpoint.dit import load_dit_experts
from wan_core.checkpoint.folder import inspect_folder
from wan_core.checkpoint.t5 import load_t5
from wan_core.checkpoint.vae import VAEFile, open_vae
from wan_core.models.dit import WanModel
from wan_core.models.t5 import T5Encoder
from wan_core.models.vae_blocks import ChunkedVAE
from wan_core.ops.compile import compile_blocks, compile_wanted, saved_folder
from wan_core.ops.quant import check_quantization, quantize_dit
from wan_core.pipelines.residency import Residency
from wan_core.prompt_cache import PromptCache, entry_variant
from wan_core.sampling import SOLVER_NAMES, cfg_combine, guide_scales, make_solver, select_expert
from wanspec.memory import SAFETY_FRACTION, forward_activation_bytes
from wanspec.tasks import DEFAULT_NEGATIVE_PROMPT, PATCH_SIZE, Size, TaskSpec, check_frame_num, get_task

if TYPE_CHECKING:
    from wan_core.parallel import ParallelLayout

# (step done, total steps, expert subfolder or None for the dense 5B model): progress for the runner.
ProgressCallback = Callable[[int, int, str | None], None]

log = logging.getLogger(__name__)

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts 0 … 2^64 − 1
_DTYPES = (torch.float32, torch.bfloat16)


def sequential_branches(
    model: Callable[..., Tensor], x: Tensor, t: Tensor, context: Tensor, context_null: Tensor, y: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The two CFG branches one after the other, as upstream (`wan_core.parallel.cfg` has the
    two-group alternative)."""
    return model(x, t, context, y), model(x, t, context_null, y)


def resolve_seed(seed: int) -> int:
    """A negative seed becomes a random one, as upstream's `random.randint(0, sys.maxsize)` (§7)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if seed > MAX_SEED:
        raise ValueError(f"seed {seed} is above the generator's maximum {MAX_SEED}")
    return seed if seed >= 0 else random.randint(0, sys.maxsize)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device | str) -> Tensor:
    """Upstream's initial latent: one fp32 `randn` of `shape` from a fresh generator on `device`.

    Bit-identical to the official code for the same seed, shape and device type (module docstring).
    """
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    return torch.randn(shape, dtype=torch.float32, device=device, generator=generator)


def default_offload_model() -> bool:
    """Upstream's `--offload_model` default: True for one process, False under torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB → [3, H, W] fp32 in [−1, 1]: torchvision's `to_tensor(img).sub_(0.5).div_(0.5)`."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = data.view(image.height, image.width, 3).permute(2, 0, 1).float().div(255)  # (3, H, W)
    return x.sub_(0.5).div_(0.5)


def check_image(img: object, task: TaskSpec) -> Image.Image:
    """The conditioning image as RGB; anything but a PIL image is refused with what to pass."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"{task.name}: img must be a PIL.Image.Image, got {type(img).__name__}")
    return img.convert("RGB")


def check_size(task: TaskSpec, size: str | tuple[int, int] | Size) -> Size:
    """`size` as `'W*H'`, `(W, H)` or `Size`; only the task's SUPPORTED_SIZES pass (§1.4)."""
    if isinstance(size, Size):
        parsed = size
    elif isinstance(size, str):
        parsed = Size.parse(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        parsed = Size(*size)
    else:
        raise ValueError(f"size must be 'W*H' or (W, H), got {size!r}")
    if parsed not in task.sizes:
        allowed = ", ".join(str(s) for s in task.sizes)
        raise ValueError(f"size {parsed} is not supported by {task.name}; supported sizes: {allowed}")
    return parsed


def check_max_area(task: TaskSpec, max_area: int) -> int:
    """An image task's pixel budget must be the area of one of its sizes (MAX_AREA_CONFIGS, §1.4)."""
    areas = sorted({s.area for s in task.sizes})
    if isinstance(max_area, bool) or not isinstance(max_area, int) or max_area not in areas:
        named = ", ".join(f"{a} ({' or '.join(str(s) for s in task.sizes if s.area == a)})" for a in areas)
        raise ValueError(f"max_area {max_area!r} is not one of {task.name}'s: {named}")
    return max_area


def check_multiple(task: TaskSpec, width: int, height: int) -> None:
    """Pixels must fill whole DiT patches of latents (stride × patch: 16 for A14B, 32 for 5B)."""
    step_h = task.vae_stride[1] * PATCH_SIZE[1]
    step_w = task.vae_stride[2] * PATCH_SIZE[2]
    if width <= 0 or height <= 0 or width % step_w or height % step_h:
        raise ValueError(f"{task.name}: {width}x{height} pixels are not positive multiples of {step_w}x{step_h}")


def expert_for_step(task: TaskSpec, t: int | Tensor, guide_scale: tuple[float, float]) -> tuple[str, float]:
    """The DiT ("" = the dense 5B) and guide scale for timestep t: the A14B switch of §6.5."""
    if task.boundary_timestep is None:
        return "", guide_scale[0]
    return select_expert(t, task.boundary_timestep, guide_scale)


@dataclass(frozen=True)
class LoopState:
    """The sampling loop after `step` steps: the sample and the solver's history, enough to go on
    later with the same result as a loop that never stopped."""

    step: int
    latent: Tensor
    solver: dict[str, Any]


class LoopCheckpoint(Protocol):
    """Where the loop keeps its state across an interruption (the runner: its object store).

    `load` runs once before the first step (None: start from step 0); `save` after every step and
    decides itself whether to keep that one (e.g. every N steps).
    """

    def load(self) -> LoopState | None: ...

    def save(self, state: LoopState) -> None: ...


@dataclass(frozen=True)
class SamplingOptions:
    """The checked sampling settings of one `generate` call, defaults filled in from the task."""

    frame_num: int
    shift: float
    sample_solver: str
    sampling_steps: int
    guide_scale: tuple[float, float]  # (low-noise, high-noise), upstream's order (§6.5)
    seed: int  # resolved: never negative
    offload_model: bool
    checkpoint: LoopCheckpoint | None = field(default=None, compare=False)  # resumable loop


@dataclass(frozen=True)
class FirstFrame:
    """TI2V image mode (§7.3): latent frame 0 is the image latent, pinned before and after every step."""

    z: Tensor  # [z, 1, h, w] normalised image latent
    mask: Tensor  # [z, F_lat, h, w]: 0 on latent frame 0, 1 elsewhere

    def pin(self, x: Tensor) -> Tensor:
        """x with frame 0 replaced by the image latent: `(1 − M)·z + M·x`, upstream's expression."""
        return (1.0 - self.mask) * self.z + self.mask * x

    def timesteps(self, t: Tensor) -> Tensor:
        """Per-token timesteps [1, L]: 0 on frame-0 tokens, t elsewhere (`mask[0][:, ::2, ::2]·t`)."""
        return (self.mask[0][:, :: PATCH_SIZE[1], :: PATCH_SIZE[2]] * t).flatten()[None]


def open_task_vae(task: TaskSpec, path: str | Path) -> VAEFile:
    """The task's VAE file, checked (the wrong VAE, a damaged file: refused here, before any load)."""
    return open_vae(path, kind="2.1" if task.vae_checkpoint == "Wan2.1_VAE.pth" else "2.2")


def load_task_vae(task: TaskSpec, path: str | Path, device: torch.device, dtype: torch.dtype) -> ChunkedVAE:
    """The task's VAE as the pipelines run it: exact fp32 (§5.5) in fp32 mode; in bf16 mode its
    fast path on whole frames, without spatial tiles (lossy at their seams; 720P fits in ≤ 8 GiB).
    The runner's decode-only retry loads it here too, so a retried decode equals the first one."""
    return VAELoader(open_task_vae(task, path), device, dtype).get()


class VAELoader:
    """A checked VAE file, loaded as `load_task_vae` loads it when first asked for (`get`), or on a
    thread once `start`ed: text-to-video needs the VAE only to decode, so the pipelines start it
    after the first denoising step, and its copy to the device (≈0.5 s of a TI2V-5B run's load,
    BENCHMARKS.md) runs while the DiT samples. The thread copies on its own CUDA stream, so the copies wait
    neither for the sampling's queued kernels nor it for them."""

    def __init__(self, file: VAEFile, device: torch.device, dtype: torch.dtype) -> None:
        self.file, self.device, self.dtype = file, device, dtype
        self._vae: ChunkedVAE | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Load on a thread, unless loaded or loading already."""
        if self._vae is None and self._thread is None:
            self._thread = threading.Thread(target=self._load_aside, name="vae-load", daemon=True)
            self._thread.start()

    def get(self) -> ChunkedVAE:
        """The VAE on the device: loaded now, or when the thread has loaded it (its error raised here)."""
        if self._vae is None:
            if self._thread is None:
                self._vae = self._load()
            else:
                self._thread.join()
                if self._error is not None:
                    raise self._error
        assert self._vae is not None
        return self._vae

    def pending_bytes(self) -> int:
        """What the VAE will take on the device when loaded; 0 once it is."""
        if self._vae is not None:
            return 0
        return sum(t.numel() for t in self.file.state.values()) * self.dtype.itemsize

    def _load(self) -> ChunkedVAE:
        vae = self.file.load(device=self.device, dtype=self.dtype)
        return vae.set_fast() if self.dtype == torch.bfloat16 else vae

    def _load_aside(self) -> None:
        try:
            if self.device.type != "cuda":
                self._vae = self._load()
                return
            side = torch.cuda.Stream(self.device)
            with torch.cuda.device(self.device), torch.cuda.stream(side):
                vae = self._load()
            side.synchronize()  # before `get` hands it to the main stream
            self._vae = vae
        except BaseException as err:  # noqa: BLE001  (raised where the VAE is asked for)
            self._error = err


class WanPipeline:
    """A loaded task checkpoint (umT5, VAE, DiT or A14B experts) and the steps every pipeline shares.

    Subclasses add `generate` (checks, then numbered steps). Build them with `load_pipeline`.
    """

    def __init__(
        self,
        task: str,
        ckpt_dir: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        offload_model: bool | None = None,
        convert_model_dtype: bool = False,
        t5_cpu: bool = False,
        parallel: ParallelLayout | None = None,
        precision: str = "exact",
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.task = get_task(task)
        # Under torchrun: the layout's device, DiT/umT5 built by wan_core.parallel (issue 7).
        self.parallel = parallel if parallel is not None and parallel.distributed else None
        device = device or (self.parallel.device if self.parallel else None)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {self.dtype}")
        self.offload_model = default_offload_model() if offload_model is None else bool(offload_model)
        self.t5_cpu = t5_cpu
        self._check_offload(self.offload_model)
        check_quantization(precision, self.device, self.parallel is not None and self.parallel.dit_fsdp)
        if precision != "exact" and self.dtype != torch.bfloat16:
            raise ValueError(f"precision {precision!r} runs the DiT in bfloat16; got dtype {self.dtype}")
        self.precision = precision

        # One pre-flight of the whole folder (headers only) so a bad folder fails before any load.
        self.folder = folder = inspect_folder(ckpt_dir, self.task.name)
        # With a prompt cache, umT5 loads at the first prompt the cache misses (under torchrun:
        # that any rank misses, so that every rank loads, shards and encodes alike).
        self.prompt_cache = prompt_cache
        self._text_encoder: T5Encoder | None = None
        self._t5_residency: Residency | None = None
        if self.prompt_cache is None:
            self._load_t5()
        # The VAE lives on the device for the whole run, from when it is first needed (`vae`).
        self._vae_loader = VAELoader(open_task_vae(self.task, folder.vae), self.device, self.dtype)
        # The DiTs start on the CPU (upstream's init-on-CPU); fp32 as stored unless converted
        # (quantized modes start from bf16). In one process on a GPU, `convert_model_dtype` casts
        # as each weight lands on it instead (same bits, seconds sooner, no second host copy).
        cast_on_device = (convert_model_dtype and precision == "exact" and self.parallel is None
                          and self.device.type == "cuda" and self.dtype != torch.float32)
        stored = self.dtype if (convert_model_dtype or precision != "exact") and not cast_on_device else None
        compile = compile_wanted(self.device)
        if self.parallel is None:
            self.experts: dict[str, WanModel] = load_dit_experts(
                folder.root, device="cpu", dtype=stored, model_type=self.task.model_type,
            )
            for model in self.experts.values():
                if precision != "exact":
                    quantize_dit(model, precision)
                if compile:  # exact blocks: kept compiled across processes (wan_core.ops.compile)
                    compile_blocks(model, saved=saved_folder() if precision == "exact" else None)
            self._cfg_branches = sequential_branches
        else:  # FSDP-sharded on the device, or replicas on the CPU with Ulysses hooks
            from wan_core.parallel import cfg_parallel_branches, load_parallel_dits

            self.experts = load_parallel_dits(folder.root, self.parallel, dtype=stored, param_dtype=self.dtype,
                                              model_type=self.task.model_type, compile=compile, precision=precision)
            self._cfg_branches = cfg_parallel_branches(self.parallel) if self.parallel.cfg == 2 else sequential_branches
        # Where the DiTs live between uses (residency.py); FSDP shards stay on their GPUs.
        fsdp = self.parallel is not None and self.parallel.dit_fsdp
        self._residency = None if fsdp else Residency(self.experts, self.device, cast=self.dtype if cast_on_device else None)
        weights = self.dtype if cast_on_device else next(iter(self.experts.values())).patch_embedding.weight.dtype
        # fp32 weights with a bf16 compute dtype: upstream's autocast(bf16) around the DiT.
        self._dit_autocast = self.dtype != torch.float32 and weights == torch.float32

    @property
    def text_encoder(self) -> T5Encoder:
        """umT5: loaded at construction, or with a prompt cache at the first miss (`_load_t5`)."""
        return self._text_encoder if self._text_encoder is not None else self._load_t5()

    def _load_t5(self) -> T5Encoder:
        """umT5 created on the CPU; it visits the device only to encode (§4.4), through a
        residency in one process unless it encodes on the CPU (under torchrun it is FSDP-sharded
        onto the device with t5_fsdp, else moved as upstream)."""
        encoder = load_t5(self.folder.root, device="cpu", dtype=self.dtype)
        if self.parallel is not None:
            from wan_core.parallel import parallelize_t5

            encoder = parallelize_t5(encoder, self.parallel)
        elif not self.t5_cpu:
            self._t5_residency = Residency({"t5": encoder.model}, self.device)
        self._text_encoder = encoder
        return encoder

    # -- checks --------------------------------------------------------------------------------

    def sampling_options(
        self,
        *,
        frame_num: int | None = None,
        shift: float | None = None,
        sample_solver: str = "unipc",
        sampling_steps: int | None = None,
        guide_scale: float | tuple[float, float] | None = None,
        seed: int = -1,
        offload_model: bool | None = None,
    ) -> SamplingOptions:
        """Check the sampling arguments (None → the task's default) before anything runs (§8.3)."""
        task = self.task
        frame_num = task.frame_num if frame_num is None else frame_num
        if isinstance(frame_num, bool) or not isinstance(frame_num, int):
            raise ValueError(f"frame_num must be an integer, got {frame_num!r}")
        check_frame_num(frame_num)
        steps = task.sample_steps if sampling_steps is None else sampling_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampling_steps must be an integer >= 1, got {steps!r}")
        shift = task.sample_shift if shift is None else shift
        if isinstance(shift, bool) or not isinstance(shift, Real) or not math.isfinite(shift) or shift <= 0:
            raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
        if sample_solver not in SOLVER_NAMES:
            raise ValueError(f"unknown sample_solver {sample_solver!r}; valid solvers: {', '.join(SOLVER_NAMES)}")
        scales = guide_scales(task.guide_scale if guide_scale is None else guide_scale)
        if not all(math.isfinite(g) for g in scales):
            raise ValueError(f"guide_scale must be finite, got {guide_scale!r}")
        if not task.is_moe and scales[0] != scales[1]:
            raise ValueError(f"{task.name} has one model, so one guide scale; got {guide_scale!r}")
        offload_model = self.offload_model if offload_model is None else bool(offload_model)
        self._check_offload(offload_model)
        return SamplingOptions(
            frame_num=frame_num, shift=float(shift), sample_solver=sample_solver, sampling_steps=steps,
            guide_scale=scales, seed=resolve_seed(seed), offload_model=offload_model,
        )

    @property
    def vae(self) -> ChunkedVAE:
        """The VAE on the device (loaded now if no thread has loaded it yet)."""
        return self._vae_loader.get()

    def _check_offload(self, offload_model: bool) -> None:
        """FSDP shards live on their GPUs; moving them to the CPU between uses is not supported."""
        if offload_model and self.parallel is not None and (self.parallel.dit_fsdp or self.parallel.t5_fsdp):
            raise ValueError("offload_model cannot be combined with FSDP (dit_fsdp/t5_fsdp): sharded weights stay on their GPUs")

    # -- shared steps --------------------------------------------------------------------------

    def encode_prompts(self, prompt: str, n_prompt: str, offload_model: bool) -> tuple[Tensor, Tensor]:
        """(context, context_null), each [1, text_len, text_dim] zero-padded, on the device (§4.3).

        An empty negative prompt means the task's default one (§1.3). The two prompts are encoded
        as two batch-1 calls, as upstream does.
        """
        start = time.perf_counter()
        where = torch.device("cpu") if self.t5_cpu else self.device
        prompts = [prompt, n_prompt or DEFAULT_NEGATIVE_PROMPT]
        cache = self.prompt_cache
        contexts: list[Tensor | None] = [None, None]
        if cache is not None:
            keys, kind = [cache.digest(self.folder.root, p) for p in prompts], entry_variant(self.dtype, where)
            contexts = [cache.load(k, kind, where) for k in keys]
        missing = [i for i, c in enumerate(contexts) if c is None]
        if cache is not None and self.parallel is not None:
            from wan_core.parallel import any_rank

            # umT5 may be sharded: a miss on any rank has every rank encode both prompts.
            missing = list(range(len(prompts))) if any_rank(bool(missing), self.parallel) else []
        if missing:
            encoder = self.text_encoder
            home = self._t5_residency
            if home is not None:
                home.activate("t5")
            else:
                encoder.model.to(where)
            for i in missing:
                contexts[i] = encoder.encode([prompts[i]], where)[0]
                if cache is not None and (self.parallel is None or self.parallel.is_main):
                    cache.store(keys[i], kind, contexts[i])  # one writer per entry
            if home is not None:
                # In one process umT5 leaves the device after encoding whatever offload_model
                # says (upstream keeps it there without offload): it is used once per video,
                # leaving costs no copy (its host copy stays), and its 11 GB go to the DiTs.
                home.release("t5")
            elif offload_model and not self.t5_cpu:
                encoder.model.to("cpu")
        how = f"umT5 on {where}" if missing else "all from the prompt cache"
        log.info("prompts encoded in %.1f s (%s)", time.perf_counter() - start, how)
        cfg = next(iter(self.experts.values())).cfg
        padded = []
        for c in contexts:  # rows n_i..511 are exact zeros (§3.3)
            out = c.new_zeros(1, cfg.text_len, c.shape[1], device=self.device)
            out[0, : c.shape[0]] = c.to(self.device)
            padded.append(out)
        return padded[0], padded[1]

    def _active_dit(self, name: str, keep_others: bool) -> WanModel:
        """The DiT `name` on the device (upstream's `_prepare_model_for_timestep`, §11): the others
        released first unless `keep_others` (both A14B experts fit, see `_both_fit`)."""
        if self._residency is not None:
            self._residency.activate(name, keep_others)
        return self.experts[name]

    def _both_fit(self, experts: list[str], latent: Tensor, opts: SamplingOptions) -> bool:
        """Whether every expert the loop still needs may stay on the device at once.

        Only with `offload_model=False` (True asks for the least device memory: one expert at a
        time, as upstream) and when the free device memory covers the experts not yet there plus
        one forward's activations (wanspec's calibrated estimate) and the VAE, if it is still to
        load, within the planner's margin.
        Then the next expert is copied in while the current one samples, and no switch waits.
        """
        if opts.offload_model or len(experts) < 2 or self._residency is None or self.device.type != "cuda":
            return False
        missing = sum(self._residency.nbytes(n) for n in experts if not self._residency.on_device(n))
        missing += self._vae_loader.pending_bytes()  # it loads while they sample
        tokens = latent.shape[1] * (latent.shape[2] // PATCH_SIZE[1]) * (latent.shape[3] // PATCH_SIZE[2])
        free, total = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        need, room = missing + forward_activation_bytes(self.task, tokens), free + cached - total * SAFETY_FRACTION
        log.info("%s: %.1f GiB needed, %.1f GiB free", "both experts stay on the GPU" if need <= room
                 else "one expert on the GPU at a time", need / 2**30, room / 2**30)
        return need <= room

    def _dit_precision(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self._dit_autocast else nullcontext()

    def denoise(
        self,
        latent: Tensor,
        context: Tensor,
        context_null: Tensor,
        opts: SamplingOptions,
        *,
        y: Tensor | None = None,
        first_frame: FirstFrame | None = None,
        callback: ProgressCallback | None = None,
    ) -> Tensor:
        """The sampling loop (§7.1 step 5): expert and guide scale per step, CFG, one solver step.

        y: I2V-A14B conditioning [20, F_lat, h, w], given to both CFG branches. first_frame: TI2V
        image mode (per-token timesteps, re-pinned after every step). Returns the final latent.
        """
        solver = make_solver(opts.sample_solver)
        solver.set_timesteps(opts.sampling_steps, opts.shift, device=self.device)
        y_batch = None if y is None else y[None]
        x, start = latent, 0
        if opts.checkpoint is not None and (saved := opts.checkpoint.load()) is not None:
            solver.load_state_dict(saved.solver)
            x, start = saved.latent.to(self.device), saved.step
        plan = list(dict.fromkeys(expert_for_step(self.task, t, opts.guide_scale)[0] for t in solver.timesteps[start:]))
        keep = self._both_fit(plan, x, opts)
        expert = plan[0] if plan else next(iter(self.experts))
        for i, t in enumerate(solver.timesteps):
            if i < start:  # done before the interruption
                continue
            expert, scale = expert_for_step(self.task, t, opts.guide_scale)
            moved = time.perf_counter()
            model = self._active_dit(expert, keep_others=keep)
            if i == start:  # a cold start's second half: the first DiT's copy here, then its compile
                log.info("%s on %s in %.1f s", expert or "DiT", self.device, time.perf_counter() - moved)
            timestep = first_frame.timesteps(t) if first_frame is not None else t[None]
            with self._dit_precision():
                v_cond, v_uncond = self._cfg_branches(model, x[None], timestep, context, context_null, y_batch)
            x = solver.step(cfg_combine(v_cond[0], v_uncond[0], scale), x)
            if i == start:  # the first step queued: the VAE (if still on the host) loads beside the rest
                self._vae_loader.start()
            if i == start and len(plan) > 1:  # after the first step (and its compile): the next experts
                if keep:  # copied in on a side stream
                    for name in plan[1:]:
                        self._residency.prefetch(name)
                elif self._residency is not None:  # one at a time: their files in the page cache before the switch
                    readahead.start([f for name in plan[1:] for f in readahead.dit_files(self.folder.dits[name])])
            if first_frame is not None:
                x = first_frame.pin(x)
            if opts.checkpoint is not None:
                opts.checkpoint.save(LoopState(i + 1, x, solver.state_dict()))
            if callback is not None:
                callback(i + 1, opts.sampling_steps, expert or None)
        if self._residency is not None and (opts.offload_model or keep):
            # offload: every DiT leaves the device; kept experts: only the last stays, as upstream
            self._residency.release_all(except_=None if opts.offload_model else expert)
            self._empty_cache()
        return x

    def decode(self, latent: Tensor) -> Tensor | None:
        """[z, F_lat, h, w] → video [3, F, H, W] fp32 in [−1, 1] (§5.5).

        Under torchrun only rank 0 decodes (others return None, as upstream), after the DiTs
        give up their device memory so the decode does not add to the sampling peak.
        """
        return self.vae.decode(latent[None])[0] if self._decoder_ready() else None

    def decode_stream(self, latent: Tensor) -> Iterator[Tensor] | None:
        """`decode`'s video as the VAE computes it, [3, f, H, W] pieces in frame order (None off
        rank 0): `save_video` encodes each while the next decodes."""
        if not self._decoder_ready():
            return None
        return (piece[0] for piece in self.vae.decode_pieces(latent[None]))

    def _decoder_ready(self) -> bool:
        """Whether this rank decodes; under torchrun rank 0 first frees what the DiTs held."""
        if self.parallel is None:
            return True
        if not self.parallel.is_main:
            return False
        if self._residency is not None:  # replicas leave the GPU; FSDP shards hold 1/N and no activations
            self._residency.release_all()
        self._empty_cache()
        return True

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

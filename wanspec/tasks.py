"""Per-task facts of Wan2.2: sizes, frame rule, heads, checkpoint files and sampling defaults.

The only copy of these numbers in wanops. Values follow `shared/wan22-spec.md` §1 (from the
official `wan/configs/*.py` at Wan-Video/Wan2.2@42bf4cf); each field says where it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# §1.3 / wan/configs/shared_config.py: used whenever the negative prompt is empty (always, upstream).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# §8.1 / generate.py EXAMPLE_PROMPT: the prompt used when none is given.
EXAMPLE_PROMPT_T2V = (
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a "
    "spotlighted stage."
)
EXAMPLE_PROMPT_I2V = (
    "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The fluffy-"
    "furred feline gazes directly at the camera with a relaxed expression. Blurred beach scenery "
    "forms the background featuring crystal-clear waters, distant green hills, and a blue sky dotted "
    "with white clouds. The cat assumes a naturally relaxed posture, as if savoring the sea breeze "
    "and warm sunlight. A close-up shot highlights the feline's intricate details and the refreshing "
    "atmosphere of the seaside."
)

T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"  # §1.2 shared_config.t5_checkpoint
DIT_SINGLE = "diffusion_pytorch_model.safetensors"  # §2.1 a DiT folder: one file, or shards
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"  # listed by this index's weight_map
T5_TOKENIZER = "google/umt5-xxl"  # §1.2 shared_config.t5_tokenizer (a folder inside the checkpoint)
T5_TOKENIZER_FILE = "tokenizer.json"  # the file of that folder the encoder reads (the tokenizers library)
TEXT_LEN = 512  # §1.2 shared_config.text_len: prompts are padded/truncated to 512 tokens
NUM_TRAIN_TIMESTEPS = 1000  # §1.2: t = int(sigma * 1000)
PATCH_SIZE = (1, 2, 2)  # §1.2 DiT patch (t, h, w)
HEAD_DIM = 128  # §1.2: every Wan2.2 DiT has 128-wide heads
HIGH_NOISE_EXPERT = "high_noise_model"  # §2.1 A14B subfolders
LOW_NOISE_EXPERT = "low_noise_model"
# DiT precision: "exact" matches the official numbers; the others are opt-in lossy modes
# (wan_core.ops.quant; their measured quality cost is in BENCHMARKS.md): "fp8" runs the blocks'
# Linear layers as FP8 GEMMs, "fp8-full" also their self-attention (cuDNN's FP8 kernel, Hopper).
PRECISIONS = ("exact", "fp8", "fp8-full")
FP8_ATTENTION_PRECISIONS = ("fp8-full",)


@dataclass(frozen=True)
class Size:
    """A `W*H` size string as upstream writes it (`'1280*720'` is 1280 wide, 720 high)."""

    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Size:
        parts = text.replace("x", "*").split("*")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size {text!r} is not of the form WIDTH*HEIGHT, e.g. '1280*720'")
        return cls(int(parts[0]), int(parts[1]))

    @property
    def area(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}*{self.height}"


@dataclass(frozen=True)
class TaskSpec:
    """What one task needs: its checkpoint layout, architecture facts and sampling defaults."""

    name: str
    model_type: str  # DiT config.json model_type (§2.1)
    experts: tuple[str, ...]  # DiT subfolders; ("",) = weights at the folder root (§2.1)
    vae_checkpoint: str  # §1.2
    vae_stride: tuple[int, int, int]  # (t, h, w) pixels per latent cell, §1.2
    z_dim: int  # latent channels, §1.2
    dit_in_dim: int  # config.json in_dim, §1.2
    dit_out_dim: int
    num_heads: int  # §1.2; Ulysses degrees must divide it
    sizes: tuple[Size, ...]  # SUPPORTED_SIZES, §1.4
    default_size: Size
    frame_num: int  # default frames, §1.2
    fps: int  # sample_fps, §1.2
    sample_shift: float
    sample_steps: int
    guide_scale: tuple[float, float]  # (low-noise, high-noise) as upstream orders them, §6.5
    boundary: float | None  # expert switch at t >= boundary * 1000; None for dense models
    needs_image: bool  # i2v-A14B requires an image; ti2v-5B takes one optionally
    accepts_image: bool

    @property
    def is_moe(self) -> bool:
        return len(self.experts) == 2

    @property
    def boundary_timestep(self) -> float | None:
        return None if self.boundary is None else self.boundary * NUM_TRAIN_TIMESTEPS

    def ulysses_degrees(self) -> list[int]:
        """Every Ulysses degree the heads allow (40 heads: 1,2,4,5,8,…; 24 heads: 1,2,3,4,6,…)."""
        return [d for d in range(1, self.num_heads + 1) if self.num_heads % d == 0]


_A14B_SIZES = tuple(Size.parse(s) for s in ("720*1280", "1280*720", "480*832", "832*480"))
_5B_SIZES = tuple(Size.parse(s) for s in ("704*1280", "1280*704"))

TASKS: dict[str, TaskSpec] = {
    "t2v-A14B": TaskSpec(
        name="t2v-A14B", model_type="t2v", experts=(HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT),
        vae_checkpoint="Wan2.1_VAE.pth", vae_stride=(4, 8, 8), z_dim=16, dit_in_dim=16,
        dit_out_dim=16, num_heads=40, sizes=_A14B_SIZES, default_size=Size(1280, 720),
        frame_num=81, fps=16, sample_shift=12.0, sample_steps=40, guide_scale=(3.0, 4.0),
        boundary=0.875, needs_image=False, accepts_image=False,
    ),
    "i2v-A14B": TaskSpec(
        name="i2v-A14B", model_type="i2v", experts=(HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT),
        vae_checkpoint="Wan2.1_VAE.pth", vae_stride=(4, 8, 8), z_dim=16, dit_in_dim=36,
        dit_out_dim=16, num_heads=40, sizes=_A14B_SIZES, default_size=Size(1280, 720),
        frame_num=81, fps=16, sample_shift=5.0, sample_steps=40, guide_scale=(3.5, 3.5),
        boundary=0.900, needs_image=True, accepts_image=True,
    ),
    "ti2v-5B": TaskSpec(
        name="ti2v-5B", model_type="ti2v", experts=("",), vae_checkpoint="Wan2.2_VAE.pth",
        vae_stride=(4, 16, 16), z_dim=48, dit_in_dim=48, dit_out_dim=48, num_heads=24,
        sizes=_5B_SIZES, default_size=Size(1280, 704), frame_num=121, fps=24,
        sample_shift=5.0, sample_steps=50, guide_scale=(5.0, 5.0), boundary=None,
        needs_image=False, accepts_image=True,
    ),
}


def get_task(name: str) -> TaskSpec:
    """The task by its upstream key; an unknown key names the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def check_frame_num(frame_num: int) -> None:
    """Frames must be 4n+1 (§8.3: upstream does not check, and i2v crashes otherwise)."""
    if frame_num < 1 or (frame_num - 1) % 4:
        lower = max(1, 4 * ((frame_num - 1) // 4) + 1)
        raise ValueError(
            f"frame count {frame_num} is not of the form 4n+1; nearest valid: {lower} or {lower + 4}"
        )


def latent_frames(frame_num: int) -> int:
    """Latent frames for a 4n+1 video: F_lat = (F-1)/4 + 1 (the VAE's temporal stride is 4)."""
    check_frame_num(frame_num)
    return (frame_num - 1) // 4 + 1


def latent_shape(task: TaskSpec, size: Size, frame_num: int) -> tuple[int, int, int, int]:
    """[z, F_lat, H/s, W/s] for an exact output size (t2v paths, §7.1, §7.3)."""
    _, sh, sw = task.vae_stride
    return (task.z_dim, latent_frames(frame_num), size.height // sh, size.width // sw)


def seq_len(latent_hw_f: tuple[int, int, int], sp_size: int = 1) -> int:
    """DiT tokens for (F_lat, H_lat, W_lat), rounded up to a multiple of the Ulysses degree (§7.1)."""
    f, h, w = latent_hw_f
    tokens = f * (h // PATCH_SIZE[1]) * (w // PATCH_SIZE[2])
    return math.ceil(tokens / sp_size) * sp_size

"""Image preprocessing and conditioning against the spec's formulas and worked examples (§7.2, §7.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wan_core.pipelines.common import to_tensor
from wan_core.pipelines.i2v import conditioning_video, first_frame_mask, i2v_latent_size
from wan_core.pipelines.ti2v import best_output_size, resize_and_crop


def test_i2v_size_of_the_spec_example() -> None:
    """§1.4: the 832×1104 example image in the 1280*720 budget → latent 138×104, video 832×1104."""
    assert i2v_latent_size(832, 1104, 1280 * 720) == (138, 104)
    assert i2v_latent_size(1280, 720, 1280 * 720) == (90, 160)  # already the budget's shape
    assert i2v_latent_size(1000, 1000, 832 * 480) == (78, 78)  # ⌊√399360⌋ = 631 → 78 (even)


@pytest.mark.parametrize(("image", "expected"), [
    ((1280, 720), (1248, 704)), ((1920, 1080), (1248, 704)), ((832, 1104), (800, 1088)),
    ((1000, 1000), (960, 928)), ((640, 480), (1088, 800)),
])
def test_best_output_size_spec_examples(image: tuple[int, int], expected: tuple[int, int]) -> None:
    assert best_output_size(*image, 32, 32, 1280 * 704) == expected


def test_resize_and_crop_covers_then_centres() -> None:
    """LANCZOS to cover (ow, oh) keeping the aspect, then a centred crop (§7.3 step 2)."""
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 255, 255), (140, 40, 160, 60))  # a white square in the centre
    out = resize_and_crop(image, 64, 64)  # scale 0.64 → 192×64, crop x from 64
    assert out.size == (64, 64)
    pixels = np.asarray(out)[:, :, 0]
    assert pixels[32, 32] > 200 and pixels[0, 0] == 0 and pixels[63, 63] == 0
    resized = image.resize((192, 64), Image.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(resized)[:, 64:128])


def test_to_tensor_is_torchvisions() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    want = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(to_tensor(Image.fromarray(rgb)), want)


def test_conditioning_video_is_bicubic_frame_then_zeros() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    video = conditioning_video(image, 9, 16, 32)
    assert video.shape == (3, 9, 16, 32) and not video[:, 1:].any()
    want = F.interpolate(to_tensor(image)[None], size=(16, 32), mode="bicubic", align_corners=False)[0]
    assert torch.equal(video[:, 0], want)  # no antialias, no clamp: values may leave [−1, 1]
    same = conditioning_video(image, 1, 30, 50)
    assert torch.equal(same[:, 0], to_tensor(image))  # at the image's own size: unchanged


def test_first_frame_mask() -> None:
    """[4, F_lat, h, w]: ones on latent frame 0 (its 4 folded pixel frames), zeros elsewhere."""
    mask = first_frame_mask(9, 2, 3)
    assert mask.shape == (4, 3, 2, 3)
    assert (mask[:, 0] == 1).all() and (mask[:, 1:] == 0).all()
    assert first_frame_mask(1, 2, 3).shape == (4, 1, 2, 3)

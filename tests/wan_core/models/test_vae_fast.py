"""The VAE fast path (`ChunkedVAE.set_fast`) against the exact path, tiny configs on the CPU.

In fp32 the fast path must compute the same function as the exact path (its buffers, caches, frame
pieces, layouts and broadcast adds are all exact rewrites): relative error ≤ 1e-5. In bf16 it
must stay within the tolerance the GPU benchmark holds it to at full size (PSNR ≥ 40 dB against
the fp32 decode). The Triton kernel itself runs here in Triton's CPU interpreter. 9 frames =
3 latent frames: first chunk, second chunk and steady state (§5.4), each cut into frame pieces.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor

from wan_core.models.vae2_1 import Wan21VAE, Wan21VAEConfig
from wan_core.models.vae2_2 import DupUp3D, Wan22VAE, Wan22VAEConfig
from wan_core.testing.diffusers_vae import random_vae

CASES = {"2.1": (Wan21VAE, Wan21VAEConfig.tiny(), (16, 24)), "2.2": (Wan22VAE, Wan22VAEConfig.tiny(), (32, 48))}
FRAMES = 9


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def psnr(a: Tensor, b: Tensor) -> float:
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))  # [−1, 1]: peak-to-peak 2


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> dict[str, object]:
    """Exact fp32 decode and encode of one latent and one video: the reference for every check."""
    model_cls, config, (height, width) = CASES[request.param]
    exact = random_vae(model_cls, config)
    st, sh, sw = exact.stride
    latents = torch.randn(1, config.z_dim, (FRAMES - 1) // st + 1, height // sh, width // sw,
                          generator=torch.Generator().manual_seed(2))
    video = torch.rand(1, 3, FRAMES, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return {"model_cls": model_cls, "config": config, "latents": latents, "video": video,
            "decoded": exact.decode(latents), "encoded": exact.encode(video)}


def test_fast_path_in_fp32_is_the_exact_function(case: dict[str, object]) -> None:
    """One frame per piece (the hardest split: every causal conv sees its history from the cache)."""
    fast = random_vae(case["model_cls"], case["config"]).set_fast(torch.float32, frames_per_piece=1)
    assert rel_err(fast.decode(case["latents"]), case["decoded"]) <= 1e-5
    assert rel_err(fast.encode(case["video"]), case["encoded"]) <= 1e-5
    assert torch.backends.cudnn.benchmark is False  # the autotuner flag is put back after each call


def test_fast_path_in_bf16_tracks_fp32(case: dict[str, object]) -> None:
    fast = random_vae(case["model_cls"], case["config"]).set_fast()  # the pipelines' setting
    assert next(fast.parameters()).dtype == torch.bfloat16
    assert fast.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    video = fast.decode(case["latents"])
    assert video.dtype == torch.float32 and video.shape == case["decoded"].shape
    assert psnr(video, case["decoded"]) >= 40.0
    assert rel_err(fast.encode(case["video"]), case["encoded"]) <= 2e-2


@pytest.mark.parametrize("fast", [False, True])
def test_decode_pieces_are_the_decode_in_order(case: dict[str, object], fast: bool) -> None:
    """The stream the generate command encodes from: 1 frame, then 4 per latent frame, and
    together exactly `decode` (the same computation, not a re-run with other numerics)."""
    vae = random_vae(case["model_cls"], case["config"])
    if fast:
        vae.set_fast(torch.float32, frames_per_piece=1)
    pieces = list(vae.decode_pieces(case["latents"]))
    assert [p.shape[2] for p in pieces] == [1, 4, 4]
    assert torch.equal(torch.cat(pieces, dim=2), vae.decode(case["latents"]))
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize(("in_dim", "out_dim", "factor_t", "factor_s"),
                         [(8, 8, 2, 2), (8, 4, 1, 2), (4, 4, 1, 2), (4, 2, 2, 2), (16, 2, 2, 2), (3, 1, 2, 3)])
@pytest.mark.parametrize("first_chunk", [False, True])
def test_dupup_add_to_is_the_same_sum(
    in_dim: int, out_dim: int, factor_t: int, factor_s: int, first_chunk: bool
) -> None:
    """Broadcast adds (repeats 8 and 2 as published; 4; 1) and the fallback (repeats 6 over a
    2×3×3 cell: no product of whole trailing digits) give bitwise the forward's sum, in place."""
    up = DupUp3D(in_dim, out_dim, factor_t=factor_t, factor_s=factor_s)
    x = torch.randn(2, in_dim, 1 if first_chunk else 3, 3, 5)
    want = up(x, first_chunk)
    out = torch.randn_like(want)
    expected = out + want
    assert torch.equal(up.add_to(out, x, first_chunk), expected)
    assert torch.equal(out, expected)


def test_triton_kernel_in_the_interpreter() -> None:
    """The fused RMS-norm + SiLU kernel (run by Triton's CPU interpreter) against the eager formula:
    two batch items written into the last frames of a larger buffer, whose front frames stay untouched."""
    pytest.importorskip("triton")
    script = textwrap.dedent("""
        import torch
        from wan_core.models import vae_kernels as k
        for c in (12, 96):
            x = torch.randn(2, c, 3, 4, 5).to(torch.bfloat16).contiguous(memory_format=k.CL3D)
            gamma = (1 + 0.1 * torch.randn(c, 1, 1, 1)).to(torch.bfloat16)
            buf = torch.full((2, c, 5, 4, 5), float("nan"), dtype=torch.bfloat16).contiguous(memory_format=k.CL3D)
            k._launch(x, gamma, c**0.5, buf[:, :, 2:], True)
            want = k._eager(x, gamma.reshape(1, -1, 1, 1, 1), c**0.5, True).to(torch.bfloat16)
            torch.testing.assert_close(buf[:, :, 2:], want, rtol=1e-2, atol=1e-2)
            assert buf[:, :, :2].isnan().all()
        print("ok")
    """)
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

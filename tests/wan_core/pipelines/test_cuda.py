"""Memory modes and the bf16 precision map on a GPU (skipped without CUDA).

Where each model lives during and after a run (§11): DiTs start on the CPU, only the active A14B
expert is on the GPU at each step; umT5 goes back after encoding (in one process, with or without
offload_model), offload_model sends the DiTs back after the loop; t5_cpu never moves umT5; convert_model_dtype puts DiT weights on
the GPU in bf16 (cast there; the host copy stays fp32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wan_core.pipelines import WanPipeline, initial_noise, load_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def where(module: torch.nn.Module) -> str:
    return next(module.parameters()).device.type


def run_tracking(pipe: WanPipeline, **options) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """Final latent of a tiny 4-step t2v run and, after each step, the device of each expert."""
    seen: list[dict[str, str]] = []
    opts = pipe.sampling_options(frame_num=5, sampling_steps=4, seed=5, **options)
    latent = pipe.run("a fox", 32, 16, opts, decode=False,
                      callback=lambda *_: seen.append({n: where(m) for n, m in pipe.experts.items()}))
    return latent, seen


def test_default_bf16_map_and_offload(tiny_ckpts: dict[str, Path]) -> None:
    pipe = load_pipeline("t2v-A14B", tiny_ckpts["t2v-A14B"])
    assert pipe.device.type == "cuda" and pipe.dtype == torch.bfloat16 and pipe.offload_model
    assert next(pipe.text_encoder.parameters()).dtype == torch.bfloat16 and where(pipe.text_encoder) == "cpu"
    assert next(pipe.vae.parameters()).dtype == torch.bfloat16 and pipe.vae.fast and where(pipe.vae) == "cuda"
    assert all(next(m.parameters()).dtype == torch.float32 and where(m) == "cpu" for m in pipe.experts.values())

    latent, seen = run_tracking(pipe)
    high, low = {"high_noise_model": "cuda", "low_noise_model": "cpu"}, {"high_noise_model": "cpu", "low_noise_model": "cuda"}
    assert seen == [high, high, high, low]  # only the active expert is on the GPU
    assert all(where(m) == "cpu" for m in pipe.experts.values()) and where(pipe.text_encoder) == "cpu"

    fp32 = load_pipeline("t2v-A14B", tiny_ckpts["t2v-A14B"], dtype=torch.float32)
    want, _ = run_tracking(fp32)
    err = ((latent - want).norm() / want.norm()).item()
    print(f"bf16 (autocast, fp32 weights) vs fp32 final latent: rel L2 {err:.2e}")
    assert 0 < err < 5e-2  # bf16 matmuls: not identical, close (§12)


def test_no_offload_keeps_the_last_expert_on_the_gpu_and_t5_goes_home(tiny_ckpts: dict[str, Path]) -> None:
    pipe = load_pipeline("t2v-A14B", tiny_ckpts["t2v-A14B"], offload_model=False)
    host = {n: p.data_ptr() for n, p in pipe.text_encoder.named_parameters()}
    run_tracking(pipe)
    assert where(pipe.experts["low_noise_model"]) == "cuda" and where(pipe.experts["high_noise_model"]) == "cpu"
    # umT5 left the GPU after encoding, back onto the very host tensors it was loaded into (no copy)
    assert {n: p.data_ptr() for n, p in pipe.text_encoder.named_parameters()} == host
    assert where(pipe.text_encoder) == "cpu"


def test_t5_cpu_and_converted_weights(tiny_ckpts: dict[str, Path]) -> None:
    pipe = load_pipeline("ti2v-5B", tiny_ckpts["ti2v-5B"], t5_cpu=True, convert_model_dtype=True, offload_model=False)
    # the cast happens on the GPU: the host copy stays the stored fp32, the GPU holds bf16
    assert next(pipe.experts[""].parameters()).dtype == torch.float32 and not pipe._dit_autocast
    opts = pipe.sampling_options(frame_num=5, sampling_steps=2, seed=0)
    video = pipe.run("a fox", 64, 32, opts)
    assert video.shape == (3, 5, 32, 64) and video.dtype == torch.float32 and video.isfinite().all()
    assert where(pipe.text_encoder) == "cpu" and where(pipe.experts[""]) == "cuda"
    assert {p.dtype for p in pipe.experts[""].parameters()} == {torch.bfloat16}


def test_cuda_noise_is_one_seeded_cuda_randn() -> None:
    shape = (48, 31, 44, 80)  # ti2v-5B 1280*704, 121 frames
    want = torch.randn(shape, dtype=torch.float32, device="cuda", generator=torch.Generator("cuda").manual_seed(42))
    assert torch.equal(initial_noise(shape, 42, "cuda"), want)


def test_a_vae_loaded_while_sampling_decodes_what_one_loaded_first_does(tiny_ckpts: dict[str, Path]) -> None:
    """Text mode loads the VAE on a thread and its own stream during sampling: the same video."""
    aside = load_pipeline("ti2v-5B", tiny_ckpts["ti2v-5B"], offload_model=False)
    first = load_pipeline("ti2v-5B", tiny_ckpts["ti2v-5B"], offload_model=False)
    assert where(first.vae) == "cuda" and aside._vae_loader._vae is None
    opts = {"frame_num": 5, "sampling_steps": 3, "seed": 1}
    video = aside.run("a fox", 64, 32, aside.sampling_options(**opts))
    assert aside._vae_loader._thread is not None and where(aside.vae) == "cuda" and aside.vae.fast
    assert torch.equal(video, first.run("a fox", 64, 32, first.sampling_options(**opts)))

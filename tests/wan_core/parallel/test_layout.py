"""The layout rules, the split/gather plan's names, timeouts and the step watchdog (one process)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from wan_core.models.dit import DiTConfig, WanModel
from wan_core.parallel import SP_PLAN, LayoutError, ParallelLayout, collective_timeout
from wan_core.parallel.rules import flag_problems
from wan_core.parallel.ulysses import plan_modules
from wanspec.tasks import TASKS


def test_every_name_in_the_plan_exists_in_the_model() -> None:
    with torch.device("meta"):
        model = WanModel(DiTConfig.flavor("ti2v-5B"))
    for point in SP_PLAN:
        assert plan_modules(model, point.module), f"{point.module!r} names no module of WanModel"
    assert plan_modules(model, "") == [""]
    assert plan_modules(model, "blocks.*") == [f"blocks.{i}" for i in range(30)]  # blocks, not their children
    assert len(plan_modules(model, "blocks.*.self_attn")) == 30


@pytest.mark.parametrize(("task", "world", "flags", "ulysses", "cfg"), [
    ("t2v-A14B", 1, {}, 1, 1),
    ("t2v-A14B", 8, {}, 8, 1),  # Ulysses over every rank
    ("t2v-A14B", 16, {}, 8, 2),  # 40 heads: 16 only with CFG-parallel (wanspec's default)
    ("t2v-A14B", 8, {"cfg_parallel": True}, 4, 2),
    ("t2v-A14B", 8, {"ulysses": 4}, 4, 2),  # ulysses = world / 2 implies CFG-parallel
    ("ti2v-5B", 6, {}, 6, 1),
    ("ti2v-5B", 2, {"ulysses": 1}, 1, 2),
])
def test_degrees_derive_as_wanspec(task: str, world: int, flags: dict, ulysses: int, cfg: int) -> None:
    env = {"WORLD_SIZE": str(world), "RANK": str(world - 1), "LOCAL_RANK": "0"}
    layout = ParallelLayout.from_env(task, env=env, **flags)
    assert (layout.ulysses, layout.cfg, layout.world_size) == (ulysses, cfg, world)
    assert layout.cfg_rank == (world - 1) // ulysses and layout.ulysses_rank == (world - 1) % ulysses
    assert layout.is_main == (world == 1)


@pytest.mark.parametrize(("task", "world", "flags", "message"), [
    ("t2v-A14B", 3, {}, "WORLD_SIZE .*: 3 GPUs cannot split the 40 attention heads"),
    ("ti2v-5B", 8, {"ulysses": 5}, "--ulysses_size: 5 does not divide the 24 attention heads of ti2v-5B"),
    ("t2v-A14B", 8, {"ulysses": 2}, "--ulysses_size: ulysses 2 × 1 .* does not equal gpus 8"),
    ("t2v-A14B", 3, {"cfg_parallel": True}, "--cfg_parallel: CFG-parallel needs an even gpus, got 3"),
    ("t2v-A14B", 1, {"dit_fsdp": True}, "--dit_fsdp: FSDP needs more than one GPU"),
    ("t2v-A14B", 2, {"t5_fsdp": True, "t5_cpu": True}, "--t5_cpu: cannot be combined with parallelism.t5Fsdp"),
])
def test_layouts_wanspec_refuses_are_refused_with_the_flag(task: str, world: int, flags: dict, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        ParallelLayout.from_env(task, env={"WORLD_SIZE": str(world)}, **flags)


def test_cli_rules_are_the_operators() -> None:
    """Same answer as wanspec.validate for every GPU count the API allows, for every task."""
    from wanspec.validate import valid_gpu_counts

    for task in TASKS.values():
        ok = [w for w in range(1, 81) if not flag_problems(task, w, ulysses=None, cfg_parallel=None,
                                                         dit_fsdp=False, t5_fsdp=False, t5_cpu=False)]
        assert ok == valid_gpu_counts(task)


def test_collective_timeout_from_the_environment() -> None:
    assert collective_timeout({}) == 600.0
    assert collective_timeout({"WANOPS_COLLECTIVE_TIMEOUT_S": "12.5"}) == 12.5
    for bad in ("soon", "0", "-3"):
        with pytest.raises(ValueError, match="WANOPS_COLLECTIVE_TIMEOUT_S"):
            collective_timeout({"WANOPS_COLLECTIVE_TIMEOUT_S": bad})


WATCHDOG = """
import time
from wan_core.parallel.watchdog import StepWatchdog
with StepWatchdog({timeout}, rank=3) as dog:
    for _ in range({beats}):
        time.sleep(0.2)
        dog.beat()
    time.sleep({stall})
"""


def test_watchdog_ends_a_stalled_process_and_spares_a_beating_one() -> None:
    start = time.monotonic()
    stalled = subprocess.run([sys.executable, "-c", WATCHDOG.format(timeout=1, beats=0, stall=60)],
                             capture_output=True, text=True, timeout=30)
    assert stalled.returncode == 124 and time.monotonic() - start < 20
    assert "rank 3: no progress for 1 s after start; aborting" in stalled.stderr
    beating = subprocess.run([sys.executable, "-c", WATCHDOG.format(timeout=1, beats=10, stall=0)],
                             capture_output=True, text=True, timeout=30)
    assert beating.returncode == 0, beating.stderr  # 2 s of beats every 0.2 s: never stalled for 1 s


def test_watchdog_hands_its_words_to_on_timeout_before_it_ends_the_process(tmp_path) -> None:
    said = tmp_path / "said"
    code = (f"import time, pathlib\nfrom wan_core.parallel.watchdog import StepWatchdog\n"
            f"with StepWatchdog(1, rank=2, on_timeout=pathlib.Path({str(said)!r}).write_text):\n"
            f"    time.sleep(60)\n")
    stalled = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert stalled.returncode == 124
    assert said.read_text().startswith("rank 2: no progress for 1 s after start")

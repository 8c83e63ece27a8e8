"""Pre-flight folder inspection: each kind of bad folder gives one CheckpointError naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wan_core.checkpoint.errors import CheckpointError
from wan_core.checkpoint.folder import detect_task, inspect_folder
from wan_core.testing.tiny_checkpoint import write_tiny_checkpoint
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER, TASKS

SHARD_1 = "diffusion_pytorch_model-00001-of-00002.safetensors"
SHARD_2 = "diffusion_pytorch_model-00002-of-00002.safetensors"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    return {task: write_tiny_checkpoint(task, root / task) for task in TASKS}


@pytest.fixture
def folder(written: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A private copy of a task's tiny folder to damage (the task comes from `parametrize`)."""
    task = getattr(request, "param", "t2v-A14B")
    return Path(shutil.copytree(written[task], tmp_path / task))


def _error(root: Path, task: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as err:
        inspect_folder(root, task)
    return err.value


@pytest.mark.parametrize("task", list(TASKS))
def test_complete_folders_pass(written: dict[str, Path], task: str) -> None:
    found = inspect_folder(written[task], task)
    spec = TASKS[task]
    assert found.task is spec
    assert found.dits == {e: written[task] / e for e in spec.experts}
    assert found.t5 == written[task] / T5_CHECKPOINT
    assert found.vae == written[task] / spec.vae_checkpoint
    assert found.tokenizer == written[task] / T5_TOKENIZER
    assert detect_task(written[task])[0] == task


@pytest.mark.parametrize(
    ("holds", "task", "message"),
    [
        ("ti2v-5B", "t2v-A14B", "this folder holds a ti2v-5B checkpoint (Wan2.2_VAE.pth, config.json "
                                "model_type=ti2v, in_dim=48) but the task is t2v-A14B"),
        ("t2v-A14B", "i2v-A14B", "this folder holds a t2v-A14B checkpoint (Wan2.1_VAE.pth, "
                                 "high_noise_model/config.json model_type=t2v, in_dim=16) but the task is i2v-A14B"),
        ("i2v-A14B", "ti2v-5B", "this folder holds an i2v-A14B checkpoint"),
    ],
)
def test_folder_of_another_task(written: dict[str, Path], holds: str, task: str, message: str) -> None:
    err = _error(written[holds], task)
    assert err.path == written[holds]
    assert message in str(err)


@pytest.mark.parametrize("folder", ["t2v-A14B", "ti2v-5B"], indirect=True)
def test_missing_t5_file(folder: Path) -> None:
    (folder / T5_CHECKPOINT).unlink()
    err = _error(folder, folder.name)
    assert err.path == folder / T5_CHECKPOINT and "missing" in err.problem


def test_missing_expert_folder(folder: Path) -> None:
    shutil.rmtree(folder / "low_noise_model")
    err = _error(folder, "t2v-A14B")
    assert err.path == folder / "low_noise_model" and "DiT folder missing" in str(err)


def test_missing_shard_listed_in_index(folder: Path) -> None:
    (folder / "high_noise_model" / SHARD_2).unlink()
    err = _error(folder, "t2v-A14B")
    assert err.path == folder / "high_noise_model" / SHARD_2
    assert "listed in diffusion_pytorch_model.safetensors.index.json but missing" in str(err)


@pytest.mark.parametrize("folder", ["ti2v-5B"], indirect=True)
def test_truncated_shard(folder: Path) -> None:
    shard = folder / SHARD_1
    shard.write_bytes(shard.read_bytes()[:-100])
    err = _error(folder, "ti2v-5B")
    assert err.path == shard and "truncated or corrupt" in str(err)


@pytest.mark.parametrize("name", [T5_CHECKPOINT, "Wan2.1_VAE.pth"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_pth(folder: Path, name: str, damage: str) -> None:
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"PK\x03\x04" + b"\x00" * 4000)
    err = _error(folder, "t2v-A14B")
    assert err.path == path and "not a readable torch.save archive" in str(err)


def test_config_of_other_dims(folder: Path) -> None:
    config = folder / "low_noise_model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "in_dim": 36}))
    err = _error(folder, "t2v-A14B")
    assert err.path == config and "in_dim is 36, t2v-A14B has 16" in str(err)


def test_all_problems_at_once(folder: Path) -> None:
    (folder / "Wan2.1_VAE.pth").unlink()
    shutil.rmtree(folder / T5_TOKENIZER)
    (folder / "high_noise_model" / "diffusion_pytorch_model.safetensors.index.json").write_text("{")
    err = _error(folder, "t2v-A14B")
    assert err.path == folder
    text = str(err)
    assert "3 problems" in text
    assert "Wan2.1_VAE.pth: missing" in text
    assert "google/umt5-xxl: tokenizer folder missing" in text
    assert "high_noise_model/diffusion_pytorch_model.safetensors.index.json: not readable JSON" in text


def test_tokenizer_without_its_tokenizers_file(folder: Path) -> None:
    """The encoder reads tokenizer.json; a folder with only the SentencePiece model is refused."""
    (folder / T5_TOKENIZER / "tokenizer.json").unlink()
    err = _error(folder, "t2v-A14B")
    assert err.path == folder / T5_TOKENIZER / "tokenizer.json" and "missing (copy the whole" in str(err)


def test_not_a_folder(tmp_path: Path) -> None:
    err = _error(tmp_path / "absent", "ti2v-5B")
    assert "checkpoint folder not found" in str(err)

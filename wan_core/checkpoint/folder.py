"""Pre-flight check of an official checkpoint folder for a task (spec §2.1), before any load.

Answers "is this the folder of that task, with every file present and intact?" by reading only
JSON files and file headers (safetensors headers, `.pth` zip directories) — no tensor data — so
the runner can check a 126 GB folder in a fraction of a second. Every problem found is reported
in one `CheckpointError`; a folder of another task is named as such ("this folder holds a
ti2v-5B checkpoint … but the task is t2v-A14B") instead of as a list of missing files.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from wan_core.checkpoint.dit import CONFIG_NAME, INDEX_NAME, SINGLE_NAME, read_shapes, shard_keys
from wan_core.checkpoint.errors import CheckpointError
from wanspec.tasks import T5_CHECKPOINT, T5_TOKENIZER, T5_TOKENIZER_FILE, TASKS, TaskSpec, get_task


@dataclass(frozen=True)
class CheckpointFolder:
    """The files of one task's checkpoint folder, all checked present and readable."""

    root: Path
    task: TaskSpec
    dits: dict[str, Path]  # expert subfolder name → DiT folder; "" = the 5B DiT at the root
    t5: Path
    vae: Path
    tokenizer: Path


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """(object, None) or (None, problem); a missing file is a problem too."""
    if not path.is_file():
        return None, "missing"
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"not readable JSON ({err})"
    return (value, None) if isinstance(value, dict) else (None, "not a JSON object")


def detect_task(root: Path) -> tuple[str | None, str]:
    """Which task a folder holds, judged by its DiT config.json `model_type` and its VAE file.

    Returns (task or None, the evidence in words). `model_type` decides (t2v/i2v/ti2v map to one
    task each); the VAE file name is the fallback when no DiT config is readable.
    """
    evidence: list[str] = []
    model_type = None
    for where in ("high_noise_model", "low_noise_model", ""):
        config, _ = _read_json(root / where / CONFIG_NAME)
        if config is not None and "model_type" in config:
            model_type = config["model_type"]
            rel = f"{where}/{CONFIG_NAME}" if where else CONFIG_NAME
            evidence.append(f"{rel} model_type={model_type}, in_dim={config.get('in_dim')}")
            break
    vaes = sorted({t.vae_checkpoint for t in TASKS.values() if (root / t.vae_checkpoint).is_file()})
    evidence[:0] = vaes
    by_type = [t.name for t in TASKS.values() if t.model_type == model_type]
    by_vae = [t.name for t in TASKS.values() if [t.vae_checkpoint] == vaes]
    found = by_type[0] if by_type else (by_vae[0] if len(by_vae) == 1 else None)
    return found, ", ".join(evidence)


def _check_dit(folder: Path, task: TaskSpec, problems: list[tuple[Path, str]]) -> None:
    """config.json of this task, an index whose shards all exist with intact, matching headers."""
    if not folder.is_dir():
        problems.append((folder, "DiT folder missing"))
        return
    config, problem = _read_json(folder / CONFIG_NAME)
    if problem:
        problems.append((folder / CONFIG_NAME, problem))
    elif config is not None:
        for key, want in (("model_type", task.model_type), ("in_dim", task.dit_in_dim),
                          ("out_dim", task.dit_out_dim)):
            if config.get(key) != want:
                problems.append((folder / CONFIG_NAME, f"{key} is {config.get(key)!r}, {task.name} has {want!r}"))
    index, problem = _read_json(folder / INDEX_NAME)
    if problem == "missing" and (folder / SINGLE_NAME).is_file():
        try:  # one unsharded file, as the loader also accepts: read its header
            shard_keys(folder)
        except CheckpointError as err:
            problems.append((err.path, err.problem))
        return
    if problem or not isinstance(index.get("weight_map"), dict):
        problems.append((folder / INDEX_NAME, problem or "has no weight_map object"))
        return
    shards: dict[Path, list[str]] = {}
    for key, name in index["weight_map"].items():
        shards.setdefault(folder / str(name), []).append(key)
    for shard, keys in shards.items():
        if not shard.is_file():
            problems.append((shard, f"listed in {INDEX_NAME} but missing"))
            continue
        try:  # header only; a truncated file has offsets past its end
            read_shapes({shard: keys})
        except CheckpointError as err:
            problems.append((shard, err.problem))


def _check_pth(path: Path, problems: list[tuple[Path, str]], what: str) -> None:
    """A `torch.save` zip archive: its central directory sits at the end, so truncation loses it."""
    if not path.is_file():
        problems.append((path, f"missing ({what})"))
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        problems.append((path, f"not a readable torch.save archive, truncated or corrupt? ({err})"))
        return
    if not any(n.endswith("/data.pkl") for n in names):
        problems.append((path, "zip archive without data.pkl: not a torch.save file"))


def _check_tokenizer(folder: Path, problems: list[tuple[Path, str]]) -> None:
    if not folder.is_dir():
        problems.append((folder, "tokenizer folder missing"))
        return
    # the published google/umt5-xxl folder has it beside its SentencePiece model and configs (§2.1)
    if not (folder / T5_TOKENIZER_FILE).is_file():
        problems.append((folder / T5_TOKENIZER_FILE, "missing (copy the whole google/umt5-xxl folder as published)"))


def inspect_folder(root: str | Path, task: str) -> CheckpointFolder:
    """Check `root` is a complete, intact checkpoint folder of `task`; return its file paths.

    Raises one CheckpointError listing every problem (or naming the task the folder really holds).
    """
    spec = get_task(task)
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(root, "checkpoint folder not found", f"the {task} folder of spec §2.1")
    found, evidence = detect_task(root)
    if found is not None and found != spec.name:
        article = "an" if found[0] in "aeiou" else "a"
        raise CheckpointError(root, f"this folder holds {article} {found} checkpoint ({evidence}) but the task is {spec.name}")

    problems: list[tuple[Path, str]] = []
    dits = {expert: root / expert for expert in spec.experts}
    if spec.is_moe and (root / CONFIG_NAME).is_file():
        problems.append((root / CONFIG_NAME, f"a DiT at the folder root (Wan2.1 / 5B layout); {spec.name} keeps its "
                                             f"experts in {' and '.join(spec.experts)}/"))
    for folder in dits.values():
        _check_dit(folder, spec, problems)
    _check_pth(root / T5_CHECKPOINT, problems, "the umT5 encoder")
    _check_pth(root / spec.vae_checkpoint, problems, f"the {spec.name} VAE")
    _check_tokenizer(root / T5_TOKENIZER, problems)

    if len(problems) == 1:
        raise CheckpointError(*problems[0])
    if problems:
        listed = "; ".join(f"{path.relative_to(root) if path != root else '.'}: {text}" for path, text in problems)
        raise CheckpointError(root, f"{len(problems)} problems: {listed}", f"the {spec.name} layout of spec §2.1")
    return CheckpointFolder(root=root, task=spec, dits=dits, t5=root / T5_CHECKPOINT,
                            vae=root / spec.vae_checkpoint, tokenizer=root / T5_TOKENIZER)

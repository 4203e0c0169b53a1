"""Resumable training states, written atomically (cgan/core/files.py) and loaded safely.
(Exported models, what `sample.py` and `CGANPipeline` load: cgan/nets/export.py.)

Training state, `RUN/checkpoints/step_XXXXXXXX/`:
    G.safetensors, D.safetensors, G_ema.safetensors
    optimizers.pt     optimizer and grad-scaler state dicts (tensors and numbers only)
    rng.pt            every process's torch RNG state
    state.json        step, images seen
Every folder is built under a temporary name (`NAME.tmp-PID`), its files flushed to disk, and
renamed into place when complete, so a crash never leaves a half-written model or checkpoint
where a loader would find it; `remove_stale_temporaries` clears what a killed run left behind.
Nothing is unpickled: safetensors for weights, `torch.load(weights_only=True)` for the rest.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from cgan.core.errors import CheckpointError
from cgan.core.files import load_weights, publish_folder, save_weights
from cgan.nets.export import FORMAT_VERSION

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")
STALE_PATTERN = re.compile(r"^(?P<name>.+)\.(?P<kind>tmp|old)-\d+$")  # leftovers of atomic_save / publish_folder


def load_module_weights(module: torch.nn.Module, path: Path) -> None:
    weights = load_weights(path)
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit this model (was the config changed?): "
                              f"{str(err).splitlines()[0]}") from err


# ----------------------------------------------------------------------------------------------
# Training states


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete training states of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)
             and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))  # type: ignore[union-attr]


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`latest` -> the newest complete state in the run (None if there is none); else a path."""
    if not resume:
        return None
    if resume == "latest":
        states = list_checkpoints(run_dir)
        return states[-1] if states else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"--resume {resume}: not a training state folder (expected state.json inside)")
    return path


def save_training_state(run_dir: Path, *, step: int, images_seen: int, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, Any], rng_states: list[dict[str, torch.Tensor]], keep_last: int,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write a complete state under a temporary name, rename it, then prune old states.

    optimizers: anything with state_dict() (optimizers, the fp16 grad scaler). extra: more JSON fields
    for state.json. A failed write (a full disk) removes its temporary folder and prunes nothing.
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, module in modules.items():
            save_weights(module, tmp / f"{name}.safetensors")
        torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, tmp / "optimizers.pt")
        torch.save({"rng": rng_states}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "images_seen": images_seen,
                                                    "format_version": FORMAT_VERSION, **(extra or {})}))  # last
        publish_folder(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as err:  # torch.save reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        states = list_checkpoints(run_dir)
        kept = f"the newest complete state, {states[-1]}, is intact" if states else "no earlier state exists"
        raise CheckpointError(f"{final}: could not write the training state ({err}); {kept}. Free disk space "
                              "and continue with --resume latest") from err
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(path: Path, *, modules: dict[str, torch.nn.Module], optimizers: dict[str, Any]
                        ) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """Restore modules and optimizers in place; -> (state.json contents, per-process RNG states)."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / 'state.json'}: unreadable: {err}") from err
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: training state format {state.get('format_version')!r}; this cgan reads "
                              f"format {FORMAT_VERSION}")
    for name, module in modules.items():
        load_module_weights(module, path / f"{name}.safetensors")
    try:
        optimizer_states = torch.load(path / "optimizers.pt", map_location="cpu", weights_only=True)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)["rng"]
    except Exception as err:  # noqa: BLE001 - any failure here means a damaged or foreign file
        raise CheckpointError(f"{path}: optimizers.pt or rng.pt unreadable (truncated, corrupt, or not "
                              f"written by cgan): {err}") from err
    for name, opt in optimizers.items():
        if name in optimizer_states:
            opt.load_state_dict(optimizer_states[name])
        elif not name.startswith("scaler"):  # states from before the fp16 scalers were saved: they recalibrate
            raise CheckpointError(f"{path / 'optimizers.pt'}: has no {name} state")
    return state, rng


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Clear what a killed run left in run_dir; -> one line per action, for the log.

    `NAME.tmp-PID` (being written when the process died) is removed. `NAME.old-PID` (a complete
    folder being replaced) is removed, or renamed back to NAME when the kill fell between the two
    renames of publish_folder and NAME is missing. Call it before any process of the run writes.
    """
    actions = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            match = STALE_PATTERN.match(path.name)
            if match is None:
                continue
            final = path.with_name(match.group("name"))
            if match.group("kind") == "old" and not final.exists():
                os.replace(path, final)
                actions.append(f"restored {final} from {path.name}, left by a run that was killed")
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            actions.append(f"removed {path}, left by a run that was killed")
    return actions

"""Exported models and resumable training states, written atomically and loaded safely.

Exported model (what `sample.py` and `CGANPipeline` load), a folder:
    config.json       format version, G's constructor arguments, text encoder, step, full config
    attributes.json   the attribute schema
    G_ema.safetensors the generator's EMA weights (nothing else)
    vocabulary.json   the words of the training captions (cgan/vocabulary.py; absent in older models)
    MODEL_CARD.md     what it was trained on, how and what was measured (cgan/model_card.py)

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
from typing import Any, Callable, Iterable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cgan.errors import CganError

FORMAT_VERSION = 1
CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")
STALE_PATTERN = re.compile(r"^(?P<name>.+)\.(?P<kind>tmp|old)-\d+$")  # leftovers of atomic_save / _publish_folder


class CheckpointError(CganError, RuntimeError):
    """A model folder or training state is missing, incomplete, corrupt or incompatible."""


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), then rename the temporary file into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary file behind
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_save(path, lambda tmp: tmp.write_text(text))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish_folder(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place, replacing an older one without ever deleting it first."""
    for path in tmp.iterdir():  # on disk before the rename, so a power loss cannot publish empty files
        _fsync(path)
    _fsync(tmp)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err


def load_module_weights(module: torch.nn.Module, path: Path) -> None:
    weights = load_weights(path)
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit this model (was the config changed?): "
                              f"{str(err).splitlines()[0]}") from err


# ----------------------------------------------------------------------------------------------
# Exported models


def export_model(out_dir: str | Path, *, G_ema: torch.nn.Module, generator_kwargs: dict[str, Any],
                 schema_dict: dict[str, Any], text_encoder: dict[str, Any], config_dict: dict[str, Any],
                 step: int, images_seen: int, model_card: str | None = None,
                 D: torch.nn.Module | None = None, vocabulary: list[str] | None = None) -> Path:
    from cgan import __version__

    meta = {"format_version": FORMAT_VERSION, "cgan_version": __version__, "generator": generator_kwargs,
            "text_encoder": text_encoder, "step": step, "images_seen": images_seen,
            "prompt_dropout": config_dict["train"]["drop_prompt"], "config": config_dict}
    return write_exported(out_dir, meta, schema_dict, G_ema, model_card, D, vocabulary)


def write_exported(out_dir: str | Path, meta: dict[str, Any], schema_dict: dict[str, Any],
                   G_ema: torch.nn.Module, model_card: str | None = None, D: torch.nn.Module | None = None,
                   vocabulary: Iterable[str] | None = None) -> Path:
    """Write a model folder (config.json, attributes.json, G_ema.safetensors; D.safetensors when D is given:
    not needed to generate, but `train.init_from` the model then continues with a trained D; vocabulary.json
    when the training captions' words are given) whole, or not at all."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    (tmp / "attributes.json").write_text(json.dumps(schema_dict, indent=2))
    save_file(_state_dict(G_ema), str(tmp / "G_ema.safetensors"), metadata={"format": "pt"})
    if D is not None:
        save_file(_state_dict(D), str(tmp / "D.safetensors"), metadata={"format": "pt"})
    if model_card is not None:
        (tmp / "MODEL_CARD.md").write_text(model_card)
    if vocabulary is not None:
        from cgan.vocabulary import write_vocabulary

        write_vocabulary(tmp, vocabulary, source="the words of the training captions")
    _publish_folder(tmp, out_dir)
    return out_dir


def read_exported(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """-> (config.json contents, attribute schema dict, G_ema weights), with clear errors."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model folder not found (expected a folder with config.json, "
                              "attributes.json and G_ema.safetensors)")
    missing = [n for n in ("config.json", "attributes.json", "G_ema.safetensors") if not (model_dir / n).is_file()]
    if missing:
        raise CheckpointError(f"{model_dir}: not a complete cgan model, missing {', '.join(missing)}")
    try:
        meta = json.loads((model_dir / "config.json").read_text())
        schema = json.loads((model_dir / "attributes.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{model_dir}: config.json or attributes.json is not valid JSON: {err}") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{model_dir}: exported with model format {version!r} (cgan "
                              f"{meta.get('cgan_version', '?')}); this cgan reads format {FORMAT_VERSION}")
    return meta, schema, load_weights(model_dir / "G_ema.safetensors")


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
            save_file(_state_dict(module), str(tmp / f"{name}.safetensors"), metadata={"format": "pt"})
        torch.save({name: opt.state_dict() for name, opt in optimizers.items()}, tmp / "optimizers.pt")
        torch.save({"rng": rng_states}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "images_seen": images_seen,
                                                    "format_version": FORMAT_VERSION, **(extra or {})}))  # last
        _publish_folder(tmp, final)
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
    renames of _publish_folder and NAME is missing. Call it before any process of the run writes.
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

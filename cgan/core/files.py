"""Every file cgan writes goes through here: whole, or not at all.

A file is written under a temporary name (`NAME.tmp-PID`) and renamed into place; a folder (an
exported model, a training state) is built under a temporary name, its files flushed to disk, and
renamed into place, replacing an older one without deleting it first (`NAME.old-PID` for a moment).
So a crash never leaves a half-written file where a reader would find it. Weights are safetensors:
nothing is unpickled when they are read.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cgan.core.errors import CheckpointError


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


def fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename a finished folder into place, replacing an older one without ever deleting it first."""
    for path in tmp.iterdir():  # on disk before the rename, so a power loss cannot publish empty files
        fsync(path)
    fsync(tmp)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync(final.parent)


def save_weights(module: torch.nn.Module | Mapping[str, torch.Tensor], path: Path) -> None:
    """A module's state dict, or a state dict (on the CPU, contiguous), as a safetensors file."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(weights, str(path), metadata={"format": "pt"})
    mask = os.umask(0)  # safetensors writes its file 0600; give it the mode any file the user makes has
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err


def check_writable_file(path: Path, argument: str) -> None:
    """Fail before any work if `path` cannot be written: a folder, or a place we may not create files."""
    if path.is_dir():
        raise ValueError(f"{argument} {str(path)!r}: is a folder; expected an image file name such as "
                         "samples.png (or use --out-dir for one file per image)")
    check_writable_folder(path.parent, argument)


def check_writable_folder(folder: Path, argument: str) -> None:
    existing = folder
    while not existing.exists():  # the folders that do not exist yet are created later
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{argument}: {str(existing)!r} is a file, so {str(folder)!r} cannot be created")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".cgan-write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{argument}: cannot write in {str(existing)!r} ({err.strerror or err})") from None

"""The real images' side of `python -m cgan.fid --model DIR --data shapes|FOLDER`: Inception
statistics of a data set's first N records, cached in --cache-dir under a key that names the data
(for shapes, the renderer's source too), the split, the resolution, N and the feature network."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cgan.eval.fid import (MODE, SHAPES_REFERENCE_SEED, FeatureNetwork, FIDError, check_count, file_sha256,
                      folder_features, warn_if_small)


def _open_data(data: str | Path, split: str | None, resolution: int, num: int) -> tuple[Any, str, str, dict]:
    """-> (data set, name, split, identity for the cache key)."""
    from cgan.data import FolderDataset, ShapesDataset

    if str(data) == "shapes":
        split = split or "heldout"
        try:
            dataset = ShapesDataset(num_images=num, resolution=resolution, split=split, seed=SHAPES_REFERENCE_SEED)
        except ValueError as err:
            raise FIDError(str(err).replace("data.split", "--split")) from err
        from cgan.data import shapes as shapes_lib

        # The renderer's source is part of the key, so a change to how shapes are drawn is a cache miss.
        ident = {"data": "shapes", "data_seed": SHAPES_REFERENCE_SEED,
                 "renderer": file_sha256(Path(shapes_lib.__file__))}
        return dataset, "shapes", split, ident
    folder = Path(data)
    if not folder.is_dir():
        raise FIDError(f"--data {data}: expected 'shapes' or a data folder (with metadata.jsonl or metadata.csv)")
    if split not in (None, "all"):
        raise FIDError(f"--split {split}: a data folder has no splits; all its records are used")
    from cgan.data.folder import find_metadata

    dataset = FolderDataset(folder, resolution=resolution)
    metadata = find_metadata(folder)
    stat = metadata.stat()
    ident = {"data": str(folder.resolve()), "metadata": metadata.name, "mtime_ns": stat.st_mtime_ns,
             "size": stat.st_size}
    return dataset, str(folder), "all", ident


def _load_reference(path: Path, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as stored:
            if str(stored["key"]) != key:  # a hash collision or a hand-edited file: recompute
                return None
            return {name: stored[name] for name in ("mu", "sigma", "feats")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # unreadable: recompute and overwrite
        return None


def _save_reference(path: Path, key: str, feats: np.ndarray) -> dict[str, np.ndarray]:
    stats = {"mu": np.mean(feats, axis=0), "sigma": np.cov(feats, rowvar=False), "feats": feats}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # a file object, so NumPy adds no ".npz" to the temp name
            np.savez(handle, key=np.array(key), **stats)
        os.replace(tmp, path)  # readers see the old file or the complete new one, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return stats


def reference_statistics(data: str | Path, split: str | None, resolution: int, num: int, network: FeatureNetwork,
                         cache_dir: str | Path, **features: Any) -> tuple[Any, str, str, dict[str, np.ndarray], str]:
    """The Inception statistics of the first `num` real records of `data` (shapes: its `split`), from the
    cache or computed and cached -> (data set, name, split, {"mu", "sigma", "feats"}, "hit" | "miss")."""
    dataset, name, split, ident = _open_data(data, split, resolution, num)
    n = min(num, len(dataset))
    if n < num:
        print(f"note: {name} has {n} records, so FID uses {n} images, not {num}", file=sys.stderr)
    check_count(f"{name}/{split}", n)
    warn_if_small(f"{name}/{split}", n)
    key = json.dumps({**ident, "split": split, "resolution": resolution, "num": n, "mode": MODE,
                      "feature_sha256": network.sha256, "format": 1}, sort_keys=True)
    cache_file = Path(cache_dir) / f"ref_{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    reference = _load_reference(cache_file, key) if cache_file.is_file() else None
    if reference is not None:
        return dataset, name, split, reference, "hit"
    with tempfile.TemporaryDirectory(prefix="cgan-fid-") as scratch:
        for i in range(n):
            dataset.image(i).save(Path(scratch) / f"{i:06d}.png")
        reference = _save_reference(cache_file, key, folder_features(scratch, network, **features))
    return dataset, name, split, reference, "miss"

"""FID of a generator against a data set (`python -m cgan.fid --model DIR --data shapes|FOLDER`, and the
in-training evaluation). The real side: Inception statistics of a data set's first N records, cached in
--cache-dir under a key that names the data (for shapes, the renderer's source too), the split, the
resolution, N and the feature network. The generated side: G's images of the same records."""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cgan.eval.fid import (DEFAULT_CACHE_DIR, MODE, SHAPES_REFERENCE_SEED, FeatureNetwork, FIDError, FIDResult,
                           check_count, file_sha256, frechet_distance, image_features, kid_from_feats,
                           load_feature_network, precision_recall_fields, warn_if_small)
from cgan.core.images import tensor_to_images
from cgan.data import FolderDataset, ShapesDataset
from cgan.data import shapes as shapes_lib
from cgan.data.folder import find_metadata
from cgan.nets.export import ExportedModel
from cgan.nets.sampling import generate


def _open_data(data: str | Path, split: str | None, resolution: int, num: int) -> tuple[Any, str, str, dict]:
    """-> (data set, name, split, identity for the cache key)."""
    if str(data) == "shapes":
        split = split or "heldout"
        try:
            dataset = ShapesDataset(num_images=num, resolution=resolution, split=split, seed=SHAPES_REFERENCE_SEED)
        except ValueError as err:
            raise FIDError(str(err).replace("data.split", "--split")) from err
        # The renderer's source is part of the key, so a change to how shapes are drawn is a cache miss.
        ident = {"data": "shapes", "data_seed": SHAPES_REFERENCE_SEED,
                 "renderer": file_sha256(Path(shapes_lib.__file__))}
        return dataset, "shapes", split, ident
    folder = Path(data)
    if not folder.is_dir():
        raise FIDError(f"--data {data}: expected 'shapes' or a data folder (with metadata.jsonl or metadata.csv)")
    if split not in (None, "all"):
        raise FIDError(f"--split {split}: a data folder has no splits; all its records are used")
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
                         cache_dir: str | Path, quiet: bool = False, device: str | torch.device = "cpu",
                         batch_size: int = 32) -> tuple[Any, str, str, dict[str, np.ndarray], str]:
    """The Inception statistics of the first `num` real records of `data` (shapes: its `split`), from the
    cache or computed and cached -> (data set, name, split, {"mu", "sigma", "feats"}, "hit" | "miss").
    quiet: the caller uses part of the records and speaks of its own count."""
    dataset, name, split, ident = _open_data(data, split, resolution, num)
    n = min(num, len(dataset))
    if n < num and not quiet:
        print(f"note: {name} has {n} records, so FID uses {n} images, not {num}", file=sys.stderr)
    check_count(f"{name}/{split}", n)
    if not quiet:
        warn_if_small(f"{name}/{split}", n)
    key = json.dumps({**ident, "split": split, "resolution": resolution, "num": n, "mode": MODE,
                      "feature_sha256": network.sha256, "format": 1}, sort_keys=True)
    cache_file = Path(cache_dir) / f"ref_{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    reference = _load_reference(cache_file, key) if cache_file.is_file() else None
    if reference is not None:
        return dataset, name, split, reference, "hit"
    feats = image_features((dataset.image(i) for i in range(n)), network, device=device, batch_size=batch_size)
    return dataset, name, split, _save_reference(cache_file, key, feats), "miss"


# ---------------------------------------------------------------------------------------------
# Model against a data set (the cached reference statistics: above)


def generated_images(G: torch.nn.Module, text_cache: Any, schema: Any, dataset: Any, name: str, num: int, *,
                     seed: int = 0, truncation: float = 1.0, device: str | torch.device = "cpu", batch_size: int = 32,
                     verbose: bool = False) -> Iterator[Image.Image]:
    """G's images of the data set's first `num` records (their captions and attributes; image i uses
    seed + i, its paraphrase fixed by the seed), in order, as 8-bit images (what a PNG of them holds)."""
    from tqdm.auto import tqdm

    records = [dataset.record(i) for i in range(num)]
    rng = random.Random(f"fid/{seed}")  # which paraphrase each image is asked with: fixed by the seed
    prompts = [rng.choice(r["captions"]) for r in records]
    try:
        attributes = [schema.validate(r["attributes"], source=f"{name} record {i}") for i, r in enumerate(records)]
    except ValueError as err:
        raise FIDError(f"{name} does not fit this model's attributes: {err}") from err
    for lo in tqdm(range(0, num, batch_size), desc="FID: generating", unit="batch", disable=not verbose):
        hi = min(num, lo + batch_size)
        images = generate(G, text_cache, schema, prompts[lo:hi], attributes[lo:hi],
                          [seed + i for i in range(lo, hi)], truncation, device)
        yield from tensor_to_images(images)


def write_generated(G: torch.nn.Module, text_cache: Any, schema: Any, dataset: Any, name: str, num: int,
                    out_dir: Path, **options: Any) -> None:
    """`generated_images` as out_dir/NNNNNN.png (for tools that transform them as files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(generated_images(G, text_cache, schema, dataset, name, num, **options)):
        image.save(out_dir / f"{i:06d}.png")


def fid_generator_vs_data(G: torch.nn.Module, text_cache: Any, schema: Any, data: str | Path, *,
                          split: str | None = None, num: int = 1000, seed: int = 0, truncation: float = 1.0,
                          kid: bool = False, device: str | torch.device = "cpu",
                          inception_weights: str | Path | None = None, allow_download: bool = False,
                          cache_dir: str | Path = DEFAULT_CACHE_DIR, batch_size: int = 32,
                          model_path: str | None = None, model_step: int | None = None,
                          verbose: bool = False) -> FIDResult:
    """FID of `num` images from G (e.g. G_ema in training), conditioned on the data set's own captions and
    attributes (image i uses seed + i), against the same records' real images."""
    start = time.perf_counter()
    network = load_feature_network(inception_weights, device=device, cache_dir=cache_dir,
                                   allow_download=allow_download)
    resolution = int(G.resolution)  # type: ignore[arg-type]
    # 2 x num real records: the first num are FID's reference, the rest a second real set for the
    # precision / recall reference at the same N
    dataset, name, split, reference, cache_state = reference_statistics(data, split, resolution, 2 * num, network,
                                                                        cache_dir, quiet=True, device=device,
                                                                        batch_size=batch_size)
    n = min(num, len(reference["feats"]))
    if n < num:
        print(f"note: {name} has {n} records, so FID uses {n} images, not {num}", file=sys.stderr)
    warn_if_small(f"{name}/{split}", n)
    real_feats, second_real = reference["feats"][:n], reference["feats"][n:2 * n]
    # in memory, no PNG round trip: image_features reads them as folder_features would read their PNGs
    feats = image_features(generated_images(G, text_cache, schema, dataset, name, n, seed=seed, truncation=truncation,
                                            device=device, batch_size=batch_size, verbose=verbose),
                           network, device=device, batch_size=batch_size)
    fid = frechet_distance(feats, real_feats)
    # the precision / recall reference at the same N where the data has 2N records, a smaller set otherwise
    return FIDResult(fid=fid, kid=kid_from_feats(real_feats, feats, seed) if kid else None,
                     **precision_recall_fields(real_feats, feats, real_feats[:len(second_real)], second_real),
                     num_generated=n, num_real=len(real_feats), feature_network=network.name,
                     feature_network_path=network.path, feature_network_sha256=network.sha256, device=str(device),
                     seconds=round(time.perf_counter() - start, 2), data=name, split=split, resolution=resolution,
                     seed=seed, truncation=truncation, model=model_path, model_step=model_step,
                     reference_cache=cache_state)


def fid_model_vs_data(model_dir: str | Path, data: str | Path, *, split: str | None = None, num: int = 1000,
                      seed: int = 0, truncation: float = 1.0, kid: bool = False, device: str | torch.device = "cpu",
                      inception_weights: str | Path | None = None, allow_download: bool = False,
                      cache_dir: str | Path = DEFAULT_CACHE_DIR, batch_size: int = 32,
                      verbose: bool = False) -> FIDResult:
    """FID of an exported model against `shapes` (split default heldout) or a data folder."""
    pipe = ExportedModel.from_pretrained(model_dir, device=device)
    return fid_generator_vs_data(pipe.G, pipe.text_cache, pipe.schema, data, split=split, num=num, seed=seed,
                                 truncation=truncation, kid=kid, device=device, inception_weights=inception_weights,
                                 allow_download=allow_download, cache_dir=cache_dir, batch_size=batch_size,
                                 model_path=str(model_dir),
                                 model_step=pipe.meta.get("step"), verbose=verbose)

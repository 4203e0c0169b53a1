"""Training input at GPU speed: a data set rendered or decoded once into arrays, read by batch.

    OUT = CACHE/images/KEY/  (CACHE: data.cache_dir, else the user cache folder)
      images.npy    (N, R, R, 3) uint8, memory-mapped when read
      records.npz   attr_index, attr_value, attr_present (N, A); caption_ids, negative_ids (N, K) int32,
                    -1 = no entry: each record's captions and contradicting captions as ids into
      captions.json the sorted list of every caption and negative the records use
      identity.json what KEY was made from (the data set's settings and, for a folder, its files)

KEY is a digest of the data set's identity: a change of its settings, of a folder's files or of the
shapes renderer's source makes a new entry. The folder is written under a temporary name and renamed
when complete, so a killed build leaves nothing that is read later.

`ArrayBatches` yields what the DataLoader over the data set yields (the same images, captions,
negatives and attributes for the same (seed, step)), as uint8 images and caption ids, in the
training process: no rendering, decoding or per-item Python work at training time.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from cgan.data import CaptionedDataset, FolderDataset, ShapesDataset, StepSampler

FORMAT_VERSION = 1


class ImageCacheError(RuntimeError):
    """The image cache cannot be built where it is configured (no space, not writable)."""


def dataset_identity(dataset: CaptionedDataset) -> dict[str, Any]:
    """Everything the cached arrays depend on, as JSON."""
    if isinstance(dataset, ShapesDataset):
        import cgan.data.shapes as shapes_lib

        source = hashlib.sha256(Path(shapes_lib.__file__).read_bytes()).hexdigest()[:16]
        return {"format": FORMAT_VERSION, "kind": "shapes", "num_images": dataset.count,
                "resolution": dataset.resolution, "split": dataset.split, "seed": dataset.seed,
                "renderer_source": source}
    if isinstance(dataset, FolderDataset):
        files = []
        for record in dataset.records:
            stat = (dataset.folder / record.file_name).stat()
            files.append([record.file_name, stat.st_size, stat.st_mtime_ns, record.captions,
                          json.dumps(record.attributes, sort_keys=True, default=str)])
        digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
        return {"format": FORMAT_VERSION, "kind": "folder", "path": str(dataset.folder.resolve()),
                "resolution": dataset.resolution, "background": list(dataset.background),
                "schema": dataset.schema.to_dict(), "num_records": len(dataset.records), "files": digest}
    raise ImageCacheError(f"data.image_cache: no cache form for {type(dataset).__name__}; "
                          f"set data.image_cache=false")


def cache_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _encode_records(dataset: CaptionedDataset, start: int, stop: int, images_path: str | None) -> list[tuple]:
    """Records start..stop-1: their images written into images_path (a .npy being built, None = skip) and
    (captions, negatives, attr_index, attr_value, attr_present) returned."""
    images = np.lib.format.open_memmap(images_path, mode="r+") if images_path else None
    rows = []
    for index in range(start, stop):
        record = dataset.record(index)
        if images is not None:
            images[index] = np.asarray(dataset.image(index).convert("RGB"), dtype=np.uint8)
        encoded = dataset.schema.encode_one(record["attributes"])
        rows.append((list(record["captions"]), list(record.get("negatives") or [""]),
                     *(t.numpy() for t in encoded)))
    if images is not None:
        images.flush()
    return rows


def _padded_ids(lists: list[list[str]], ids: dict[str, int]) -> np.ndarray:
    width = max(len(x) for x in lists)
    out = np.full((len(lists), width), -1, dtype=np.int32)
    for row, items in enumerate(lists):
        out[row, :len(items)] = [ids[c] for c in items]
    return out


def build_arrays(dataset: CaptionedDataset, folder: Path, identity: dict[str, Any], workers: int) -> None:
    """Render or decode every record into `folder` (written as folder.tmp-PID, then renamed)."""
    count, res = dataset.num_records(), dataset.resolution
    needed = count * res * res * 3
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < needed * 1.1 + 2 ** 26:
        raise ImageCacheError(f"data.image_cache: the cache of {count} images at {res} px needs "
                              f"{needed / 2 ** 30:.2f} GiB in {folder.parent}, {free / 2 ** 30:.2f} GiB are free; "
                              f"free space, set data.cache_dir to another disk, or set data.image_cache=false")
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    images_path = str(tmp / "images.npy")
    np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(count, res, res, 3)).flush()
    started = time.perf_counter()
    chunk = max(1, min(2000, -(-count // max(1, workers * 4))))
    spans = [(s, min(count, s + chunk)) for s in range(0, count, chunk)]
    if workers > 1 and len(spans) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_encode_records, *zip(*[(dataset, a, b, images_path) for a, b in spans])))
    else:
        parts = [_encode_records(dataset, a, b, images_path) for a, b in spans]
    rows = [row for part in parts for row in part]
    captions, negatives = [r[0] for r in rows], [r[1] for r in rows]
    table = sorted({c for group in captions + negatives for c in group})
    ids = {c: i for i, c in enumerate(table)}
    np.savez(tmp / "records.npz", attr_index=np.stack([r[2] for r in rows]), attr_value=np.stack([r[3] for r in rows]),
             attr_present=np.stack([r[4] for r in rows]), caption_ids=_padded_ids(captions, ids),
             negative_ids=_padded_ids(negatives, ids))
    (tmp / "captions.json").write_text(json.dumps(table))
    (tmp / "identity.json").write_text(json.dumps(identity, indent=1))
    try:
        tmp.rename(folder)
    except OSError:  # another process published the same entry first: theirs is as good
        if not (folder / "images.npy").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"data.image_cache: {count} images at {res} px written to {folder} in "
          f"{time.perf_counter() - started:.1f} s (once; later runs read them)", file=sys.stderr)


@dataclass
class DatasetArrays:
    """A data set's records as arrays (see the module docstring); `images` is memory-mapped."""

    images: np.ndarray  # (N, R, R, 3) uint8
    attr_index: np.ndarray  # (N, A) int64
    attr_value: np.ndarray  # (N, A) float32
    attr_present: np.ndarray  # (N, A) bool
    caption_ids: np.ndarray  # (N, K) int32, -1 padded
    negative_ids: np.ndarray  # (N, L) int32, -1 padded
    captions: list[str]  # id -> caption
    folder: Path

    def __len__(self) -> int:
        return len(self.images)


def load_arrays(folder: Path) -> DatasetArrays:
    records = np.load(folder / "records.npz")
    return DatasetArrays(np.load(folder / "images.npy", mmap_mode="r"), records["attr_index"],
                         records["attr_value"], records["attr_present"], records["caption_ids"],
                         records["negative_ids"], json.loads((folder / "captions.json").read_text()), folder)


def cached_arrays(dataset: CaptionedDataset, cache_dir: str | Path, workers: int | None = None) -> DatasetArrays:
    """The data set's arrays from CACHE/images/KEY, built first if missing (workers: processes that
    render or decode, default every core)."""
    identity = dataset_identity(dataset)
    folder = Path(cache_dir) / "images" / cache_key(identity)
    if not (folder / "identity.json").is_file():
        try:
            build_arrays(dataset, folder, identity, workers or os.cpu_count() or 1)
        except PermissionError as err:
            raise ImageCacheError(f"data.image_cache: cannot write {folder.parent} ({err}); set data.cache_dir to "
                                  f"a writable folder or data.image_cache=false") from err
    return load_arrays(folder)


def draw_choices(ids: np.ndarray, counts: np.ndarray, global_indices: np.ndarray, records: np.ndarray,
                 salt: str) -> np.ndarray:
    """What CaptionedDataset.__getitem__ draws for each visit: random.Random(f"{salt}/{global index}").choice(
    the record's list), as ids. A choice from one entry is that entry, whatever the generator."""
    chosen = np.empty(len(records), dtype=np.int64)
    for k, (g, r) in enumerate(zip(global_indices.tolist(), records.tolist())):
        row = ids[r, :counts[r]]
        chosen[k] = row[0] if len(row) == 1 else random.Random(f"{salt}/{g}").choice(row.tolist())
    return chosen


_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # in the draw process: salt -> (ids, counts)


def _draw_process_start(tables: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process stops the run and then this process
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _TABLES.update(tables)


def _draw_epoch(epoch: int) -> dict[str, np.ndarray]:
    """Every draw of an epoch: salt -> (N,) ids, record r's at r."""
    out = {}
    for salt, (ids, counts) in _TABLES.items():
        records = np.arange(len(ids))
        out[salt] = draw_choices(ids, counts, records + epoch * len(ids), records, salt)
    return out


class ArrayBatches:
    """An endless iterator of one process's micro-batches from `step` on, in StepSampler's order:

        image        (B, 3, R, R) uint8, a channels_last view
        caption_id   (B,) long: the caption drawn for the visit, as DataLoader items draw it
        negative_id  (B,) long: the contradicting caption drawn for the visit (the id of "" if none);
                     only with negatives=True
        attr_index, attr_value, attr_present   (B, A)
        index        (B,) long record indices

    The draws (a seeded random.Random per visit, ~6 us each) are most of a batch's cost: for a data set of
    `background_from` records or more, one helper process draws the current epoch and the next, and
    batches use its result once it is ready (drawing inline until then). Where processes cannot be forked,
    every draw is inline.
    """

    def __init__(self, arrays: DatasetArrays, *, batch_size: int, seed: int, start_step: int = 0,
                 num_processes: int = 1, process_index: int = 0, pin: bool = False, negatives: bool = True,
                 background_from: int = 10_000):
        self.arrays, self.batch_size, self.pin = arrays, batch_size, pin
        self.sampler = StepSampler(len(arrays), batch_size=batch_size, seed=seed, start_step=start_step,
                                   num_processes=num_processes, process_index=process_index)
        self.global_batch = batch_size * num_processes
        self.step, self.process_index = start_step, process_index
        self.tables = {"caption": (arrays.caption_ids, (arrays.caption_ids >= 0).sum(1))}
        if negatives:
            self.tables["negative"] = (arrays.negative_ids, (arrays.negative_ids >= 0).sum(1))
        # the records' attributes as torch tensors: a batch's rows are gathered into memory torch allocates
        # (64-byte aligned), as the DataLoader's collate does. Rows in numpy's memory (16-byte aligned at
        # best) can take other SIMD paths in the model's first layers on some CPUs, and the training
        # would then differ from the one without the cache in the last bits.
        self.attributes = {name: torch.from_numpy(np.ascontiguousarray(getattr(arrays, name)))
                           for name in ("attr_index", "attr_value", "attr_present")}
        self.background = len(arrays) >= background_from and "fork" in multiprocessing.get_all_start_methods()
        self.pool = None
        self.ahead: dict[int, Any] = {}  # epoch -> Future of that epoch's draws

    def __iter__(self) -> "ArrayBatches":
        return self

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def __del__(self) -> None:
        self.close()

    def global_indices(self, step: int) -> np.ndarray:
        """(B,) global indices (epoch * N + record) of this process's share of `step`."""
        n = len(self.arrays)
        first = step * self.global_batch + self.process_index * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):  # one permutation per epoch the batch touches
            where = epochs == epoch
            out[where] = self.sampler._permutation(int(epoch)).numpy()[offsets[where]] + int(epoch) * n
        return out

    def _epoch_draws(self, salt: str, epoch: int) -> np.ndarray | None:
        """The helper's draws of a whole epoch if ready (asking for it and the next), else None."""
        if self.pool is None:  # forked, as DataLoader workers are: spawn would re-run an unguarded __main__
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_draw_process_start, initargs=(self.tables,))
        for old in [e for e in self.ahead if e < epoch]:
            del self.ahead[old]
        for e in range(epoch, epoch + 2):
            if e not in self.ahead:
                self.ahead[e] = self.pool.submit(_draw_epoch, e)
        future = self.ahead[epoch]
        return future.result()[salt] if future.done() else None

    def _draw(self, salt: str, global_indices: np.ndarray, records: np.ndarray) -> torch.Tensor:
        ids, counts = self.tables[salt]
        if not self.background:
            return torch.from_numpy(draw_choices(ids, counts, global_indices, records, salt))
        chosen = np.empty(len(records), dtype=np.int64)
        epochs = global_indices // len(self.arrays)
        for epoch in np.unique(epochs).tolist():
            where = epochs == epoch
            epoch_draws = self._epoch_draws(salt, epoch)
            chosen[where] = epoch_draws[records[where]] if epoch_draws is not None else \
                draw_choices(ids, counts, global_indices[where], records[where], salt)
        return torch.from_numpy(chosen)

    def __next__(self) -> dict[str, torch.Tensor]:
        a = self.arrays
        global_indices = self.global_indices(self.step)
        self.step += 1
        records = global_indices % len(a)
        images = torch.from_numpy(np.take(a.images, records, axis=0)).permute(0, 3, 1, 2)  # (B, 3, R, R), NHWC
        if self.pin:  # page-locked: the copy to the GPU runs asynchronously
            images = images.pin_memory()
        batch = {"image": images, "caption_id": self._draw("caption", global_indices, records),
                 "index": torch.from_numpy(records)}
        for name, table in self.attributes.items():
            batch[name] = table.index_select(0, batch["index"])  # (B, A)
        if "negative" in self.tables:
            batch["negative_id"] = self._draw("negative", global_indices, records)
        return batch

"""Data sets: the built-in `shapes`, the emoji set (a custom-format folder) and your own folders.

All of them yield the same items, so one loader serves all:
    image        (3, R, R) float in [-1, 1]
    text         str, one caption (drawn from the record's paraphrases / caption list)
    attr_index, attr_value, attr_present   (A,) each, see cgan/condition/attributes.py
    index        the record's index

Items are addressed by a *global* index (epoch * len + record): the caption drawn for a
record with several captions depends on it, so the data order and the captions are a pure
function of (seed, step) and resume exactly.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
import torch
from torch.utils.data import Dataset, Sampler

from cgan.condition.attributes import AttributeSchema
from cgan.core.images import image_to_tensor
from cgan.data import shapes as shapes_lib
from cgan.data.folder import (DataValidationError, FolderReport, format_problems, load_rgb, parse_background,
                              resize_center_crop, validate_folder)


class CaptionedDataset(Dataset):
    """Common interface: records with captions, attributes and optional ground truth."""

    schema: AttributeSchema
    resolution: int

    def num_records(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_records()

    def record(self, index: int) -> dict[str, Any]:
        """{'captions': [...], 'attributes': {...}, 'truth': ..., optionally 'negatives': [captions that
        contradict the image, for loss.hard_negative]} of record `index`."""
        raise NotImplementedError

    def image(self, index: int):
        raise NotImplementedError

    def all_captions(self) -> list[str]:
        raise NotImplementedError

    def is_grayscale(self) -> bool:
        """Whether every image is grey (the generator then draws grey images, model.color=auto)."""
        return False

    def __getitem__(self, global_index: int) -> dict[str, Any]:
        index = global_index % self.num_records()
        record = self.record(index)
        captions = record["captions"]
        # One caption per visit, chosen by the global index: different each epoch, same on resume.
        caption = captions[0] if len(captions) == 1 else random.Random(f"caption/{global_index}").choice(captions)
        negatives = record.get("negatives") or [""]  # "": this record has none
        negative = random.Random(f"negative/{global_index}").choice(negatives)
        attr_index, attr_value, attr_present = self.schema.encode_one(record["attributes"])
        return {"image": image_to_tensor(self.image(index)), "text": caption, "negative": negative,
                "attr_index": attr_index, "attr_value": attr_value, "attr_present": attr_present, "index": index}


class ShapesDataset(CaptionedDataset):
    """The procedural shapes set: `num_images` scenes of `split`, rendered on the fly."""

    def __init__(self, *, num_images: int = 50_000, resolution: int = 64, split: str = "train", seed: int = 0):
        if split not in shapes_lib.SPLITS:
            raise ValueError(f"data.split: expected one of {', '.join(shapes_lib.SPLITS)}, got {split!r}")
        self.count, self.resolution, self.split, self.seed = num_images, resolution, split, seed
        self.schema = AttributeSchema.from_dict(shapes_lib.SCHEMA)

    def num_records(self) -> int:
        return self.count

    def scene(self, index: int) -> shapes_lib.Scene:
        return shapes_lib.scene_at(self.seed, index, self.split)

    def record(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        return {"captions": scene.captions, "attributes": scene.attributes, "truth": scene.truth(),
                "negatives": shapes_lib.contradictions(scene.objects, scene.relation, self.split, salt=index)}

    def image(self, index: int):
        return shapes_lib.render(self.scene(index), self.resolution)

    def all_captions(self) -> list[str]:
        return shapes_lib.all_captions(self.split)


class FolderDataset(CaptionedDataset):
    """A custom-format folder (images + metadata.jsonl/csv), validated before use."""

    def __init__(self, path: str | Path, *, resolution: int = 64, attributes: dict[str, Any] | list[str] | None = None,
                 ignore: list[str] | tuple[str, ...] = (), on_error: str = "fail", background: str = "white",
                 report: FolderReport | None = None):
        self.folder, self.resolution = Path(path), resolution
        self.background = parse_background(background)
        self.report = report or validate_folder(self.folder, resolution, attributes, ignore=ignore)
        if self.report.problems:
            summary = (f"{self.report.metadata_file}: {len(self.report.problems)} problem(s) in "
                       f"{len(self.report.bad_lines)} record(s):\n{format_problems(self.report)}")
            column_problems = [p for p in self.report.problems if ":" not in p.source]
            if column_problems or not self.report.records:
                raise DataValidationError(summary + "\nfix them: " + ("these concern whole columns or settings"
                                          if column_problems else "no record is left") + ", which data.on_error=skip "
                                          "cannot leave out")
            if on_error == "fail":
                raise DataValidationError(summary + "\nfix them, or set data.on_error=skip to leave bad records out")
            print(f"data.on_error=skip: leaving out {summary}", file=sys.stderr)
        for warning in self.report.warnings:
            print(f"warning: {self.report.metadata_file}: {warning}", file=sys.stderr)
        self.records = self.report.records
        self.schema = self.report.schema  # type: ignore[assignment]

    def num_records(self) -> int:
        return len(self.records)

    def record(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return {"captions": r.captions, "attributes": r.attributes, "truth": r.truth}

    def image(self, index: int):
        return resize_center_crop(load_rgb(self.folder / self.records[index].file_name, self.background),
                                  self.resolution)

    def all_captions(self) -> list[str]:
        return sorted({c for r in self.records for c in r.captions})

    def is_grayscale(self, sample: int = 64) -> bool:
        """Whether the folder's images are grey: up to `sample` of them, spread over the folder, are
        single-channel or have equal R, G and B (within 2 levels)."""
        step = max(1, len(self.records) // sample)
        for record in self.records[::step][:sample]:
            with Image.open(self.folder / record.file_name) as img:
                if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                    continue
                rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
            if np.abs(rgb[..., 0] - rgb[..., 1]).max() > 2 or np.abs(rgb[..., 1] - rgb[..., 2]).max() > 2:
                return False
        return bool(self.records)


def stratified_records(dataset: CaptionedDataset, count: int = 8, scan: int = 4000, seed: int = 0) -> list[int]:
    """`count` record indices that together show as many conditions as they can: greedily, the record
    that adds the most (caption, attribute value) pairs not shown yet (continuous values in 3 bins), out
    of `scan` records in a seeded random order. A sorted folder's first records are variants of one
    combination; these spread over the data set's captions and attribute values instead."""
    order = list(range(dataset.num_records()))
    random.Random(seed).shuffle(order)
    candidates = order[:scan]

    def shown(index: int) -> set[tuple[str, Any]]:
        record = dataset.record(index)
        keys: set[tuple[str, Any]] = {("text", record["captions"][0])}
        for spec in dataset.schema.specs:
            value = record["attributes"].get(spec.name)
            if value is None:
                continue
            if spec.kind == "continuous":
                value = min(2, int(3 * (float(value) - spec.low) / max(spec.high - spec.low, 1e-12)))
            keys.add((spec.name, value))
        return keys

    keys = {index: shown(index) for index in candidates}
    chosen: list[int] = []
    covered: set[tuple[str, Any]] = set()
    for _ in range(min(count, len(candidates))):
        best = max((i for i in candidates if i not in chosen), key=lambda i: len(keys[i] - covered))
        chosen.append(best)
        covered |= keys[best]
    return chosen


def build_dataset(data_config) -> CaptionedDataset:
    """The data set a DataConfig names, validated."""
    if data_config.name == "shapes":
        return ShapesDataset(num_images=data_config.num_images, resolution=data_config.resolution,
                             split=data_config.split, seed=data_config.seed)
    if data_config.name == "folder":
        return FolderDataset(data_config.path, resolution=data_config.resolution, attributes=data_config.attributes,
                             ignore=data_config.ignore, on_error=data_config.on_error,
                             background=data_config.background)
    raise ValueError(f"data.name: expected shapes or folder, got {data_config.name!r}")


class StepSampler(Sampler[int]):
    """Global indices for steps start_step, start_step + 1, ... of one process.

    The global batch of step s covers positions [s * B * P, (s + 1) * B * P) of an endless
    stream of per-epoch permutations (seeded by seed + epoch); process p takes its slice.
    The order is a pure function of (seed, step), so a resume continues it exactly.
    """

    def __init__(self, num_records: int, *, batch_size: int, seed: int, start_step: int = 0,
                 num_processes: int = 1, process_index: int = 0):
        self.num_records, self.batch_size, self.seed = num_records, batch_size, seed
        self.start_step, self.num_processes, self.process_index = start_step, num_processes, process_index
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_records, generator=gen), epoch
        return self._perm  # type: ignore[return-value]

    def global_index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_records)
        return int(self._permutation(epoch)[offset]) + epoch * self.num_records

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.num_processes
        step = self.start_step
        while True:
            first = step * global_batch + self.process_index * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self.global_index(position)
            step += 1

    def __len__(self) -> int:
        return sys.maxsize

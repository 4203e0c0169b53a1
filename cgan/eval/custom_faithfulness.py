"""Faithfulness on any folder (`python -m cgan.faithfulness --model DIR --data FOLDER`).

Judges are trained on 80 % of the folder's real records and measured on the other 20 % (the ceiling);
images generated from those 20 % records' captions and attributes are then judged the same way:
- a classifier of the categorical attributes, of the continuous ones in NUM_BINS bins (cut at the
  training records' quantiles, so each bin holds about as many records) and, where the captions are few (at most
  MAX_CAPTION_CLASSES unique, at least 3 records each on average), of the caption as a class;
- where the captions are free-form, a small image-text matcher (cgan.eval.caption_match) and the
  R-precision of the caption against NUM_DISTRACTORS others (chance in the "majority" column).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from einops import rearrange

from cgan.eval.caption_match import CaptionMatcher, distractor_sets, fit_matcher, r_precision
from cgan.eval.faithfulness import (READER_SIZE, GenerateFn, ShapesReader, as_exported_model, fit,
                                    pipeline_generate_fn, record_conditions, to_input)
from cgan.data import FolderDataset

CAPTION_HEAD = "caption"  # the head that reads the caption, where the captions are few enough to be classes
CAPTION_RANK = "caption_r_precision"  # free-form captions: R-precision of the caption matcher
MAX_CAPTION_CLASSES = 300
NUM_BINS = 3  # a continuous attribute is judged as low / middle / high among the training records


@dataclass
class CaptionRanker:
    """The trained matcher with its caption bank (every caption of the records it may be asked about)."""

    matcher: CaptionMatcher
    bank: list[str]  # captions, one row each
    bank_embeds: torch.Tensor  # (C, E) the matcher's unit embedding of each bank row
    seed: int

    def _rows(self, prompts: list[str], records: list[dict[str, Any]]) -> tuple[list[int], list[torch.Tensor]]:
        """The bank rows of the prompts, and the distractor rows of each (none of its record's captions)."""
        row = {c: k for k, c in enumerate(self.bank)}
        true = [row[p] for p in prompts]
        own = [{row[c] for c in r["captions"]} for r in records]
        return true, distractor_sets(true, own, len(self.bank), self.seed)

    def score(self, images: torch.Tensor, prompts: list[str], records: list[dict[str, Any]]) -> float:
        """R-precision of images (N, 3, R, R) for the prompts they were made from (rows of the bank)."""
        true, distractors = self._rows(prompts, records)
        return r_precision(self.matcher.embed_images_eval(images), self.bank_embeds, true, distractors)

    def chance(self, prompts: list[str], records: list[dict[str, Any]]) -> float:
        """The R-precision of a random ranking: the mean of 1 / (1 + distractors) over the images."""
        _, distractors = self._rows(prompts, records)
        return round(sum(1 / (1 + len(d)) for d in distractors) / max(len(distractors), 1), 4)


@dataclass
class AttributeClassifier:
    """The judges of a folder: a classifier of its attributes (continuous ones binned) and, where its captions are
    few, of the caption as a class; where they are free-form, a caption ranker. With their scores on
    real records they were not trained on."""

    net: ShapesReader | None  # None when there is nothing to classify (free-form captions only)
    names: list[str]  # the heads: attributes in schema order, then CAPTION_HEAD if captions are classes
    size: int
    eval_indices: list[int]
    ceiling: dict[str, float | None]
    majority: dict[str, float | None]  # for CAPTION_RANK: chance
    captions: list[str] = field(default_factory=list)  # the caption classes (each record's first caption)
    ranker: CaptionRanker | None = None
    bin_edges: dict[str, list[float]] = field(default_factory=dict)  # continuous attributes: inner bin edges

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.net is None:
            return {}
        parts = [self.net(to_input(chunk, self.size)) for chunk in images.split(256)]
        return {n: torch.cat([p[n] for p in parts]).argmax(1) for n in self.names}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, R, R) in [-1, 1] -> (N, 128): the features the judges' heads read."""
        if self.net is None:
            raise ValueError("this folder's judges have no image classifier (free-form captions only)")
        self.net.eval()
        return torch.cat([self.net.features(to_input(chunk, self.size)) for chunk in images.split(256)])


def caption_classes(dataset) -> list[str]:
    """The data set's captions as classes (each record's first caption), or [] if they are too many."""
    classes = sorted({dataset.record(i)["captions"][0] for i in range(dataset.num_records())})
    few = 2 <= len(classes) <= MAX_CAPTION_CLASSES and 3 * len(classes) <= dataset.num_records()
    return classes if few and CAPTION_HEAD not in dataset.schema.by_name else []


def _value(record: dict[str, Any], name: str) -> Any:
    return record["attributes"].get(name)


def bin_edges(dataset, indices: list[int], names: list[str]) -> dict[str, list[float]]:
    """The inner edges of NUM_BINS equal-count bins of each continuous attribute over the records;
    an attribute whose values do not spread over two bins has none (it is not judged)."""
    records = [dataset.record(i) for i in indices]
    edges = {}
    for n in names:
        values = torch.tensor([float(v) for r in records if (v := _value(r, n)) is not None], dtype=torch.float64)
        if len(values) < NUM_BINS:
            continue
        inner = torch.quantile(values, torch.arange(1, NUM_BINS, dtype=torch.float64) / NUM_BINS).unique()
        inner = inner[inner > values.min()]  # an edge at the minimum would leave its lower bin empty
        if len(inner):
            edges[n] = inner.tolist()
    return edges


def _targets(dataset, indices: list[int], names: list[str], captions: list[str],
             edges: dict[str, list[float]]) -> tuple[dict, dict]:
    """Class index and presence per head: ({name: (N,) long}, {name: (N,) bool})."""
    records = [dataset.record(i) for i in indices]
    targets, masks = {}, {}
    for n in names:
        if n == CAPTION_HEAD:
            position = {c: k for k, c in enumerate(captions)}
            targets[n] = torch.tensor([position[r["captions"][0]] for r in records])
            masks[n] = torch.ones(len(records), dtype=torch.bool)
            continue
        values = [_value(r, n) for r in records]
        if n in edges:  # continuous: the bin, edges[k - 1] <= value < edges[k]
            numbers = torch.tensor([float(v) if v is not None else 0.0 for v in values], dtype=torch.float64)
            targets[n] = torch.bucketize(numbers, torch.tensor(edges[n], dtype=torch.float64), right=True)
        else:
            targets[n] = torch.tensor([dataset.schema.by_name[n].values.index(str(v)) if v is not None else 0
                                       for v in values])
        masks[n] = torch.tensor([v is not None for v in values])
    return targets, masks


def _accuracy(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float | None:
    return round(float((pred == target)[mask].float().mean()), 4) if mask.any() else None


def _load_images(dataset, indices: list[int]) -> torch.Tensor:
    return rearrange(torch.from_numpy(np.stack([np.asarray(dataset.image(i), np.uint8) for i in indices])),
                     "n h w c -> n c h w")  # (N, 3, R, R) uint8


def _train_ranker(dataset, train_idx: list[int], all_idx: list[int], images: torch.Tensor, text_cache,
                  steps: int, batch_size: int, seed: int, size: int, log) -> CaptionRanker:
    bank = sorted({c for i in all_idx for c in dataset.record(i)["captions"]})
    row = {c: k for k, c in enumerate(bank)}
    caption_rows = [[row[c] for c in dataset.record(i)["captions"]] for i in train_idx]
    matcher = CaptionMatcher(text_cache.encoder.dim, size)
    fit_matcher(matcher, images, caption_rows, lambda rows: text_cache([bank[r] for r in rows]), steps,
                batch_size, seed, log=log)
    embeds = torch.cat([matcher.embed_texts_eval(text_cache(bank[s:s + 512])) for s in range(0, len(bank), 512)])
    return CaptionRanker(matcher, bank, embeds, seed)


def train_attribute_classifier(dataset, steps: int = 1000, batch_size: int = 64, seed: int = 0,
                               max_images: int = 10_000, log: Callable[[str], None] | None = None,
                               text_cache=None) -> AttributeClassifier:
    """Train the judges on 80 % of a FolderDataset's records, measure them on the rest. The split
    depends on `seed` only, so evaluations with any generation seed share it. `text_cache` (the
    model's TextEmbeddingCache) lets free-form captions be judged by a caption ranker."""
    captions = caption_classes(dataset)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()[:max_images]
    cut = max(1, min(len(order) - 1, round(0.8 * len(order))))
    train_idx, eval_idx = order[:cut], order[cut:]
    edges = bin_edges(dataset, train_idx, [s.name for s in dataset.schema.specs if s.kind == "continuous"])
    names = [s.name for s in dataset.schema.specs if s.kind == "categorical" or s.name in edges] + \
        ([CAPTION_HEAD] if captions else [])
    free_form = not captions and text_cache is not None and len(order) >= 10 and \
        len({dataset.record(i)["captions"][0] for i in order}) >= 2
    if not names and not free_form:
        raise ValueError(f"the data set has no attributes to check and too many distinct captions "
                         f"(more than {MAX_CAPTION_CLASSES}, or under 3 records each) to treat them as classes")
    train_images = _load_images(dataset, train_idx)
    size = min(READER_SIZE, dataset.resolution)
    net, ranker = None, None
    with torch.random.fork_rng(devices=[]):  # leaves the caller's (e.g. a training run's) RNG untouched
        torch.random.default_generator.manual_seed(seed)  # the CPU's only: fork_rng restores no GPU RNG
        if names:
            targets, masks = _targets(dataset, train_idx, names, captions, edges)
            heads = {n: len(captions) if n == CAPTION_HEAD else len(edges[n]) + 1 if n in edges
                     else len(dataset.schema.by_name[n].values) for n in names}
            net = ShapesReader(heads, width=24)
            fit(net, train_images, targets, steps, batch_size, seed, size, masks, log)
        if free_form:
            ranker = _train_ranker(dataset, train_idx, order, train_images, text_cache, steps, batch_size, seed,
                                   size, log)
    classifier = AttributeClassifier(net, names, size, eval_idx, {}, {}, captions, ranker, edges)
    eval_images = _load_images(dataset, eval_idx)
    eval_targets, eval_masks = _targets(dataset, eval_idx, names, captions, edges)
    pred = classifier.predict(eval_images)
    for n in names:
        m = eval_masks[n]
        classifier.ceiling[n] = _accuracy(pred[n], eval_targets[n], m)
        majority = torch.full_like(eval_targets[n], int(torch.bincount(eval_targets[n][m]).argmax()) if m.any() else 0)
        classifier.majority[n] = _accuracy(majority, eval_targets[n], m)
    if ranker is not None:
        records = [dataset.record(i) for i in eval_idx]
        prompts, _ = record_conditions(records, f"{seed}/custom")
        classifier.ceiling[CAPTION_RANK] = ranker.score(eval_images, prompts, records)
        classifier.majority[CAPTION_RANK] = ranker.chance(prompts, records)
    return classifier


def evaluate_attributes(generate_fn: GenerateFn, dataset, classifier: AttributeClassifier, num: int = 500,
                        seed: int = 0) -> dict[str, float | None]:
    """Accuracy (attributes, caption) of images generated from (up to `num` of) the records the
    classifier was not trained on, and the caption R-precision where captions are free-form. Usable
    during training: train the classifier once, pass a generate_fn built on G_ema."""
    indices = classifier.eval_indices[:num]
    records = [dataset.record(i) for i in indices]
    prompts, attributes = record_conditions(records, f"{seed}/custom")
    images = generate_fn(prompts, attributes, [seed + i for i in indices])
    pred = classifier.predict(images)
    targets, masks = _targets(dataset, indices, classifier.names, classifier.captions, classifier.bin_edges)
    result = {n: _accuracy(pred[n], targets[n], masks[n]) for n in classifier.names}
    if classifier.ranker is not None:
        result[CAPTION_RANK] = classifier.ranker.score(images, prompts, records)
    return result


def evaluate_custom(model: Any, data_dir: Any, num: int = 500, seed: int = 0, truncation: float = 1.0,
                    steps: int = 1000, batch_size: int = 50, device: str = "cpu",
                    classifier: AttributeClassifier | None = None) -> dict[str, Any]:
    """Faithfulness of a model on a custom folder (a path, or the FolderDataset itself, e.g. a training
    run's): generated from the held-out 20 % records' captions and attributes, judged by judges trained
    on the other 80 % (pass `classifier` to reuse ones trained on this dataset)."""
    pipe = as_exported_model(model, device)
    start = time.time()
    # the model's own attributes: columns it was trained without (data.ignore) are not checked
    dataset = data_dir if hasattr(data_dir, "record") else FolderDataset(data_dir, resolution=pipe.resolution,
                                                                         attributes=pipe.schema.to_dict())
    data_dir = getattr(dataset, "folder", data_dir)
    classifier = classifier or train_attribute_classifier(dataset, steps, text_cache=pipe.text_cache)
    accuracy = evaluate_attributes(pipeline_generate_fn(pipe, truncation, batch_size), dataset, classifier, num, seed)
    return {"kind": "custom", "model": str(model) if not hasattr(model, "G") else None, "data": str(data_dir),
            "step": pipe.meta.get("step"), "num": min(num, len(classifier.eval_indices)), "seed": seed,
            "truncation": truncation, "classifier_steps": steps, "caption_classes": len(classifier.captions),
            "bin_edges": classifier.bin_edges, "accuracy": accuracy, "ceiling": classifier.ceiling,
            "majority": classifier.majority, "seconds": round(time.time() - start, 1)}

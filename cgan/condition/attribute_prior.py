"""What an unset attribute means at generation: drawn as the training data has it.

A conditional GAN asked with an attribute left unset (its learned null token) tends to settle on one
value: shapes64 drew every such image on a dark background. A prompt without attributes should
instead come out as the data does (shapes: each style a third of the time, each background half).
So the exported model keeps the training data's attribute distribution, and generation draws each
unset attribute from it, one draw per image, from the image's seed:

- an attribute that does not depend on the caption (measured: its mutual information with the
  caption is no higher than after shuffling the attribute over the records) is drawn from its
  distribution over the whole data set;
- one that depends on it (Fashion-MNIST's `group` follows the article) is drawn from the records
  of that exact caption; for a caption the data does not have, it stays unset (the null token),
  since the model knows better than a blind draw.

Stored in the model's config.json as `attribute_prior`; a model without one leaves unset attributes
to the null token, as before.
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Any, Mapping

import numpy as np

FORMAT = 1
NUM_QUANTILES = 33  # a continuous attribute's distribution: its values at 33 evenly spaced quantiles
DEPENDENCE_BINS = 5  # a continuous attribute is binned this finely for the dependence test
DEPENDENCE_MARGIN = 0.02  # nats of mutual information above the shuffled baseline that count as dependence


def _entropy(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values() if c)


def _mutual_information(captions: list[str], labels: list[Any]) -> float:
    """Plug-in estimate of I(caption; label) in nats."""
    by_caption: dict[str, Counter] = defaultdict(Counter)
    for caption, label in zip(captions, labels):
        by_caption[caption][label] += 1
    conditional = sum(sum(c.values()) * _entropy(c) for c in by_caption.values()) / len(labels)
    return _entropy(Counter(labels)) - conditional


def depends_on_caption(captions: list[str], labels: list[Any], seed: int = 0) -> bool:
    """Whether the labels follow the captions more than chance: the mutual information against the same
    estimate with the labels shuffled over the records (which carries the same small-sample bias)."""
    shuffled = list(labels)
    random.Random(seed).shuffle(shuffled)
    return _mutual_information(captions, labels) > _mutual_information(captions, shuffled) + DEPENDENCE_MARGIN


def _distribution(spec_kind: str, values: list[Any]) -> dict[str, Any]:
    if spec_kind == "categorical":
        return {"counts": dict(sorted(Counter(str(v) for v in values).items()))}
    quantiles = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, NUM_QUANTILES))
    return {"quantiles": [round(float(q), 6) for q in quantiles]}


def _labels(spec_kind: str, values: list[Any]) -> list[Any]:
    """Categorical values as they are; continuous ones as their quantile bin (for the dependence test)."""
    if spec_kind == "categorical":
        return [str(v) for v in values]
    numbers = np.asarray(values, dtype=np.float64)
    edges = np.quantile(numbers, np.linspace(0, 1, DEPENDENCE_BINS + 1)[1:-1])
    return list(np.searchsorted(edges, numbers, side="right"))


def build_prior(records: list[Mapping[str, Any]], schema: Any, seed: int = 0) -> dict[str, Any]:
    """The attribute prior of a data set's records ({"captions": [...], "attributes": {...}} each)."""
    prior: dict[str, Any] = {"format": FORMAT, "attributes": {}}
    for spec in schema.specs:
        rows = [r for r in records if r["attributes"].get(spec.name) is not None]
        if not rows:
            continue
        values = [r["attributes"][spec.name] for r in rows]
        entry: dict[str, Any] = _distribution(spec.kind, values)
        if depends_on_caption([r["captions"][0] for r in rows], _labels(spec.kind, values), seed):
            by_caption: dict[str, list[Any]] = defaultdict(list)
            for r, value in zip(rows, values):
                for caption in r["captions"]:
                    by_caption[caption].append(value)
            entry["by_caption"] = {c: _distribution(spec.kind, v) for c, v in sorted(by_caption.items())}
        prior["attributes"][spec.name] = entry
    return prior


def dataset_prior(dataset: Any) -> dict[str, Any]:
    """build_prior over every record of a CaptionedDataset, computed once per data set object."""
    cached = getattr(dataset, "_attribute_prior", None)
    if cached is None:
        cached = build_prior([dataset.record(i) for i in range(dataset.num_records())], dataset.schema)
        dataset._attribute_prior = cached
    return cached


def _draw(distribution: Mapping[str, Any], rng: random.Random) -> Any:
    if "counts" in distribution:
        names, weights = zip(*distribution["counts"].items())
        return rng.choices(names, weights=weights)[0]
    quantiles = distribution["quantiles"]  # inverse CDF, linear between the stored quantiles
    position = rng.random() * (len(quantiles) - 1)
    lo = int(position)
    hi = min(lo + 1, len(quantiles) - 1)
    return quantiles[lo] + (quantiles[hi] - quantiles[lo]) * (position - lo)


def fill_unset(prior: Mapping[str, Any] | None, prompt: str, attributes: Mapping[str, Any], seed: int
               ) -> dict[str, Any]:
    """`attributes` with each unset one drawn from the prior (deterministic in the seed); attributes the
    prior cannot draw for this prompt stay unset."""
    filled = dict(attributes)
    if not prior:
        return filled
    rng = random.Random(f"attribute-prior/{seed}")
    for name, entry in prior["attributes"].items():
        if filled.get(name) is not None:
            continue
        if "by_caption" in entry:
            distribution = entry["by_caption"].get(prompt.strip())
            if distribution is None:
                continue
        else:
            distribution = entry
        filled[name] = _draw(distribution, rng)
    return filled


def describe_prior(prior: Mapping[str, Any] | None) -> str:
    """One line per attribute: how an unset one is drawn."""
    if not prior:
        return "unset attributes: the learned null token (this model stores no attribute distribution)"
    lines = []
    for name, entry in prior["attributes"].items():
        how = "from the records of the same caption (it depends on the caption)" if "by_caption" in entry \
            else "from the whole data set"
        lines.append(f"unset {name}: drawn {how}")
    return "\n".join(lines)

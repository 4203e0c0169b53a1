"""Diversity measures: does the model draw what the data looks like, not only what was asked?

- `precision_recall`: improved precision and recall (Kynkäänniemi et al., 2019) on feature vectors,
  e.g. the FID Inception features both sides already have (no second pass of the network).
- `shapes_coverage`: prompts given without style, background or size. The shapes reader's
  distribution of style and background against the data's (total-variation distance, 0 = covers
  as the data does), and the spread of one object's place and size against real images' spread.
- `request_diversity`: on a custom folder, the mean pairwise distance of the folder judges'
  features among the seeds of one request, over the same among real images of that request
  (1.0 = as varied as the data).

Each reports its real-data reference beside it.

The command line is cgan/diversity.py (`python -m cgan.diversity`).
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any, Callable

import numpy as np
import torch

from cgan.core.images import image_to_tensor
from cgan.data import ShapesDataset
from cgan.data import shapes as shapes_lib
from cgan.eval.faithfulness import FaithfulnessReader

PR_NEIGHBOURS = 3  # k of the k-NN balls (the paper's choice)
FOREGROUND_THRESHOLD = 0.25  # |pixel - background| in [-1, 1] units (32 of 255) that counts as an object


# ---------------------------------------------------------------------------------------------
# Precision and recall


def _kth_neighbour_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, D) -> (N,): the distance of each row to its k-th nearest other row."""
    radii = []
    for lo in range(0, len(feats), chunk):
        distances = torch.cdist(feats[lo:lo + chunk], feats)  # (n, N), self at distance 0
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # k + 1: skip the row itself
    return torch.cat(radii)


def _inside_share(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """The share of query rows that fall inside at least one ball (centre, radius)."""
    inside = []
    for lo in range(0, len(queries), chunk):
        distances = torch.cdist(queries[lo:lo + chunk], centres)  # (n, M)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real_feats: np.ndarray | torch.Tensor, fake_feats: np.ndarray | torch.Tensor,
                     k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall: (share of generated rows inside the real rows' k-NN balls, share
    of real rows inside the generated rows' k-NN balls). Both in [0, 1]; they depend on k and N, so
    compare only against a real-vs-real reference at the same N."""
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} rows on each side, "
                         f"got {len(real)} real and {len(fake)} generated")
    precision = _inside_share(fake, real, _kth_neighbour_radii(real, k))
    recall = _inside_share(real, fake, _kth_neighbour_radii(fake, k))
    return round(precision, 4), round(recall, 4)


# ---------------------------------------------------------------------------------------------
# Shapes: coverage of open choices


def total_variation(counts_a: Counter, counts_b: Counter) -> float:
    """Total-variation distance between two empirical distributions over the same labels (0 = equal)."""
    total_a, total_b = sum(counts_a.values()), sum(counts_b.values())
    labels = set(counts_a) | set(counts_b)
    return round(0.5 * sum(abs(counts_a[x] / total_a - counts_b[x] / total_b) for x in labels), 4)


def object_extent(images: torch.Tensor) -> torch.Tensor:
    """images (N, 3, R, R) in [-1, 1], one object each -> (N, 3): centre x, centre y and size (the larger
    side of the box holding the 5th to 95th percentile of foreground pixels), all in image widths; NaN
    where no pixel differs from the background (the median of the border pixels)."""
    n, _, h, w = images.shape
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=2)  # (N, 3, 4R)
    background = border.median(dim=2).values  # (N, 3)
    foreground = (images - background[:, :, None, None]).abs().amax(dim=1) > FOREGROUND_THRESHOLD  # (N, R, R)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    out = torch.full((n, 3), float("nan"))
    for i in range(n):
        mask = foreground[i]
        if mask.sum() < 2:
            continue
        px, py = xs[mask], ys[mask]
        q = torch.tensor([0.05, 0.95])
        x_lo, x_hi = torch.quantile(px, q)
        y_lo, y_hi = torch.quantile(py, q)
        out[i] = torch.stack([(x_lo + x_hi + 1) / 2 / w, (y_lo + y_hi + 1) / 2 / h,
                              torch.maximum(x_hi - x_lo + 1, y_hi - y_lo + 1) / w])
    return out


def _spread(extent: torch.Tensor) -> dict[str, float]:
    """Standard deviation of the place (x and y, their mean) and of the size over the rows that have one."""
    valid = extent[~extent.isnan().any(dim=1)]
    if len(valid) < 2:
        return {"place": float("nan"), "size": float("nan")}
    std = valid.std(dim=0)
    return {"place": round(float((std[0] + std[1]) / 2), 4), "size": round(float(std[2]), 4)}


def shapes_coverage(generate_fn: Callable, reader: Any = None, num: int = 500, seed: int = 0,
                    data_seed: int = 11) -> dict[str, Any]:
    """Coverage of the open choices on `num` seen shapes records' captions, asked WITHOUT attributes.

    generate_fn(prompts, attribute dicts, seeds) -> images (N, 3, R, R) in [-1, 1]. Returns, per field
    (style, background), the reader's distribution of the generated images, the data's (the records' own
    attributes), and their total-variation distance; the same distance for the real images of those
    records read by the reader (the reader's own error: the floor); and, on the one-object records, the
    spread of place and size of generated against real images."""
    reader = reader or FaithfulnessReader.load()
    dataset = ShapesDataset(num_images=num, split="train", seed=data_seed)
    records = [dataset.record(i) for i in range(num)]
    prompts = [random.Random(f"coverage/{seed}/{i}").choice(r["captions"]) for i, r in enumerate(records)]
    images = generate_fn(prompts, [{} for _ in records], [seed + i for i in range(num)])
    resolution = images.shape[-1]
    real = torch.stack([image_to_tensor(shapes_lib.render(dataset.scene(i), resolution)) for i in range(num)])
    predicted, predicted_real = reader.predict(images), reader.predict(real)
    fields: dict[str, Any] = {}
    for name, labels in (("style", shapes_lib.STYLES), ("background", tuple(shapes_lib.BACKGROUNDS))):
        data = Counter(r["attributes"][name] for r in records)
        generated = Counter(labels[int(k)] for k in predicted[name])
        read_real = Counter(labels[int(k)] for k in predicted_real[name])
        fields[name] = {"tv": total_variation(generated, data), "tv_real": total_variation(read_real, data),
                        "generated": {x: round(generated[x] / num, 4) for x in labels},
                        "data": {x: round(data[x] / num, 4) for x in labels}}
    single = [i for i, r in enumerate(records) if len(r["truth"]["objects"]) == 1]
    spread, spread_real = _spread(object_extent(images[single])), _spread(object_extent(real[single]))
    return {"num": num, "fields": fields, "one_object": len(single), "spread": spread, "spread_real": spread_real,
            "spread_ratio": {k: round(spread[k] / spread_real[k], 4) if spread_real[k] else float("nan")
                             for k in spread}}


# ---------------------------------------------------------------------------------------------
# Custom folders: per-request diversity


def _request_key(record: dict[str, Any], edges: dict[str, list[float]]) -> tuple:
    """A request: the record's first caption and its attributes, continuous ones as their judge's bin."""
    parts = []
    for name, value in sorted(record["attributes"].items()):
        if name in edges and value is not None:
            value = int(np.searchsorted(edges[name], float(value), side="right"))
        parts.append((name, value))
    return (record["captions"][0], tuple(parts))


def mean_pairwise_distance(feats: torch.Tensor) -> float:
    """(K, D) -> the mean Euclidean distance over the K (K - 1) / 2 pairs."""
    distances = torch.cdist(feats, feats)  # (K, K)
    k = len(feats)
    return float(distances.sum() / (k * (k - 1)))


BY = ("request", "caption", "caption-attributes")  # what one request of request_diversity is


def request_diversity(generate_fn: Callable, dataset: Any, classifier: Any, num_requests: int = 50,
                      per_request: int = 6, seed: int = 0, by: str = "request",
                      one_latent: bool = False) -> dict[str, Any]:
    """Mean pairwise distance of the judges' features among `per_request` seeds of one request, over the
    same among `per_request` real images of that request (records sharing its caption and attributes,
    continuous ones binned as the judges bin them; seed j asks for real image j's caption and
    attributes, so a continuous attribute varies within its bin as the real images' does), averaged
    over up to `num_requests` requests that have that many real images. 1.0 = as varied as the data.
    by="caption": a request is the caption alone, asked with every attribute unset (the model draws them
    as its users get them), against the real images of that caption: for folders such as the emoji set,
    where each caption and attribute set has one image. A model perfect at following the request scores
    less than 1 there (the pipeline draws each seed's attributes, so two seeds often share a style while
    the real images all differ; benchmarks/diversity_oracle.py: 0.59 on the emoji set with 3 seeds).
    by="caption-attributes": the caption's real images as the reference, and seed j asked for real image
    j's attributes (so a model that follows the request scores 1, and one that collapses the styles less).
    one_latent: also the spread with one seed for all of a request's images ("one_latent_ratio"): what the
    asked attributes alone give (a continuous one differs within its bin), without the latent's part."""
    if by not in BY:
        raise ValueError(f"by: expected one of {', '.join(BY)}, got {by!r}")
    if classifier.net is None:
        raise ValueError("per-request diversity needs the folder judges' classifier, and this folder has "
                         "nothing to classify (free-form captions only)")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in range(len(dataset)):
        record = dataset.record(i)
        key = _request_key(record, classifier.bin_edges) if by == "request" else (record["captions"][0],)
        groups[key].append(i)
    eligible = sorted((members for members in groups.values() if len(members) >= per_request), key=lambda m: m[0])
    random.Random(f"diversity/{seed}").shuffle(eligible)
    chosen = eligible[:num_requests]
    if not chosen:
        largest = max((len(members) for members in groups.values()), default=0)
        if largest < 2:
            raise ValueError(f"every request (caption and attributes alike) appears once among the {len(groups)} of "
                             "this folder, so the data shows no spread for one request to compare with"
                             + ("; --by caption compares a caption's images instead" if by == "request" else ""))
        raise ValueError(f"no request has {per_request} real images (caption and attributes alike; the most any "
                         f"has is {largest}); lower --per-request to {largest} or less")
    real_spread, fake_spread, fixed_spread = [], [], []
    for k, members in enumerate(chosen):
        records = [dataset.record(i) for i in members[:per_request]]
        prompts = [records[0]["captions"][0]] * per_request
        # seed j asks for what real image j of the request shows: the same caption and categories, and a
        # continuous attribute's own value within the shared bin (the real spread includes that much)
        attributes = [dict(record["attributes"]) if by != "caption" else {} for record in records]
        fake = generate_fn(prompts, attributes, [seed + 1000 * k + j for j in range(per_request)])
        real = torch.stack([image_to_tensor(dataset.image(i)) for i in members[:per_request]])
        fake_spread.append(mean_pairwise_distance(classifier.features(fake)))
        real_spread.append(mean_pairwise_distance(classifier.features(real)))
        if one_latent:
            fixed = generate_fn(prompts, attributes, [seed + 1000 * k] * per_request)
            fixed_spread.append(mean_pairwise_distance(classifier.features(fixed)))
    real_mean, fake_mean = float(np.mean(real_spread)), float(np.mean(fake_spread))
    result = {"by": by, "requests": len(chosen), "per_request": per_request, "generated": round(fake_mean, 4),
              "real": round(real_mean, 4), "ratio": round(fake_mean / real_mean, 4) if real_mean else float("nan")}
    if one_latent:
        result["one_latent_ratio"] = round(float(np.mean(fixed_spread)) / real_mean, 4) if real_mean else float("nan")
    return result


# ---------------------------------------------------------------------------------------------
# Report (the command line is cgan/diversity.py)


def format_coverage(result: dict[str, Any]) -> str:
    lines = [f"coverage of open choices: {result['num']} shapes captions asked without style, background or size",
             "| field | generated | data | TV distance | reader on real (floor) |", "|---|---|---|---|---|"]
    for name, field in result["fields"].items():
        shares = lambda d: " / ".join(f"{k} {v:.2f}" for k, v in d.items())  # noqa: E731
        lines.append(f"| {name} | {shares(field['generated'])} | {shares(field['data'])} | {field['tv']:.3f} | "
                     f"{field['tv_real']:.3f} |")
    s, r, q = result["spread"], result["spread_real"], result["spread_ratio"]
    lines.append(f"one-object place spread {s['place']:.4f} (real {r['place']:.4f}, ratio {q['place']:.2f}); "
                 f"size spread {s['size']:.4f} (real {r['size']:.4f}, ratio {q['size']:.2f}) "
                 f"over {result['one_object']} images")
    return "\n".join(lines)

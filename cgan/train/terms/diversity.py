"""loss.diversity (G part only): a conditional G must not ignore its latent. For the first quarter of
the batch's conditions, G draws a second image from another latent; the pair must differ by at least
diversity_tau per unit of latent distance (the bounded mode-seeking term of DSGAN, Yang et al. 2019;
MSGAN, Mao et al. 2019). Images are compared at half resolution, so that structure, not pixel noise,
is what has to differ. Above the bound the term is 0: it keeps G from collapsing, it does not reward
noise.

The bound is one number, or one per level of conditioning (`loss.diversity_tau=levels`): a row that
gives its prompt and every attribute must vary only as much as real images of that full request do
(not at all where no request repeats, as on the emoji set), a row whose attributes were dropped as
much as the images of its caption, a row with nothing given as much as any two images."""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F

from cgan.core.images import image_to_tensor

from cgan.train.terms import GContext, LossTerm, register_term


# E|z_a - z_b| per latent dimension for z ~ N(0, I): |N(0, 2)| has mean 2 / sqrt(pi)
LATENT_DISTANCE = 2.0 / math.sqrt(math.pi)


def pair_distance(images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
    """(N, 3, R, R) twice -> (N,) mean |a - b| at half resolution: the term's image distance."""
    pooled_a, pooled_b = F.avg_pool2d(images_a.float(), 2), F.avg_pool2d(images_b.float(), 2)  # (N, 3, R/2, R/2)
    return (pooled_a - pooled_b).abs().mean(dim=(1, 2, 3))


def _scanned(dataset: Any, scan: int, rng: random.Random) -> list[int]:
    """The records a bound is measured on: all, or `scan` of them drawn by `rng`."""
    indices = list(range(dataset.num_records()))
    return sorted(rng.sample(indices, scan)) if len(indices) > scan else indices


def _mean_pair_distance(dataset: Any, groups: list[list[int]], pairs: int, rng: random.Random,
                        images: dict[int, torch.Tensor] | None = None) -> float:
    """The mean pair_distance of `pairs` pairs of records, each drawn from one of `groups` (records that
    ask for the same thing); `images` keeps loaded records for the next call."""
    images = {} if images is None else images
    chosen = [rng.sample(rng.choice(groups), 2) for _ in range(pairs)]
    for i in {i for pair in chosen for i in pair} - images.keys():
        images[i] = image_to_tensor(dataset.image(i))  # (3, R, R)
    first = torch.stack([images[a] for a, _ in chosen])  # (P, 3, R, R)
    second = torch.stack([images[b] for _, b in chosen])
    return float(pair_distance(first, second).mean())


def data_tau(dataset: Any, pairs: int = 256, scan: int = 4096, seed: int = 0) -> tuple[float, float]:
    """loss.diversity_tau=data: the bound at which two latents' images are as far apart as two real
    images of one caption. Draws up to `pairs` pairs of records sharing their first caption (among up
    to `scan` records, chosen by `seed`) -> (tau, the pairs' mean distance); tau = distance / E|dz|.
    Raises ValueError when no caption has two records."""
    rng = random.Random(f"diversity_tau/{seed}")
    indices = _scanned(dataset, scan, rng)
    by_caption: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_caption[dataset.record(i)["captions"][0]].append(i)
    groups = sorted((members for members in by_caption.values() if len(members) >= 2), key=lambda m: m[0])
    if not groups:
        raise ValueError(f"loss.diversity_tau=data: no caption has two images among {len(indices)} records, so "
                         "the data shows no spread for one caption; give loss.diversity_tau a number")
    distance = _mean_pair_distance(dataset, groups, pairs, rng)
    return distance / LATENT_DISTANCE, distance


def _level_key(record: dict[str, Any], level: int, specs: list[Any], edges: dict[str, list[float]]) -> tuple:
    """What a record asks for at one level (bit 0: the prompt given, bit j + 1: attribute j given); a
    continuous attribute as its equal-count bin (the tolerance of a request), an absent one as None."""
    key: list[Any] = [record["captions"][0] if level & 1 else None]
    for j, spec in enumerate(specs):
        if level >> (j + 1) & 1:
            value = record.get("attributes", {}).get(spec.name)
            if value is not None and spec.kind == "continuous":
                value = sum(float(value) > edge for edge in edges[spec.name])
            key.append(value)
    return tuple(key)


def level_taus(dataset: Any, pairs: int = 256, scan: int = 4096, seed: int = 0, bins: int = 3) -> list[float]:
    """loss.diversity_tau=levels: the data's bound at every level of conditioning, 2 ** (1 + A) numbers
    for A attributes, indexed prompt_given + sum(2 ** (j + 1) * attribute_j_given). Each is the mean
    distance of up to `pairs` pairs of real records (among up to `scan`) that ask for the same thing at
    that level, over E|dz|; 0 where no two records do (no spread to keep: the term rests there)."""
    specs = list(dataset.schema.specs) if dataset.schema is not None else []
    rng = random.Random(f"diversity_tau/{seed}")
    indices = _scanned(dataset, scan, rng)
    records = {i: dataset.record(i) for i in indices}
    edges = {}
    for spec in specs:
        if spec.kind == "continuous":
            values = sorted(float(r["attributes"][spec.name]) for r in records.values()
                            if r.get("attributes", {}).get(spec.name) is not None)
            edges[spec.name] = [values[len(values) * b // bins] for b in range(1, bins)] if values else []
    images: dict[int, torch.Tensor] = {}  # loaded once for every level
    taus = []
    for level in range(2 ** (1 + len(specs))):
        by_key: dict[tuple, list[int]] = defaultdict(list)
        for i in indices:
            by_key[_level_key(records[i], level, specs, edges)].append(i)
        groups = sorted((m for m in by_key.values() if len(m) >= 2), key=lambda m: m[0])
        distance = _mean_pair_distance(dataset, groups, pairs, rng, images) if groups else 0.0
        taus.append(round(distance / LATENT_DISTANCE, 4))
    return taus


def row_levels(prompt_present: torch.Tensor, attr_present: torch.Tensor) -> torch.Tensor:
    """(B,) and (B, A) bool -> (B,) long: each row's level of conditioning, as level_taus indexes them."""
    weights = 2 ** torch.arange(1, attr_present.shape[1] + 1, device=attr_present.device)  # (A,)
    return prompt_present.long() + (attr_present.long() * weights).sum(dim=1)


def diversity_loss(images_a: torch.Tensor, images_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor,
                   tau: float | torch.Tensor) -> torch.Tensor:
    """Images (N, 3, R, R) of the same conditions from latents z_a, z_b (N, Z) -> mean over the pairs of
    max(0, tau - image distance / latent distance); tau one number or one per pair (N,)."""
    image_distance = pair_distance(images_a, images_b)  # (N,)
    latent_distance = (z_a - z_b).abs().mean(dim=1)  # (N,)
    return F.relu(tau - image_distance / latent_distance.clamp(min=1e-6)).mean()


@register_term
class Diversity(LossTerm):
    name = "diversity"

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:
        if ctx.G is None or ctx.z is None or ctx.images is None:
            return None
        pairs = max(1, ctx.z.shape[0] // 4)
        z_other = torch.randn(pairs, ctx.z.shape[1], device=ctx.z.device)
        tau = ctx.config.loss.diversity_tau
        if isinstance(tau, list):  # one bound per level: the pairs are the rows with the most spread to keep
            cond = ctx.batch.cond
            row_tau = torch.tensor(tau, device=ctx.z.device)[row_levels(cond.prompt_present, cond.attr_present)]
            rows = torch.argsort(row_tau, descending=True, stable=True)[:pairs]  # (pairs,)
            tau = row_tau[rows]
        else:
            rows = torch.arange(pairs, device=ctx.z.device)
        other = ctx.G(z_other, ctx.batch.cond.index(rows))  # (pairs, 3, R, R): the same conditions, new latents
        return diversity_loss(ctx.images[rows], other, ctx.z[rows], z_other, tau)

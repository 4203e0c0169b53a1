"""loss.diversity (G part only): a conditional G must not ignore its latent. For the first quarter of
the batch's conditions, G draws a second image from another latent; the pair must differ by at least
diversity_tau per unit of latent distance (the bounded mode-seeking term of DSGAN, Yang et al. 2019;
MSGAN, Mao et al. 2019). Images are compared at half resolution, so that structure, not pixel noise,
is what has to differ. Above the bound the term is 0: it keeps G from collapsing, it does not reward
noise."""
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


def data_tau(dataset: Any, pairs: int = 256, scan: int = 4096, seed: int = 0) -> tuple[float, float]:
    """loss.diversity_tau=data: the bound at which two latents' images are as far apart as two real
    images of one caption. Draws up to `pairs` pairs of records sharing their first caption (among up
    to `scan` records, chosen by `seed`) -> (tau, the pairs' mean distance); tau = distance / E|dz|.
    Raises ValueError when no caption has two records."""
    indices = list(range(dataset.num_records()))
    rng = random.Random(f"diversity_tau/{seed}")
    if len(indices) > scan:
        indices = sorted(rng.sample(indices, scan))
    by_caption: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        by_caption[dataset.record(i)["captions"][0]].append(i)
    groups = sorted((members for members in by_caption.values() if len(members) >= 2), key=lambda m: m[0])
    if not groups:
        raise ValueError(f"loss.diversity_tau=data: no caption has two images among {len(indices)} records, so "
                         "the data shows no spread for one caption; give loss.diversity_tau a number")
    chosen = [rng.sample(rng.choice(groups), 2) for _ in range(pairs)]
    first = torch.stack([image_to_tensor(dataset.image(a)) for a, _ in chosen])  # (P, 3, R, R)
    second = torch.stack([image_to_tensor(dataset.image(b)) for _, b in chosen])
    distance = float(pair_distance(first, second).mean())
    return distance / LATENT_DISTANCE, distance


def diversity_loss(images_a: torch.Tensor, images_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor,
                   tau: float) -> torch.Tensor:
    """Images (N, 3, R, R) of the same conditions from latents z_a, z_b (N, Z) -> mean over the pairs of
    max(0, tau - image distance / latent distance)."""
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
        rows = torch.arange(pairs, device=ctx.z.device)
        other = ctx.G(z_other, ctx.batch.cond.index(rows))  # (pairs, 3, R, R): the same conditions, new latents
        return diversity_loss(ctx.images[:pairs], other, ctx.z[:pairs], z_other, ctx.config.loss.diversity_tau)

"""loss.diversity (G part only): a conditional G must not ignore its latent. For the first quarter of
the batch's conditions, G draws a second image from another latent; the pair must differ by at least
diversity_tau per unit of latent distance (the bounded mode-seeking term of DSGAN, Yang et al. 2019;
MSGAN, Mao et al. 2019). Images are compared at half resolution, so that structure, not pixel noise,
is what has to differ. Above the bound the term is 0: it keeps G from collapsing, it does not reward
noise."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgan.train.terms import GContext, LossTerm, register_term


def diversity_loss(images_a: torch.Tensor, images_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor,
                   tau: float) -> torch.Tensor:
    """Images (N, 3, R, R) of the same conditions from latents z_a, z_b (N, Z) -> mean over the pairs of
    max(0, tau - image distance / latent distance)."""
    pooled_a, pooled_b = F.avg_pool2d(images_a.float(), 2), F.avg_pool2d(images_b.float(), 2)  # (N, 3, R/2, R/2)
    image_distance = (pooled_a - pooled_b).abs().mean(dim=(1, 2, 3))  # (N,)
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

"""loss.flat (G part only): flat regions of G's images must be flat. The mean over neighbouring pixels
of min(|difference|, loss.flat_cap), across and down, on G's images before augmentation.

A difference under the cap (a few of 255 levels: the pixel noise and the ripple along the border that
D does not see) is pushed to zero; one over it (an edge, a shading ramp) costs a constant and so gets
no gradient. On data whose regions are flat (`shapes`, flat-coloured glyphs and icons), Inception
charges such noise heavily: 2 levels of noise on real shapes images cost FID 88 (recipe study, part 15).
Leave it off where the data has texture."""
from __future__ import annotations

import torch

from cgan.train.terms import GContext, LossTerm, register_term


def neighbour_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, R, R) -> |difference| between horizontal neighbours (B, C, R, R - 1) and vertical ones
    (B, C, R - 1, R)."""
    across = (images[..., :, 1:] - images[..., :, :-1]).abs()  # (B, C, R, R - 1)
    down = (images[..., 1:, :] - images[..., :-1, :]).abs()  # (B, C, R - 1, R)
    return across, down


def capped_differences(images: torch.Tensor, cap: float) -> torch.Tensor:
    """(B, C, R, R) -> (B,) mean of min(|neighbour difference|, cap) over both directions and channels."""
    across, down = (d.clamp(max=cap) for d in neighbour_differences(images))
    return (across.mean(dim=(1, 2, 3)) + down.mean(dim=(1, 2, 3))) / 2


@register_term
class Flat(LossTerm):
    name = "flat"

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:
        if ctx.images is None:
            return None
        return capped_differences(ctx.images.float(), ctx.config.loss.flat_cap).mean()

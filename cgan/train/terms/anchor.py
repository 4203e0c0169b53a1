"""loss.anchor (G part only): G's images stay near those of the generator the run started from
(train.init_from's G_ema, frozen: `Run.G_anchor`), for the same latents and conditions: the mean
absolute difference over pixels, as pix2pix's L1 term.

A continuation whose D is new (trained afterwards, or fresh) otherwise loses what the starting G drew:
circles became squares within 16,000 images (recipe study, parts 12 and 18). Under the anchor a change
costs in proportion to the pixels it moves, so D can sharpen edges and corners (a few pixels each) but
not redraw an object (hundreds)."""
from __future__ import annotations

import torch

from cgan.train.terms import GContext, LossTerm, register_term


@register_term
class Anchor(LossTerm):
    name = "anchor"

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:
        if ctx.images is None or ctx.anchor_images is None:
            return None
        return (ctx.images.float() - ctx.anchor_images.float()).abs().mean()

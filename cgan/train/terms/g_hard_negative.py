"""loss.g_hard_negative (G part only): each generated image must score higher with its own caption than
with the caption that contradicts it (softplus of the difference of D's two logits): the part of D's
logit that tells the two captions apart, without its realism part (issue 12's binding)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgan.core.config import Config
from cgan.train.losses import masked_mean
from cgan.train.terms import GContext, LossTerm, register_term


@register_term
class GHardNegative(LossTerm):
    name = "g_hard_negative"
    label = "hard_negative"  # logged as loss/G_hard_negative

    def needs_negatives(self, config: Config) -> bool:
        return True

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:
        batch = ctx.batch
        if batch.negative_text is None:
            return None
        # the same images with the captions that contradict them: D must rank their own caption higher
        contradicted = ctx.D(ctx.fake, batch.cond.replace(text=batch.negative_text)).scores().float()
        return masked_mean(F.softplus(contradicted - ctx.logits), batch.negative_valid & batch.cond.prompt_present)

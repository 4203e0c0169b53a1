"""loss.hard_negative (D part only): a real image with a caption that contradicts it (the data set's
`negatives`, e.g. shapes' two objects swapped or their colours exchanged) is a fake, like the
matching-aware negatives."""
from __future__ import annotations

import torch

from cgan.core.config import Config
from cgan.train.losses import d_fake_term, masked_mean
from cgan.train.terms import DContext, LossTerm, register_term


@register_term
class HardNegative(LossTerm):
    name = "hard_negative"

    def needs_negatives(self, config: Config) -> bool:
        return True

    def d_loss(self, ctx: DContext) -> torch.Tensor:
        logits, rows = ctx.logits["hard"], ctx.rows["hard"]
        valid = ctx.batch.negative_valid[: rows.stop - rows.start]
        ctx.stats["logits/hard_negative"] = masked_mean(logits.detach(), valid)
        return masked_mean(d_fake_term(logits, ctx.config.train.loss), valid)

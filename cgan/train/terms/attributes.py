"""loss.attributes, AC-GAN style: D predicts the attributes of real images (D part); G is trained so
that D reads the attributes it was asked for in its images (G part)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgan.train.losses import masked_mean
from cgan.train.terms import DContext, GContext, LossTerm, register_term


def attribute_loss(predictions: list[torch.Tensor], categorical: list[bool], attr_index: torch.Tensor,
                   attr_value: torch.Tensor, attr_present: torch.Tensor) -> torch.Tensor:
    """AC-GAN style: summed over attributes, the cross-entropy of a categorical attribute's logits
    (B, values) or the squared error of a continuous one's sigmoid (B, 1) against its value in [0, 1],
    averaged over the samples where the attribute is given."""
    total = predictions[0].new_zeros((), dtype=torch.float32)
    for a, prediction in enumerate(predictions):
        prediction = prediction.float()
        if categorical[a]:
            per_sample = F.cross_entropy(prediction, attr_index[:, a], reduction="none")
        else:
            per_sample = (prediction[:, 0].sigmoid() - attr_value[:, a].float()).square()
        total = total + masked_mean(per_sample, attr_present[:, a])
    return total


@register_term
class Attributes(LossTerm):
    name = "attributes"
    heads = frozenset({"attributes"})

    def d_loss(self, ctx: DContext) -> torch.Tensor | None:  # real images have every attribute the data gives them
        if not ctx.D.attribute_sizes:  # data without attributes (captions only): nothing to predict
            return None
        c = ctx.batch.cond
        return attribute_loss(ctx.D.attribute_logits(ctx.real_plain()), ctx.D.attribute_categorical, c.attr_index,
                              c.attr_value, ctx.batch.attr_present_full)

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:  # generated images: the attributes G was asked for
        if not ctx.D.attribute_sizes:
            return None
        c = ctx.batch.cond
        return attribute_loss(ctx.D.attribute_logits(ctx.out.plain), ctx.D.attribute_categorical, c.attr_index,
                              c.attr_value, c.attr_present)

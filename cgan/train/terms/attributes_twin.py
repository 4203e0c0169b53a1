"""loss.attributes_twin (TAC-GAN, Gong et al. 2019): a twin of loss.attributes' head that reads G's images.
An AC-GAN head alone rewards the images whose attributes are easiest to read, which narrows what G draws
for one request (README's reading: "Why a faithful conditional GAN loses diversity"). The twin is trained
(D part) to predict, from D's unconditioned features of G's images, the attributes G was asked for; G is
trained (G part) to make that prediction hard. With loss.attributes pulling toward the data's attributes,
the two together pull the distribution of G's images for an attribute value toward the data's, not
toward its most readable image."""
from __future__ import annotations

import torch
import torch.nn as nn

from cgan.core.layers import EqualLinear
from cgan.nets.d_contract import DiscriminatorBase
from cgan.train.terms import DContext, GContext, LossTerm, register_term
from cgan.train.terms.attributes import attribute_loss


@register_term
class AttributesTwin(LossTerm):
    name = "attributes_twin"
    label = "twin"
    heads = frozenset({"attributes_twin"})

    def build_head(self, *, plain_dim: int, cond_dim: int, attribute_sizes: list[int]) -> nn.Module | None:
        return EqualLinear(plain_dim, sum(attribute_sizes)) if attribute_sizes else None

    def twin_loss(self, D: DiscriminatorBase, plain: torch.Tensor, batch) -> torch.Tensor | None:
        """The twin's loss on unconditioned features (B, C) of G's images drawn for batch.cond."""
        head = D.term_heads[self.name]
        if head is None:  # data without attributes: nothing to predict
            return None
        c = batch.cond
        logits = list(head(plain).split(D.attribute_sizes, dim=1))  # per attribute: (B, values) or (B, 1)
        return attribute_loss(logits, D.attribute_categorical, c.attr_index, c.attr_value, c.attr_present)

    def d_loss(self, ctx: DContext) -> torch.Tensor | None:  # the D phase's fakes were drawn for batch.cond
        return self.twin_loss(ctx.D, ctx.out.plain[ctx.rows["fake"]], ctx.batch)

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:
        loss = self.twin_loss(ctx.D, ctx.out.plain, ctx.batch)
        return None if loss is None else -loss

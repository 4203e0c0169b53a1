"""loss.contrastive: InfoNCE between D's image embedding and D's condition embedding over the batch,
both ways (XMC-GAN). Real images train D's embeddings (D part), generated images train G to match
their condition (G part). With loss.contrastive_hard, the data set's contradicting captions join the
negatives."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cgan.condition.fusion import Condition
from cgan.core.config import Config
from cgan.train.terms import DContext, GContext, LossTerm, register_term


def contrastive_loss(image_embedding: torch.Tensor, cond_embedding: torch.Tensor, same: torch.Tensor,
                     temperature: float, hard_embedding: torch.Tensor | None = None,
                     hard_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch (XMC-GAN's image-sentence term): image i must pick its own
    condition among the batch's, and condition i its own image. Pairs with `same` condition (B, B)
    are left out of each other's negatives. hard_embedding (B, E): per image one more condition it
    must not pick (a caption that contradicts it, loss.contrastive_hard), where hard_valid (B,) is
    True. Embeddings not normalised (done here); computed in fp32."""
    image = F.normalize(image_embedding.float(), dim=-1)
    cond = F.normalize(cond_embedding.float(), dim=-1)
    similarity = image @ cond.t() / temperature  # (B, B): row i = image i against every condition
    own = torch.eye(len(image), dtype=torch.bool, device=image.device)
    similarity = similarity.masked_fill(same & ~own, float("-inf"))
    target = torch.arange(len(image), device=image.device)
    image_to_cond = similarity
    if hard_embedding is not None and hard_valid is not None:
        hard = (image * F.normalize(hard_embedding.float(), dim=-1)).sum(-1, keepdim=True) / temperature  # (B, 1)
        image_to_cond = torch.cat([similarity, hard.masked_fill(~hard_valid[:, None], float("-inf"))], dim=1)
    return 0.5 * (F.cross_entropy(image_to_cond, target) + F.cross_entropy(similarity.t(), target))


def pad_condition(cond: Condition, rows: int) -> Condition:
    """A Condition with zero rows appended up to `rows` (their entries are masked out by the caller)."""
    extra = rows - cond.cond_vector.shape[0]
    pad = lambda t: torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])  # noqa: E731
    words = (pad(cond.word_tokens), pad(cond.word_mask)) if cond.word_tokens is not None else (None, None)
    return Condition(pad(cond.cond_vector), pad(cond.attn_tokens), pad(cond.attn_mask), None, *words)


@register_term
class Contrastive(LossTerm):
    name = "contrastive"
    heads = frozenset({"contrastive"})

    def needs_negatives(self, config: Config) -> bool:
        return config.loss.contrastive_hard

    def loss(self, D, plain: torch.Tensor, cond: Condition, ctx: DContext | GContext,
             hard: tuple[Condition, torch.Tensor] | None) -> torch.Tensor:
        image_embedding, cond_embedding = D.contrastive_embeddings(plain, cond)
        hard_embedding, hard_valid = (D.contrastive_embeddings(plain, hard[0])[1], hard[1]) if hard else (None, None)
        return contrastive_loss(image_embedding, cond_embedding, ctx.batch.same_condition(),
                                ctx.config.loss.contrastive_temperature, hard_embedding, hard_valid)

    def d_loss(self, ctx: DContext) -> torch.Tensor:
        hard = None
        if ctx.config.loss.contrastive_hard and "hard" in ctx.rows:  # the hard rows' conditions, padded to B
            rows, batch = ctx.rows["hard"], ctx.batch
            head = slice(0, rows.stop - rows.start)
            hard = (pad_condition(ctx.out.cond.slice(rows.start, rows.stop), ctx.size),
                    torch.cat([batch.negative_valid[head], batch.negative_valid.new_zeros(ctx.size - head.stop)]))
        return self.loss(ctx.D, ctx.real_plain(), ctx.real_cond(), ctx, hard)

    def g_loss(self, ctx: GContext) -> torch.Tensor:
        batch, hard = ctx.batch, None
        if ctx.config.loss.contrastive_hard and batch.negative_text is not None:  # only where the prompt was given
            hard = (ctx.D.condition(batch.cond.replace(text=batch.negative_text)),
                    batch.negative_valid & batch.cond.prompt_present)
        return self.loss(ctx.D, ctx.out.plain, ctx.out.cond, ctx, hard)

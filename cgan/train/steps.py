"""One training step's phases: the discriminator (D), its R1 penalty, the generator (G).

Each phase function takes the models, one micro-batch (`Batch`) and the config, and returns its loss
statistics; `run_phase` runs one over the micro-batches of a step with one optimizer step. Gradients
are averaged across processes by `sync_gradients` (one flattened all-reduce per phase, as
StyleGAN2-ADA does) rather than by DDP: the D phase runs several forwards and R1 a double backward,
which DDP handles poorly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cgan.train.augment import diff_augment
from cgan.condition.fusion import ConditionInput
from cgan.core.config import Config
from cgan.train.losses import (attribute_loss, contrastive_loss, d_fake_term, d_real_term, g_loss, masked_mean,
                         mismatched_attributes, mismatched_prompt_index, r1_penalty, same_condition)
from cgan.train.recovery import skip_if_nonfinite
from cgan.condition.text_encoder import TextEncoding


@dataclass
class Batch:
    """One micro-batch on the device; conditions after training-time dropout."""

    images: torch.Tensor  # (B, 3, R, R) in [-1, 1]
    captions: list[str]
    cond: ConditionInput  # after prompt and attribute dropout
    attr_present_full: torch.Tensor  # (B, A) before dropout (for matching-aware negatives)
    # (attr_index, attr_value, attr_present_full) as loaded, on the CPU: the matching-aware negatives are
    # drawn from these, so no device -> host copy (a host sync on a GPU) is needed in the step
    attr_host: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    # loss.hard_negative: per sample a caption that contradicts its image (B rows), and which samples have one
    negative_text: TextEncoding | None = None
    negative_valid: torch.Tensor | None = None  # (B,) bool

    def full_cond(self) -> ConditionInput:
        """The condition without dropout: what a real image shows (prompt and every attribute it has)."""
        return self.cond.replace(prompt_present=torch.ones_like(self.cond.prompt_present),
                                 attr_present=self.attr_present_full)

    def same_condition(self) -> torch.Tensor:
        """(B, B) bool: pairs that ask for the same thing (not contrastive negatives of each other)."""
        c = self.cond
        return same_condition(self.captions, c.prompt_present, c.attr_index, c.attr_value, c.attr_present)


def auxiliary_losses(D, plain: torch.Tensor | None, cond, batch: Batch, config: Config,
                     attr_present: torch.Tensor, hard=None) -> dict[str, torch.Tensor]:
    """The loss terms of config.loss that are on, for images made or drawn for `batch`'s conditions:
    D's unconditioned features `plain` (B, C) of them and D's condition `cond` (B rows). attr_present:
    the attributes the images are known to have (real: all in the data; generated: those G was asked for).
    hard: (D's condition of a contradicting caption, (B,) bool where there is one), for contrastive_hard."""
    terms: dict[str, torch.Tensor] = {}
    if config.loss.contrastive > 0:
        image_embedding, cond_embedding = D.contrastive_embeddings(plain, cond)
        hard_embedding, hard_valid = (D.contrastive_embeddings(plain, hard[0])[1], hard[1]) if hard else (None, None)
        terms["contrastive"] = contrastive_loss(image_embedding, cond_embedding, batch.same_condition(),
                                                config.loss.contrastive_temperature, hard_embedding, hard_valid)
    if config.loss.attributes > 0:
        terms["attributes"] = attribute_loss(D.attribute_logits(plain), D.attribute_categorical,
                                             batch.cond.attr_index, batch.cond.attr_value, attr_present)
    return terms


def pad_condition(cond, rows: int):
    """A Condition with zero rows appended up to `rows` (their entries are masked out by the caller)."""
    from cgan.condition.fusion import Condition

    extra = rows - cond.cond_vector.shape[0]
    pad = lambda t: torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])  # noqa: E731
    words = (pad(cond.word_tokens), pad(cond.word_mask)) if cond.word_tokens is not None else (None, None)
    return Condition(pad(cond.cond_vector), pad(cond.attn_tokens), pad(cond.attn_mask), None, *words)


def weighted_sum(terms: dict[str, torch.Tensor], config: Config) -> torch.Tensor | float:
    return sum(getattr(config.loss, name) * value for name, value in terms.items())


def sync_gradients(module: torch.nn.Module, accelerator) -> None:
    """Average gradients over processes with one flattened all-reduce (no-op on one process)."""
    if accelerator.num_processes == 1:
        return
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def d_step(G, D, batch: Batch, config: Config, accelerator, augment: list[str]) -> dict[str, torch.Tensor]:
    """D phase: real (matched) up; fake, real with another prompt, real with other attributes down."""
    t = config.train
    size = batch.images.shape[0]
    num_mismatch = max(1, size // 2)
    with torch.no_grad(), accelerator.autocast():
        z = torch.randn(size, G.z_dim, device=batch.images.device)
        fake = G(z, batch.cond).float()
    # Matching-aware negatives from the first half of the batch: never a pair that matches itself.
    head = slice(0, num_mismatch)
    text_index, text_valid = mismatched_prompt_index(batch.captions)  # partners from the whole batch
    text_index, text_valid = text_index[head], text_valid[head]
    num_values = D.attribute_num_values
    mis_index, mis_value, attr_valid = mismatched_attributes(*(x[head] for x in batch.attr_host), num_values)
    device = batch.images.device
    full = batch.full_cond().index(head)  # the first half's real images with all they show
    # D scores (image, condition) pairs in one forward: real, fake, real + another prompt, real + other
    # attributes[, real + a caption that contradicts it (loss.hard_negative)]. The images are the batch's
    # real and fake ones, each augmented once; image_index says which image each pair shows.
    images = torch.cat([batch.images, fake])  # (2B, 3, R, R)
    reals, fakes, heads = (torch.arange(size, device=device), torch.arange(size, 2 * size, device=device),
                           torch.arange(num_mismatch, device=device))
    chunks = [(reals, batch.cond), (fakes, batch.cond),
              (heads, full.replace(text=batch.cond.text.index(text_index.to(device, non_blocking=True)))),
              (heads, full.replace(attr_index=mis_index.to(device, non_blocking=True),
                                   attr_value=mis_value.to(device, non_blocking=True)))]
    hard = batch.negative_text is not None
    if hard:
        chunks.append((heads, full.replace(text=batch.negative_text.index(head))))
    image_index = torch.cat([index for index, _ in chunks])
    inputs = ConditionInput.cat([cond for _, cond in chunks])
    if augment:
        images = diff_augment(images, augment)
    with accelerator.autocast():
        out = D(images, inputs, image_index=image_index)
        logits, plain, cond = out.scores().float(), out.plain, out.cond
        # the auxiliary heads learn from real images with their own conditions: the batch's first rows
        hard_pair = None
        if hard and config.loss.contrastive_hard:  # the hard chunk's conditions, rows 0..num_mismatch-1
            start = sum(len(index) for index, _ in chunks[:-1])
            hard_cond = pad_condition(cond.slice(start, start + num_mismatch), size)
            hard_pair = (hard_cond, torch.cat([batch.negative_valid[head],
                                               batch.negative_valid.new_zeros(size - num_mismatch)]))
        aux = auxiliary_losses(D, plain[:size] if plain is not None else None, cond.slice(0, size), batch, config,
                               batch.attr_present_full, hard_pair)
    real, fake_logits, mis_text, mis_attr, *hard_logits = logits.split([len(c[0]) for c in chunks])
    loss_mismatch = (masked_mean(d_fake_term(mis_text, t.loss), text_valid.to(device, non_blocking=True))
                     + masked_mean(d_fake_term(mis_attr, t.loss), attr_valid.to(device, non_blocking=True)))
    loss = d_real_term(real, t.loss).mean() + d_fake_term(fake_logits, t.loss).mean() + t.mismatch_weight * loss_mismatch
    stats = {}
    if hard:
        loss = loss + config.loss.hard_negative * masked_mean(d_fake_term(hard_logits[0], t.loss),
                                                              batch.negative_valid[head])
        stats["logits/hard_negative"] = masked_mean(hard_logits[0].detach(), batch.negative_valid[head])
    loss = loss + weighted_sum(aux, config)
    accelerator.backward(loss / t.grad_accum)
    return {"loss/D": loss.detach(), "logits/real": real.detach().mean(), "logits/fake": fake_logits.detach().mean(),
            "logits/mismatch_text": mis_text.detach().mean(), "logits/mismatch_attr": mis_attr.detach().mean(),
            **stats, **{f"loss/D_{name}": value.detach() for name, value in aux.items()}}


def r1_step(G, D, batch: Batch, config: Config, accelerator, augment: list[str]) -> dict[str, torch.Tensor]:
    """Lazy R1 on real images with their own conditions, in fp32, weighted by r1_every."""
    t = config.train
    images = batch.images.detach().requires_grad_(True)
    augmented = diff_augment(images, augment) if augment else images
    # fp32 (no autocast); the math attention kernel, since fused kernels have no double backward.
    with sdpa_kernel(SDPBackend.MATH):
        logits = D(augmented, batch.cond).scores()
        penalty = r1_penalty(logits, images)
        accelerator.backward(penalty * (t.r1_gamma / 2) * t.r1_every / t.grad_accum)
    return {"loss/r1": penalty.detach()}


def g_step(G, D, batch: Batch, config: Config, accelerator, augment: list[str]) -> dict[str, torch.Tensor]:
    t = config.train
    z = torch.randn(batch.images.shape[0], G.z_dim, device=batch.images.device)
    with accelerator.autocast():
        fake = G(z, batch.cond)
        fake = diff_augment(fake, augment) if augment else fake
        out = D(fake, batch.cond)
        logits, plain, cond = out.scores().float(), out.plain, out.cond
        hard_pair = None
        if config.loss.contrastive_hard and batch.negative_text is not None:  # only where the prompt was given
            hard_cond = D.condition(batch.cond.replace(text=batch.negative_text))
            hard_pair = (hard_cond, batch.negative_valid & batch.cond.prompt_present)
        aux = auxiliary_losses(D, plain, cond, batch, config, batch.cond.attr_present, hard_pair)
        ranking = None
        if config.loss.g_hard_negative > 0 and batch.negative_text is not None:
            # the same images with the captions that contradict them: D must rank their own caption higher
            contradicted = D(fake, batch.cond.replace(text=batch.negative_text)).scores().float()
            ranking = masked_mean(F.softplus(contradicted - logits), batch.negative_valid & batch.cond.prompt_present)
    adversarial = g_loss(logits, t.loss)
    loss = adversarial + weighted_sum(aux, config)
    stats = {}
    if ranking is not None:
        loss = loss + config.loss.g_hard_negative * ranking
        stats["loss/G_hard_negative"] = ranking.detach()
    accelerator.backward(loss / t.grad_accum)
    return {"loss/G": adversarial.detach(), **stats,
            **{f"loss/G_{name}": value.detach() for name, value in aux.items()}}


def run_phase(step_fn, trained, frozen, optimizer, batches: list[Batch], G, D, config: Config, accelerator,
              augment: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step of `trained` over the micro-batches, `frozen` without gradients.

    -> (stats averaged over the micro-batches, 1.0 if the step was skipped as non-finite else 0.0).
    """
    frozen.requires_grad_(False)
    trained.requires_grad_(True)
    optimizer.zero_grad(set_to_none=True)
    per_batch = [step_fn(G, D, batch, config, accelerator, augment) for batch in batches]
    sync_gradients(trained, accelerator)
    stats = {key: torch.stack([s[key] for s in per_batch]).mean() for key in per_batch[0]}
    skipped = skip_if_nonfinite(trained, optimizer, stats, accelerator)
    optimizer.step()
    return stats, skipped

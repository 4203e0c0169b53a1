"""One training step's phases: the discriminator (D), its R1 penalty, the generator (G). The loss terms
beside the adversarial one are objects in cgan/train/terms/; each phase adds the parts of those that are on.

Each phase function takes the models, one micro-batch (`Batch`) and the config, and returns its loss
statistics; `run_phase` runs one over the micro-batches of a step with one optimizer step. Gradients
are averaged across processes by `sync_gradients` (one flattened all-reduce per phase, as
StyleGAN2-ADA does) rather than by DDP: the D phase runs several forwards and R1 a double backward,
which DDP handles poorly.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cgan.train.augment import diff_augment
from cgan.condition.fusion import ConditionInput
from cgan.core.config import Config
from cgan.train.losses import (d_fake_term, d_real_term, g_loss, masked_mean, mismatched_attributes,
                               mismatched_prompt_index, r1_penalty)
from cgan.train.terms import TERMS, DContext, GContext, active_terms, weighted_parts
from cgan.train.microbatch import Batch
from cgan.train.recovery import skip_if_nonfinite


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
    """D phase: real (matched) up; fake, real with another prompt, real with other attributes down; then
    the D parts of the loss terms that are on (cgan/train/terms/)."""
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
    mis_index, mis_value, attr_valid = mismatched_attributes(*(x[head] for x in batch.attr_host),
                                                             D.attribute_num_values)
    device = batch.images.device
    full = batch.full_cond().index(head)  # the first half's real images with all they show
    # D scores (image, condition) pairs in one forward: real, fake, real + another prompt, real + other
    # attributes[, real + a caption that contradicts it (the data set's negatives)]. The images are the
    # batch's real and fake ones, each augmented once; image_index says which image each pair shows.
    images = torch.cat([batch.images, fake])  # (2B, 3, R, R)
    reals, fakes, heads = (torch.arange(size, device=device), torch.arange(size, 2 * size, device=device),
                           torch.arange(num_mismatch, device=device))
    chunks = {"real": (reals, batch.cond), "fake": (fakes, batch.cond),
              "mismatch_text": (heads, full.replace(text=batch.cond.text.index(text_index.to(device, non_blocking=True)))),
              "mismatch_attr": (heads, full.replace(attr_index=mis_index.to(device, non_blocking=True),
                                                    attr_value=mis_value.to(device, non_blocking=True)))}
    if batch.negative_text is not None:
        chunks["hard"] = (heads, full.replace(text=batch.negative_text.index(head)))
    image_index = torch.cat([index for index, _ in chunks.values()])
    inputs = ConditionInput.cat([cond for _, cond in chunks.values()])
    if augment:
        images = diff_augment(images, augment)
    lengths = [len(index) for index, _ in chunks.values()]
    starts = [sum(lengths[:k]) for k in range(len(lengths))]
    rows = {name: slice(start, start + n) for name, start, n in zip(chunks, starts, lengths)}
    with accelerator.autocast():
        out = D(images, inputs, image_index=image_index)
        scores = out.scores().float()
        ctx = DContext(D=D, batch=batch, config=config, out=out, rows=rows,
                       logits=dict(zip(chunks, scores.split(lengths))))
        parts = {term.name: part for term in active_terms(config) if (part := term.d_loss(ctx)) is not None}
    logits = ctx.logits
    loss_mismatch = (masked_mean(d_fake_term(logits["mismatch_text"], t.loss), text_valid.to(device, non_blocking=True))
                     + masked_mean(d_fake_term(logits["mismatch_attr"], t.loss), attr_valid.to(device, non_blocking=True)))
    loss = (d_real_term(logits["real"], t.loss).mean() + d_fake_term(logits["fake"], t.loss).mean()
            + t.mismatch_weight * loss_mismatch) + weighted_parts(parts, config)
    accelerator.backward(loss / t.grad_accum)
    return {"loss/D": loss.detach(), "logits/real": logits["real"].detach().mean(),
            "logits/fake": logits["fake"].detach().mean(),
            "logits/mismatch_text": logits["mismatch_text"].detach().mean(),
            "logits/mismatch_attr": logits["mismatch_attr"].detach().mean(), **ctx.stats,
            **{f"loss/D_{TERMS[name].label or name}": value.detach() for name, value in parts.items()}}


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


def g_step(G, D, batch: Batch, config: Config, accelerator, augment: list[str],
           G_anchor: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """G phase: the adversarial term on G's images, then the G parts of the loss terms that are on.
    G_anchor: the frozen starting generator whose images of the same z loss.anchor holds G near."""
    t = config.train
    z = torch.randn(batch.images.shape[0], G.z_dim, device=batch.images.device)
    with accelerator.autocast():
        anchor_images = None
        if G_anchor is not None and config.loss.anchor > 0:
            with torch.no_grad():
                anchor_images = G_anchor(z, batch.cond)  # (B, 3, R, R)
        images = G(z, batch.cond)
        fake = diff_augment(images, augment) if augment else images
        out = D(fake, batch.cond)
        ctx = GContext(D=D, batch=batch, config=config, fake=fake, out=out, logits=out.scores().float(), G=G, z=z,
                       images=images, anchor_images=anchor_images)
        parts = {term.name: part for term in active_terms(config) if (part := term.g_loss(ctx)) is not None}
    adversarial = g_loss(ctx.logits, t.loss)
    loss = adversarial + weighted_parts(parts, config)
    accelerator.backward(loss / t.grad_accum)
    return {"loss/G": adversarial.detach(), **ctx.stats,
            **{f"loss/G_{TERMS[name].label or name}": value.detach() for name, value in parts.items()}}


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

"""Exponential moving average of G's weights with the StyleGAN2-ADA ramp-up."""
from __future__ import annotations

import torch
import torch.nn as nn


def ema_beta(batch_images: int, images_seen: int, ema_kimg: float, rampup: float) -> float:
    """Decay per step: half-life of ema_kimg thousand images, shorter early in training."""
    half_life = ema_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_images / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, beta: float) -> None:
    # one fused call for all parameters (one kernel launch per group on a GPU, not one per tensor)
    torch._foreach_lerp_(list(ema_model.parameters()), [p.detach() for p in model.parameters()], 1.0 - beta)
    for b_ema, b in zip(ema_model.buffers(), model.buffers()):
        b_ema.copy_(b)

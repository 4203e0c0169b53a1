"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout for small data sets.

Applied to real and fake images alike before D, so D cannot overfit a few thousand images.
Horizontal flips are deliberately absent: they would turn "left of" into a lie.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _color(x: torch.Tensor) -> torch.Tensor:
    batch = x.shape[0]
    x = x + (torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(batch, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    batch, _, height, width = x.shape
    shift = int(height * ratio + 0.5)
    dy = torch.randint(-shift, shift + 1, (batch, 1, 1), device=x.device)
    dx = torch.randint(-shift, shift + 1, (batch, 1, 1), device=x.device)
    grid_b, grid_y, grid_x = torch.meshgrid(torch.arange(batch, device=x.device), torch.arange(height, device=x.device),
                                            torch.arange(width, device=x.device), indexing="ij")
    grid_y = (grid_y + dy + 1).clamp(0, height + 1)
    grid_x = (grid_x + dx + 1).clamp(0, width + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # zero border: what slides in is empty
    shifted = padded.permute(0, 2, 3, 1)[grid_b, grid_y, grid_x].permute(0, 3, 1, 2)  # NHWC in memory
    # keep the input's layout: channels_last (train.channels_last) stays channels_last for D's convolutions
    keep = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return shifted.contiguous(memory_format=keep)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    off_y = torch.randint(0, height + (1 - cut_h % 2), (batch, 1, 1), device=x.device)
    off_x = torch.randint(0, width + (1 - cut_w % 2), (batch, 1, 1), device=x.device)
    ys = torch.arange(height, device=x.device)[None, :, None]
    xs = torch.arange(width, device=x.device)[None, None, :]
    inside = ((ys - off_y + cut_h // 2).clamp(0) < cut_h) & ((xs - off_x + cut_w // 2).clamp(0) < cut_w)
    inside &= (ys >= off_y - cut_h // 2) & (xs >= off_x - cut_w // 2)
    return x * (~inside)[:, None].to(x.dtype)


AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}


def parse_policy(policy: str) -> list[str]:
    names = [p.strip() for p in policy.split(",") if p.strip()]
    for name in names:
        if name not in AUGMENTS:
            raise ValueError(f"train.augment: unknown augmentation {name!r}; expected a comma-separated "
                             f"subset of {', '.join(AUGMENTS)}")
    return names


def diff_augment(images: torch.Tensor, policy: list[str]) -> torch.Tensor:
    """images (B, 3, H, W) -> augmented (B, 3, H, W); every op is differentiable w.r.t. images."""
    for name in policy:
        images = AUGMENTS[name](images)
    return images

"""Discriminator: (images, condition) -> logits (B,), conditioned by its own fusion module.

A residual convolutional trunk from R x R down to 4 x 4; spatial cross-attention from image
features to the condition tokens at the resolutions in `attn_resolutions`; a projection
head: logit = unconditional score + <features, embedding of cond_vector> (Miyato & Koyama).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from cgan.attributes import AttributeSchema
from cgan.conditioning import Condition, Conditioner
from cgan.generator import channels_at
from cgan.layers import EqualConv2d, EqualLinear, SpatialCrossAttention
from cgan.text_encoder import TextEncoding


class DiscriminatorBlock(nn.Module):
    """x (B, in, r, r) -> (B, out, r/2, r/2), residual.

    pool_first: conv1 runs at r/2 after the pooling, not at r before it (4x fewer FLOPs in conv1,
    which has the most output channels); the parameters are the same.
    """

    def __init__(self, in_channels: int, out_channels: int, pool_first: bool = False):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)
        self.pool_first = pool_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        if self.pool_first:
            x = self.conv1(F.avg_pool2d(self.conv0(x), 2))
        else:
            x = F.avg_pool2d(self.conv1(self.conv0(x)), 2)
        return (x + skip) * (1 / math.sqrt(2))


class Discriminator(nn.Module):
    """(images (B, 3, R, R), text, prompt_present, attribute tensors) -> logits (B,)."""

    def __init__(self, *, schema: AttributeSchema, text_dim: int, resolution: int = 64, cond_dim: int = 256,
                 channel_base: int = 4096, channel_max: int = 256, attn_resolutions: tuple[int, ...] = (8,),
                 attn_heads: int = 4, fusion: str = "cross_attention", num_cond_queries: int = 8,
                 fusion_layers: int = 2, fusion_heads: int = 4, pool_first: bool = False):
        super().__init__()
        self.resolution = resolution
        self.conditioner = Conditioner(schema=schema, text_dim=text_dim, cond_dim=cond_dim, fusion=fusion,
                                       num_queries=num_cond_queries, num_layers=fusion_layers, num_heads=fusion_heads)
        ch = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.from_rgb = EqualConv2d(3, ch(resolution), 1, activation=True)
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleDict()
        res = resolution
        while res > 4:
            self.blocks.append(DiscriminatorBlock(ch(res), ch(res // 2), pool_first))
            res //= 2
            if res in attn_resolutions:
                self.attn[str(res)] = SpatialCrossAttention(ch(res), cond_dim, num_heads=attn_heads)
        final_channels = ch(4)
        self.conv_out = EqualConv2d(final_channels, final_channels, 3, activation=True)
        self.fc = EqualLinear(final_channels * 16, final_channels, activation=True)
        self.out = EqualLinear(final_channels, 1)
        self.cond_proj = EqualLinear(cond_dim, final_channels)

    def condition(self, text: TextEncoding, prompt_present, attr_index, attr_value, attr_present) -> Condition:
        return self.conditioner(text, prompt_present, attr_index, attr_value, attr_present)

    def score(self, images: torch.Tensor, cond: Condition) -> torch.Tensor:
        x = self.from_rgb(images)
        for block in self.blocks:
            x = block(x)
            key = str(x.shape[-1])
            if key in self.attn:
                x, _ = self.attn[key](x, cond.attn_tokens, cond.attn_mask)
        x = self.conv_out(x)  # (B, C, 4, 4)
        features = self.fc(rearrange(x, "b c h w -> b (c h w)"))  # (B, C)
        projection = (features * self.cond_proj(cond.cond_vector).to(features.dtype)).sum(dim=1)
        return self.out(features).squeeze(1) + projection / math.sqrt(features.shape[1])  # (B,)

    def forward(self, images: torch.Tensor, text: TextEncoding, prompt_present: torch.Tensor,
                attr_index: torch.Tensor, attr_value: torch.Tensor, attr_present: torch.Tensor) -> torch.Tensor:
        cond = self.condition(text, prompt_present, attr_index, attr_value, attr_present)
        return self.score(images, cond)

"""Projected discriminator (Sauer et al., "Projected GANs Converge Faster", 2021), conditioned.

The images go through a frozen pretrained network (EfficientNet-Lite0, cgan/nets/image_features.py) at
four scales; fixed random 1x1 convolutions mix each scale's channels into `width` channels and a
top-down pass mixes coarse scales into fine ones (both random and never trained, so D cannot
undo the pretrained features). Each scale has a small trainable head that outputs a map of
logits, each location scored as unconditional score + <features, embedding of cond_vector>; at
the scale nearest 8 x 8 the features also attend over the condition tokens first. The logits of
all scales are returned as one logit map per scale (DOutput.scores(): side by side, (B, N)), and the
losses average over them. It keeps the contract of cgan/nets/d_contract.py, so
`model.discriminator.type` picks it or the residual D and nothing else changes.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from cgan.condition.attributes import AttributeSchema
from cgan.condition.fusion import Condition, ConditionInput, Conditioner
from cgan.core.model_config import DiscriminatorConfig
from cgan.core.layers import EqualConv2d, EqualLinear, SpatialCrossAttention
from cgan.nets.d_contract import DiscriminatorBase, DOutput, HeadBuilder, pair_rows, register_discriminator
from cgan.nets.image_features import FEATURE_CHANNELS, EfficientNetLite0

MIXING_SEED = 20211101  # the random channel and scale mixing is a fixed function of this seed


class ScaleHead(nn.Module):
    """Mixed features (B, W, s, s) -> logit map (B, s', s'), s' = min(s, 4), conditioned by projection."""

    def __init__(self, width: int, size: int, cond_dim: int, attn_heads: int, use_attention: bool):
        super().__init__()
        downs = max(int(math.log2(size)) - 2, 0)  # stride-2 convolutions down to 4 x 4
        self.convs = nn.ModuleList(EqualConv2d(width, width, 3, activation=True) for _ in range(downs + 1))
        self.attn = SpatialCrossAttention(width, cond_dim, num_heads=attn_heads) if use_attention else None
        self.out = EqualConv2d(width, 1, 1)
        self.cond_proj = EqualLinear(cond_dim, width)

    def forward(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.avg_pool2d(x, 2)
            if i == 0 and self.attn is not None:
                x, _ = self.attn(x, cond.attn_tokens, cond.attn_mask)
        projection = torch.einsum("bchw,bc->bhw", x, self.cond_proj(cond.cond_vector).to(x.dtype))
        return self.out(x)[:, 0] + projection / math.sqrt(x.shape[1])  # (B, s', s')


@register_discriminator("projected")
class ProjectedDiscriminator(DiscriminatorBase):
    """(images (B, 3, R, R), ConditionInput) -> DOutput: a logit map per scale [(B, s*s)] x 4, unconditioned
    features, condition."""

    def __init__(self, *, schema: AttributeSchema, text_dim: int, resolution: int = 64, cond_dim: int = 256,
                 width: int = 64, attn_heads: int = 4, fusion: str = "cross_attention", num_cond_queries: int = 8,
                 fusion_layers: int = 2, fusion_heads: int = 4, fusion_zero_init: bool = True,
                 text_positions: bool = False, text_layers: int = 0, contrastive_dim: int = 0,
                 attribute_heads: bool = False, feature_net: nn.Module | None = None,
                 term_heads: Mapping[str, HeadBuilder] | None = None):
        super().__init__()
        self.resolution = resolution
        self.input_size = min(max(2 * resolution, 64), 256)  # the frozen net sees at least 64 px
        self.conditioner = Conditioner(schema=schema, text_dim=text_dim, cond_dim=cond_dim, fusion=fusion,
                                       num_queries=num_cond_queries, num_layers=fusion_layers, num_heads=fusion_heads,
                                       zero_init=fusion_zero_init, text_positions=text_positions,
                                       text_layers=text_layers)
        # frozen, and not a submodule: it never reaches an optimizer, a state dict or .train()
        self.__dict__["feature_net"] = feature_net if feature_net is not None else EfficientNetLite0.pretrained()
        gen = torch.Generator().manual_seed(MIXING_SEED)
        for level, channels in enumerate(FEATURE_CHANNELS):
            mix = torch.randn(width, channels, generator=gen) / math.sqrt(channels)  # channel mixing, 1x1
            self.register_buffer(f"channel_mix{level}", mix, persistent=False)
        sizes = [self.input_size // stride for stride in (4, 8, 16, 32)]
        attn_level = min(range(4), key=lambda i: abs(sizes[i] - 8))
        self.heads = nn.ModuleList(ScaleHead(width, size, cond_dim, attn_heads, level == attn_level)
                                   for level, size in enumerate(sizes))
        # auxiliary heads on the stride-16 mixed features (unconditioned), pooled to 4 x 4
        self.build_auxiliary_heads(schema, width * 16, width * 2, cond_dim, contrastive_dim, attribute_heads,
                                   term_heads)

    def _apply(self, fn, recurse=True):  # .to(device) / .half() also move the frozen network
        self.__dict__["feature_net"] = self.__dict__["feature_net"]._apply(fn)
        return super()._apply(fn, recurse)

    @classmethod
    def config_kwargs(cls, config: DiscriminatorConfig) -> dict[str, Any]:
        return dict(width=config.channel_max)

    def mixed_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, R, R) -> 4 maps (B, width, s, s): frozen features, mixed across channels and scales."""
        if images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        # the pretrained features are large (std 4-17 on shapes images): each location's feature vector is
        # scaled to unit mean square, keeping its direction, so D's layers see inputs of about unit scale
        features = [f * (f.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt() for f in self.feature_net(images)]
        mixed = [F.conv2d(f, getattr(self, f"channel_mix{i}").to(f.dtype)[:, :, None, None])  # (B, width, s, s)
                 for i, f in enumerate(features)]
        for i in range(len(mixed) - 2, -1, -1):  # top-down: every scale also carries the coarser ones
            coarse = F.interpolate(mixed[i + 1], size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            mixed[i] = (mixed[i] + coarse) * (1 / math.sqrt(2))
        return mixed

    def forward(self, images: torch.Tensor, inputs: ConditionInput,
                image_index: torch.Tensor | None = None) -> DOutput:
        """image_index (B,): pair row i shows images[image_index[i]]; the frozen network sees each image once."""
        cond = self.condition(inputs)
        mixed = self.mixed_features(images)
        if image_index is not None:
            mixed = [pair_rows(m, image_index) for m in mixed]
        logits = [rearrange(head(x, cond), "b h w -> b (h w)") for head, x in zip(self.heads, mixed)]  # (B, s*s) each
        plain = None
        if self.plain is not None:
            pooled = F.adaptive_avg_pool2d(mixed[2], 4)  # (B, width, 4, 4)
            plain = self.plain(rearrange(pooled, "b c h w -> b (c h w)"))  # (B, 2 * width)
        return DOutput(logits=logits, plain=plain, cond=cond)

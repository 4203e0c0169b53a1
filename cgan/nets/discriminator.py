"""The residual discriminator: (images, condition) -> DOutput with one logit map (B,), conditioned by its
own fusion module (the contract every D keeps: cgan/nets/d_contract.py).

A residual convolutional trunk from R x R down to 4 x 4; spatial cross-attention from image
features to the condition tokens at the resolutions in `attn_resolutions`; a projection
head: logit = unconditional score + <features, embedding of cond_vector> (Miyato & Koyama).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from cgan.condition.attributes import AttributeSchema
from cgan.condition.fusion import Condition, ConditionInput, Conditioner
from cgan.core.model_config import DiscriminatorConfig
from cgan.core.layers import EqualConv2d, EqualLinear, SpatialCrossAttention
from cgan.nets.d_contract import DiscriminatorBase, DOutput, HeadBuilder, pair_rows, register_discriminator
from cgan.nets.generator import channels_at

WORD_MATCH_RESOLUTION = 8  # D's feature map the word-region matching reads (model.d_word_match)


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


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """x (B, C, H, W) -> (B, C + 1, H, W): the mean over features of the standard deviation within each
    group of consecutive rows (the largest divisor of B up to `group`), as one extra feature map."""
    size = max(g for g in range(1, min(group, x.shape[0]) + 1) if x.shape[0] % g == 0)
    grouped = rearrange(x.float(), "(n g) c h w -> n g c h w", g=size)  # (B/G, G, C, H, W)
    spread = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/G,)
    spread = repeat(spread, "n -> (n g) 1 h w", g=size, h=x.shape[2], w=x.shape[3])  # (B, 1, H, W)
    return torch.cat([x, spread.to(x.dtype)], dim=1)


class WordRegionMatch(nn.Module):
    """How well the image shows each word where the words say: (features (B, C, H, W), words (B, T, D),
    word mask (B, T)) -> score (B,), added to D's logit (model.d_word_match).

    AttnGAN's DAMSM idea inside D: each word attends over the image regions and scores the cosine
    between itself and what it found; the score is the mean over the prompt's words (0 with no
    prompt). The regions carry a learned embedding of where they are, so a word that has learned
    from its sentence which side its object is on (model.text_positions, model.text_layers) finds
    its colour on that side and not on the other: "A left of B" and "B left of A" score apart.
    """

    def __init__(self, channels: int, cond_dim: int, resolution: int):
        super().__init__()
        self.to_region = EqualLinear(channels, cond_dim)
        self.to_word = EqualLinear(cond_dim, cond_dim)
        self.region_position = nn.Parameter(torch.randn(resolution * resolution, cond_dim))
        self.gain = nn.Parameter(torch.zeros(()))  # silent at the start: a warm-started D keeps its logits

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        regions = self.to_region(rearrange(x, "b c h w -> b (h w) c")) + self.region_position  # (B, N, D)
        words = self.to_word(words.to(regions.dtype))  # (B, T, D)
        attention = (words @ regions.transpose(1, 2) / math.sqrt(words.shape[-1])).softmax(dim=-1)  # (B, T, N)
        found = attention @ regions  # (B, T, D): what each word found in the image
        similarity = F.cosine_similarity(words, found, dim=-1) * word_mask  # (B, T)
        return self.gain * similarity.sum(dim=1) / word_mask.sum(dim=1).clamp(min=1)  # (B,)


@register_discriminator("residual")
class Discriminator(DiscriminatorBase):
    """(images (B, 3, R, R), ConditionInput) -> DOutput: logits [(B,)], unconditioned features, condition.

    Optional heads for the auxiliary losses (cgan/train/losses.py): contrastive_dim > 0 adds an image
    embedding and a condition embedding (loss.contrastive); attribute_heads adds a prediction of
    every attribute (loss.attributes). They read the image features from before D's first
    cross-attention: features that have seen the condition could simply copy it, and the losses
    would then say nothing about the image.
    """

    def __init__(self, *, schema: AttributeSchema, text_dim: int, resolution: int = 64, cond_dim: int = 256,
                 channel_base: int = 4096, channel_max: int = 256, channel_min: int = 0,
                 attn_resolutions: tuple[int, ...] = (8,),
                 attn_heads: int = 4, fusion: str = "cross_attention", num_cond_queries: int = 8,
                 fusion_layers: int = 2, fusion_heads: int = 4, fusion_zero_init: bool = True,
                 text_positions: bool = False, text_layers: int = 0, pool_first: bool = False,
                 top_full_res: bool = False, word_match: bool = False, contrastive_dim: int = 0,
                 attribute_heads: bool = False,
                 term_heads: Mapping[str, HeadBuilder] | None = None, mbstd_group: int = 0):
        super().__init__()
        self.resolution = resolution
        self.mbstd_group = mbstd_group
        self.conditioner = Conditioner(schema=schema, text_dim=text_dim, cond_dim=cond_dim, fusion=fusion,
                                       num_queries=num_cond_queries, num_layers=fusion_layers, num_heads=fusion_heads,
                                       zero_init=fusion_zero_init, text_positions=text_positions,
                                       text_layers=text_layers)
        ch = lambda r: channels_at(r, channel_base, channel_max, channel_min)  # noqa: E731
        self.from_rgb = EqualConv2d(3, ch(resolution), 1, activation=True)
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleDict()
        res = resolution
        self.plain_resolution = 4  # where the unconditioned features are taken: before the first attention
        while res > 4:
            full_res = top_full_res and res == resolution  # the top block convolves at the image's resolution
            self.blocks.append(DiscriminatorBlock(ch(res), ch(res // 2), pool_first and not full_res))
            res //= 2
            if res in attn_resolutions:
                self.attn[str(res)] = SpatialCrossAttention(ch(res), cond_dim, num_heads=attn_heads)
                self.plain_resolution = max(self.plain_resolution, res)
        # the word-region matching reads the 8 x 8 features, before any attention there
        self.word_match = WordRegionMatch(ch(WORD_MATCH_RESOLUTION), cond_dim, WORD_MATCH_RESOLUTION) \
            if word_match else None
        final_channels = ch(4)
        self.conv_out = EqualConv2d(final_channels + (1 if mbstd_group else 0), final_channels, 3, activation=True)
        self.fc = EqualLinear(final_channels * 16, final_channels, activation=True)
        self.out = EqualLinear(final_channels, 1)
        self.cond_proj = EqualLinear(cond_dim, final_channels)
        # the unconditioned features pooled to 4 x 4 and flattened (where things are survives)
        self.build_auxiliary_heads(schema, ch(self.plain_resolution) * 16, final_channels, cond_dim, contrastive_dim,
                                   attribute_heads, term_heads)

    @classmethod
    def config_kwargs(cls, config: DiscriminatorConfig) -> dict[str, Any]:
        return dict(channel_base=config.channel_base, channel_max=config.channel_max, channel_min=config.channel_min,
                    attn_resolutions=tuple(config.attn_resolutions), pool_first=config.pool_first,
                    top_full_res=config.top_full_res, word_match=config.word_match, mbstd_group=config.mbstd_group)

    def features(self, images: torch.Tensor, cond: Condition, image_index: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """images (N, 3, R, R) -> (features (B, C) of the projection head, unconditioned features (B, C)
        of the auxiliary heads or None when there are none, word-region score (B,) or None), where row i
        shows images[image_index[i]] (B = N without an index). The blocks before the first layer that reads
        the condition run once per image; the rows are made where the condition first enters."""
        x = self.from_rgb(images)
        plain = match = None
        for block in self.blocks:
            x = block(x)
            if self.plain is not None and x.shape[-1] == self.plain_resolution:
                pooled = F.adaptive_avg_pool2d(x, 4)  # (N, C', 4, 4)
                plain = self.plain(rearrange(pooled, "b c h w -> b (c h w)"))  # (N, C)
            reads_condition = str(x.shape[-1]) in self.attn or (
                self.word_match is not None and x.shape[-1] == WORD_MATCH_RESOLUTION)
            if reads_condition and image_index is not None:
                x, plain = pair_rows(x, image_index), pair_rows(plain, image_index)  # (B, ...): one row a pair
                image_index = None
            if self.word_match is not None and x.shape[-1] == WORD_MATCH_RESOLUTION:
                match = self.word_match(x, cond.word_tokens, cond.word_mask)
            key = str(x.shape[-1])
            if key in self.attn:
                x, _ = self.attn[key](x, cond.attn_tokens, cond.attn_mask)
        if image_index is not None:  # no layer read the condition: the rows are made here
            x, plain = pair_rows(x, image_index), pair_rows(plain, image_index)
        if self.mbstd_group:
            x = minibatch_stddev(x, self.mbstd_group)  # (B, C + 1, 4, 4)
        x = self.conv_out(x)  # (B, C, 4, 4)
        return self.fc(rearrange(x, "b c h w -> b (c h w)")), plain, match  # (B, C), (B, C) or None, (B,) or None

    def logits(self, features: torch.Tensor, cond: Condition, match: torch.Tensor | None = None) -> torch.Tensor:
        """Projection head: unconditional score + <features, embedding of cond_vector> (+ the word-region
        score) -> (B,)."""
        projection = (features * self.cond_proj(cond.cond_vector).to(features.dtype)).sum(dim=1)
        logits = self.out(features).squeeze(1) + projection / math.sqrt(features.shape[1])  # (B,)
        return logits if match is None else logits + match

    def forward(self, images: torch.Tensor, inputs: ConditionInput,
                image_index: torch.Tensor | None = None) -> DOutput:
        """image_index (B,): pair row i shows images[image_index[i]] (several conditions may share an image;
        the blocks before the condition enters run once per image)."""
        cond = self.condition(inputs)
        features, plain, match = self.features(images, cond, image_index)
        return DOutput(logits=[self.logits(features, cond, match)], plain=plain, cond=cond)  # [(B,)]

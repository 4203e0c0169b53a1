"""Generator: (z, condition) -> images (B, 3, R, R) in [-1, 1].

mapping network: (z, cond_vector) -> style vector w, which modulates every synthesis layer
(StyleGAN2 modulated convolution). At the resolutions in `attn_resolutions`, image features
also attend to the condition tokens (spatial cross-attention, as in GigaGAN).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from cgan.condition.attributes import AttributeSchema
from cgan.condition.fusion import Condition, ConditionInput, Conditioner
from cgan.core.layers import EqualLinear, ModulatedConv2d, SpatialCrossAttention


def channels_at(resolution: int, channel_base: int, channel_max: int, channel_min: int = 0) -> int:
    return max(channel_min, min(channel_max, channel_base // resolution))


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=-1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z (B, z_dim), cond_vector (B, cond_dim) -> w (B, w_dim)."""

    def __init__(self, *, z_dim: int, cond_dim: int, w_dim: int, num_layers: int = 4, lr_mul: float = 0.01):
        super().__init__()
        self.z_dim = z_dim
        self.embed_cond = EqualLinear(cond_dim, w_dim)
        dims = [z_dim + w_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, activation=True)
                                      for a, b in zip(dims[:-1], dims[1:])))

    def forward(self, z: torch.Tensor, cond_vector: torch.Tensor) -> torch.Tensor:
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed_cond(cond_vector))], dim=1)
        return self.layers(x)


class SynthesisBlock(nn.Module):
    """x (B, in, r/2, r/2) -> (B, out, r, r) and its RGB contribution (B, 3, r, r); the first block
    (resolution 4) starts from a learned constant."""

    def __init__(self, *, in_channels: int, out_channels: int, resolution: int, w_dim: int, cond_dim: int,
                 use_attention: bool, num_heads: int, attn_positions: bool = False):
        super().__init__()
        self.resolution = resolution
        if resolution == 4:
            # learned constant plus a w-dependent layout, so z can move and resize objects
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.input_from_w = EqualLinear(w_dim, out_channels * 16)
            self.conv0 = None
        else:
            self.conv0 = ModulatedConv2d(in_channels, out_channels, 3, w_dim=w_dim)
        self.conv1 = ModulatedConv2d(out_channels, out_channels, 3, w_dim=w_dim)
        self.attn = SpatialCrossAttention(out_channels, cond_dim, num_heads=num_heads,
                                          position_size=resolution if attn_positions else None) \
            if use_attention else None
        self.to_rgb = ModulatedConv2d(out_channels, 3, 1, w_dim=w_dim, demodulate=False, activation=False)

    def forward(self, x, w, cond: Condition, return_attention=False):
        if self.conv0 is None:
            layout = rearrange(self.input_from_w(w), "b (c h w) -> b c h w", h=4, w=4)  # (B, C, 4, 4)
            x = self.const[None] + layout
        else:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.conv0(x, w)
        weights = None
        if self.attn is not None:
            x, weights = self.attn(x, cond.attn_tokens, cond.attn_mask, return_attention)
        x = self.conv1(x, w)
        return x, self.to_rgb(x, w), weights


class Refiner(nn.Module):
    """A residual head at the output resolution for hard edges: (rgb (B, 3, R, R), top features (B, C, R, R))
    -> a correction to rgb (B, 3, R, R). Plain 3 x 3 convolutions (not modulated): sharpening an edge is
    local and the same for every condition. Its last layer starts at zero, so a refiner added to a trained G
    leaves its images as they were until it learns (issue 22: 16 channels at 64 px draw soft edges)."""

    def __init__(self, in_channels: int, channels: int, num_layers: int):
        super().__init__()
        widths = [in_channels + 3] + [channels] * (num_layers - 1)
        self.hidden = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Conv2d(widths[-1], 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, rgb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([rgb, features], dim=1)  # (B, 3 + C, R, R)
        for conv in self.hidden:
            x = F.leaky_relu(conv(x), 0.2)
        return self.out(x)  # (B, 3, R, R)


class Generator(nn.Module):
    """(z (B, z_dim), ConditionInput) -> images (B, 3, R, R) in about [-1, 1].

    Holds its own Conditioner (attribute embedder + fusion); the frozen text encoder stays outside.
    """

    def __init__(self, *, schema: AttributeSchema, text_dim: int, resolution: int = 64, z_dim: int = 128,
                 w_dim: int = 256, cond_dim: int = 256, mapping_layers: int = 4, channel_base: int = 4096,
                 channel_max: int = 256, channel_min: int = 0, attn_resolutions: tuple[int, ...] = (8, 16),
                 attn_heads: int = 4, fusion: str = "cross_attention", num_cond_queries: int = 8,
                 fusion_layers: int = 2, fusion_heads: int = 4, fusion_zero_init: bool = True,
                 text_positions: bool = False, text_layers: int = 0, output: str = "linear",
                 mapping_lr_mul: float = 0.01, color: str = "rgb", attn_positions: bool = False,
                 refine_layers: int = 0, refine_channels: int = 32):
        super().__init__()
        if output not in ("linear", "tanh"):
            raise ValueError(f"output: expected linear or tanh, got {output!r}")
        if color not in ("rgb", "grayscale"):
            raise ValueError(f"color: expected rgb or grayscale, got {color!r}")
        self.output = output  # tanh: images strictly inside (-1, 1), as real ones are
        self.color = color  # grayscale: the three channels are made equal, as in a grey data set
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.conditioner = Conditioner(schema=schema, text_dim=text_dim, cond_dim=cond_dim, fusion=fusion,
                                       num_queries=num_cond_queries, num_layers=fusion_layers, num_heads=fusion_heads,
                                       zero_init=fusion_zero_init, text_positions=text_positions,
                                       text_layers=text_layers)
        self.mapping = MappingNetwork(z_dim=z_dim, cond_dim=cond_dim, w_dim=w_dim, num_layers=mapping_layers,
                                      lr_mul=mapping_lr_mul)
        blocks, in_channels = [], 0
        for log_res in range(2, int(math.log2(resolution)) + 1):
            res = 2 ** log_res
            out_channels = channels_at(res, channel_base, channel_max, channel_min)
            blocks.append(SynthesisBlock(in_channels=in_channels, out_channels=out_channels, resolution=res,
                                         w_dim=w_dim, cond_dim=cond_dim, use_attention=res in attn_resolutions,
                                         num_heads=attn_heads, attn_positions=attn_positions))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        if refine_layers < 0 or (refine_layers and refine_channels < 1):
            raise ValueError(f"refine_layers / refine_channels: expected >= 0 / >= 1, got {refine_layers} / "
                             f"{refine_channels}")
        self.refine = Refiner(in_channels, refine_channels, refine_layers) if refine_layers else None

    def condition(self, inputs: ConditionInput, return_attention: bool = False) -> Condition:
        return self.conditioner(inputs, return_attention)

    @torch.no_grad()
    def mean_w(self, cond_vector: torch.Tensor, num_samples: int = 128, seed: int = 0) -> torch.Tensor:
        """Per-condition average of w over z (B, w_dim): the centre that truncation pulls toward."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(num_samples, self.z_dim, generator=gen).to(cond_vector.device)
        batch = cond_vector.shape[0]
        z_rep = z.repeat(batch, 1)  # (B * S, z_dim), sample-major within each condition
        cond_rep = cond_vector.repeat_interleave(num_samples, dim=0)  # (B * S, cond_dim)
        return self.mapping(z_rep, cond_rep).view(batch, num_samples, -1).mean(dim=1)  # (B, w_dim)

    def synthesize(self, w: torch.Tensor, cond: Condition, return_attention: bool = False):
        x = rgb = None
        attention = {}
        for block in self.blocks:
            x, block_rgb, weights = block(x, w, cond, return_attention)
            rgb = block_rgb if rgb is None else F.interpolate(rgb, scale_factor=2, mode="bilinear",
                                                              align_corners=False) + block_rgb
            if weights is not None:
                attention[block.resolution] = weights  # (B, heads, r*r, M)
        return self.finish(rgb, x), attention

    def finish(self, rgb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The top blocks' summed rgb (B, 3, R, R) and last features (B, C, R, R) -> images (B, 3, R, R): the
        refiner's correction, then grey and the output function (cgan.polish fits a refiner on these cached)."""
        if self.refine is not None:
            rgb = rgb + self.refine(rgb, features)  # (B, 3, R, R)
        if self.color == "grayscale":
            rgb = rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)  # (B, 1, R, R) -> (B, 3, R, R)
        return torch.tanh(rgb) if self.output == "tanh" else rgb

    def forward(self, z: torch.Tensor, inputs: ConditionInput, truncation: float = 1.0, return_attention: bool = False):
        cond = self.condition(inputs, return_attention)
        return self.from_condition(z, cond, truncation, return_attention)

    def from_condition(self, z: torch.Tensor, cond: Condition, truncation: float = 1.0,
                       return_attention: bool = False):
        """Images from z (B, z_dim) and an already fused condition (e.g. one interpolated between prompts)."""
        w = self.mapping(z, cond.cond_vector)
        if truncation != 1.0:  # z only: w moves toward this condition's own average, the condition stays
            w = torch.lerp(self.mean_w(cond.cond_vector), w, truncation)
        images, attention = self.synthesize(w, cond, return_attention)
        if return_attention:
            return images, {"generator": attention, "fusion": cond.fusion_attention}
        return images

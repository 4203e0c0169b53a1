"""Building blocks shared by the conditioning module, the generator and the discriminator.

Linear and convolution layers use the equalised learning rate of StyleGAN (weights stored
as N(0, 1) / lr_mul, scaled at run time), so one Adam learning rate suits every layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

LRELU_GAIN = math.sqrt(2.0)
# Every `leaky_relu(y) * LRELU_GAIN` below is computed as `leaky_relu_(LRELU_GAIN * y)`, the gain folded
# into the scalars already applied to the weight and bias: the same function (leaky ReLU is positively
# homogeneous), one pass over the activation less forward and backward, and in place on a fresh result
# that no backward needs. 1.1-1.2x faster training on the shapes config (benchmarks/fused_activation.py).


class EqualLinear(nn.Module):
    """x (..., in_dim) -> (..., out_dim), equalised learning rate; lr_mul < 1 slows a layer down."""

    def __init__(self, in_dim: int, out_dim: int, *, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = LRELU_GAIN if self.activation else 1.0
        bias = self.bias * (self.lr_mul * gain) if self.bias is not None else None
        x = F.linear(x, self.weight * (self.weight_gain * gain), bias)
        return F.leaky_relu(x, 0.2, inplace=True) if self.activation else x


class EqualConv2d(nn.Module):
    """x (B, in, H, W) -> (B, out, H, W), equalised learning rate, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = LRELU_GAIN if self.activation else 1.0
        bias = self.bias * gain if self.bias is not None and self.activation else self.bias
        x = F.conv2d(x, self.weight * (self.weight_gain * gain), bias, padding=self.padding)
        return F.leaky_relu(x, 0.2, inplace=True) if self.activation else x


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: x (B, in, H, W), w (B, w_dim) -> (B, out, H, W).

    Written as scale-input -> shared convolution -> scale-output, which equals per-sample
    weight (de)modulation but runs as one ordinary batched convolution (fast, channels_last).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, w_dim: int,
                 demodulate: bool = True, activation: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.activation = activation

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)  # (B, in)
        weight = self.weight * self.weight_gain  # (out, in, k, k)
        x = x * styles[:, :, None, None].to(x.dtype)
        x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        gain = LRELU_GAIN if self.activation else 1.0
        bias = (self.bias * gain)[None, :, None, None].to(x.dtype)
        if self.demodulate:
            # (B, in) @ (in, out): the norm each sample's modulated weight would have per output channel
            weight_sq = weight.square().sum(dim=(2, 3)).t()  # (in, out)
            demod = (styles.square() @ weight_sq + 1e-8).rsqrt() * gain  # (B, out), with the activation gain
            x = torch.addcmul(bias, x, demod[:, :, None, None].to(x.dtype))  # demodulation and bias in one pass
        else:
            x = x * gain + bias if self.activation else x + bias
        return F.leaky_relu(x, 0.2, inplace=True) if self.activation else x


class Attention(nn.Module):
    """Multi-head cross-attention: queries x (B, N, dim) attend over context (B, M, context_dim).

    context_mask (B, M) bool marks real tokens (True) and padding (False). Letters in the
    einops patterns: b batch, h heads, n queries, m context tokens, d head width.
    Returns the output (B, N, dim) and, when asked, the weights (B, heads, N, M).
    """

    def __init__(self, dim: int, context_dim: int, *, num_heads: int, zero_init_out: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.to_q = EqualLinear(dim, dim, bias=False)
        self.to_kv = EqualLinear(context_dim, 2 * dim, bias=False)
        self.to_out = EqualLinear(dim, dim)
        if zero_init_out:  # the block starts as the identity (as DiT's adaLN-Zero)
            nn.init.zeros_(self.to_out.weight)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.to_kv(context), "b m (two h d) -> two b h m d", two=2, h=self.num_heads)
        mask = context_mask[:, None, None, :] if context_mask is not None else None  # (B, 1, 1, M)
        weights = None
        if return_weights:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, h, N, M)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out), weights


class FeedForward(nn.Module):
    """x (..., dim) -> (..., dim): two layers with a leaky ReLU between."""

    def __init__(self, dim: int, mult: int = 2):
        super().__init__()
        self.net = nn.Sequential(EqualLinear(dim, dim * mult, activation=True), EqualLinear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatialCrossAttention(nn.Module):
    """Image features (B, C, H, W) attend over condition tokens (B, M, cond_dim); residual.

    Used at low resolutions in G and D (as in GigaGAN), so each location can read the words
    and attributes that concern it. Zero-initialised output: starts as the identity. With
    `position_size` r, a learned embedding of each of the r x r locations (zero at the start) joins
    the queries, so where a location is can decide which words it reads ("A left of B": the left
    half reads A's words); the features it is added to must then be r x r.
    """

    def __init__(self, channels: int, cond_dim: int, *, num_heads: int, position_size: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.attn = Attention(channels, cond_dim, num_heads=num_heads, zero_init_out=True)
        self.position = nn.Parameter(torch.zeros(channels, position_size, position_size)) if position_size else None

    def forward(self, x: torch.Tensor, cond_tokens: torch.Tensor, cond_mask: torch.Tensor,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        height, width = x.shape[-2:]
        normed = self.norm(x)
        if self.position is not None:
            normed = normed + self.position.to(normed.dtype)  # (C, H, W) broadcast over the batch
        queries = rearrange(normed, "b c h w -> b (h w) c")
        out, weights = self.attn(queries, cond_tokens.to(queries.dtype), cond_mask, return_weights)
        out = rearrange(out, "b (h w) c -> b c h w", h=height, w=width)
        return x + out, weights  # weights: (B, heads, H*W, M)

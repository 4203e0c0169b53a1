"""The folded leaky ReLU gain in cgan/core/layers.py, against the code it replaced: numbers and speed.

    python benchmarks/fused_activation.py        # outputs and gradients, folded vs unfolded vs float64
    python benchmarks/train_speed.py --threads 1 --configs shapes --variants fp32 fp32-unfolded

cgan's layers used to end in `F.leaky_relu(x, 0.2) * sqrt(2)`: two passes over the activation forward
and two backward. leaky_relu is positively homogeneous (leaky_relu(c * y) = c * leaky_relu(y), c > 0),
so the gain now rides on the scalars already applied to the weight and bias, and the activation runs
in place on a fresh result (the convolution / linear backward does not need its own output):

    EqualLinear / EqualConv2d:  leaky_relu_(op(x, W * (gain * sqrt 2), b * sqrt 2))
    ModulatedConv2d:            leaky_relu_(addcmul(b * sqrt 2, conv(x * s, W), demod * sqrt 2))
                                (demodulation, bias and gain in one pass instead of three)

Same parameters, same state-dict keys, same function up to float rounding. This module keeps the
previous forwards; `unfolded()` puts them back in this process only, so train_speed.py can time
both in one run (variants fp32-unfolded, bf16-unfolded).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

LRELU_GAIN = math.sqrt(2.0)


def linear_forward(self, x: torch.Tensor) -> torch.Tensor:  # EqualLinear before the change
    bias = self.bias * self.lr_mul if self.bias is not None else None
    x = F.linear(x, self.weight * self.weight_gain, bias)
    return F.leaky_relu(x, 0.2) * LRELU_GAIN if self.activation else x


def conv_forward(self, x: torch.Tensor) -> torch.Tensor:  # EqualConv2d before the change
    x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
    return F.leaky_relu(x, 0.2) * LRELU_GAIN if self.activation else x


def modulated_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # ModulatedConv2d before
    styles = self.affine(w)  # (B, in)
    weight = self.weight * self.weight_gain  # (out, in, k, k)
    x = x * styles[:, :, None, None].to(x.dtype)
    x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
    if self.demodulate:
        weight_sq = weight.square().sum(dim=(2, 3)).t()  # (in, out)
        demod = (styles.square() @ weight_sq + 1e-8).rsqrt()  # (B, out)
        x = x * demod[:, :, None, None].to(x.dtype)
    x = x + self.bias[None, :, None, None].to(x.dtype)
    return F.leaky_relu(x, 0.2) * LRELU_GAIN if self.activation else x


@contextmanager
def unfolded(on: bool = True) -> Iterator[None]:
    """Inside: cgan's EqualLinear, EqualConv2d and ModulatedConv2d use their previous (unfolded) forwards."""
    from cgan.core import layers

    classes = (layers.EqualLinear, layers.EqualConv2d, layers.ModulatedConv2d)
    originals = [cls.forward for cls in classes]
    if on:
        for cls, forward in zip(classes, (linear_forward, conv_forward, modulated_forward)):
            cls.forward = forward
    try:
        yield
    finally:
        for cls, forward in zip(classes, originals):
            cls.forward = forward


def check() -> None:
    """G and D outputs, R1 (a double backward) and every weight gradient, folded (cgan/core/layers.py now)
    against unfolded, and both against float64, on the shapes config at 64 px."""
    import sys
    from pathlib import Path

    from cgan.condition.attributes import AttributeSchema
    from cgan.core.config import load_config
    from cgan.data.shapes import SCHEMA
    from cgan.train.losses import r1_penalty
    from cgan.condition.text_encoder import TextEncoding
    from cgan.condition.fusion import ConditionInput
    from cgan.nets.factory import build_discriminator, build_generator

    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "configs" / "shapes.yaml", ["model.generator.color=rgb"])  # the shapes data is in colour
    schema = AttributeSchema.from_dict(SCHEMA)
    torch.manual_seed(0)
    sizes = dict(schema=schema, text_dim=384, resolution=config.data.resolution)
    G, D = build_generator(config.model, **sizes), build_discriminator(config.model, **sizes)
    for module in (G, D):
        module.to(memory_format=torch.channels_last)
        for p in module.parameters():  # away from the zero-initialised start, so every path carries signal
            p.data.add_(0.05 * torch.randn_like(p))
    batch = 4
    text = TextEncoding(torch.randn(batch, 24, 384), torch.ones(batch, 24, dtype=torch.bool), torch.randn(batch, 384))
    attr_index, attr_value, attr_present = schema.encode([{}] * batch)
    cond = ConditionInput(text, torch.ones(batch, dtype=torch.bool), attr_index, attr_value, attr_present)
    z = torch.randn(batch, G.z_dim)

    def run() -> dict[str, torch.Tensor]:
        for module in (G, D):
            module.zero_grad(set_to_none=True)
        images = G(z, cond)
        real = images.detach().clone().requires_grad_(True)
        logits = D(real, cond).scores()
        penalty = r1_penalty(logits, real)
        (logits.sum() + penalty + images.square().mean()).backward()
        grads = {f"G.{n}": p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}
        grads.update({f"D.{n}": p.grad.clone() for n, p in D.named_parameters() if p.grad is not None})
        return {"images": images.detach(), "logits": logits.detach(), "r1": penalty.detach(), **grads}

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # as r1_step: fused attention kernels have no double backward
        folded = run()
        with unfolded():
            previous = run()
        # float64 ground truth: is the difference float rounding (both fp32 versions equally far from it)?
        G.double(), D.double()
        z = z.double()
        double = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
        cond = ConditionInput(TextEncoding(double(text.text_tokens), text.text_mask, double(text.text_pooled)),
                              cond.prompt_present, cond.attr_index, double(cond.attr_value), cond.attr_present)
        exact = run()

    def worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[str, float]:
        """The largest difference relative to the tensor's own scale, over all outputs and gradients."""
        return max(((k, float((a[k].double() - v.double()).abs().max() / v.double().abs().max().clamp(min=1e-30)))
                    for k, v in b.items()), key=lambda kv: kv[1])

    print(f"images max |diff| {float((folded['images'] - previous['images']).abs().max()):.2e}, logits "
          f"{float((folded['logits'] - previous['logits']).abs().max()):.2e}, R1 {float(previous['r1']):.6g} vs "
          f"{float(folded['r1']):.6g} (float64: {float(exact['r1']):.6g})")
    for label, a, b in (("folded vs unfolded (fp32)", folded, previous), ("unfolded fp32 vs float64", previous, exact),
                        ("folded fp32 vs float64", folded, exact)):
        key, value = worst(a, b)
        print(f"{label}: largest relative difference over {len(b)} outputs and gradients {value:.2e} ({key})")
    sys.exit(0 if worst(folded, exact)[1] <= 2 * worst(previous, exact)[1] + 1e-6 else 1)


if __name__ == "__main__":
    check()

"""Figures of where the generator looked: one heat map per prompt token and per attribute, and
the fusion module's weight per token (how much the text and each attribute decided).

The generator's spatial cross-attention at resolution r gives weights (B, heads, r*r, M) over
its condition tokens [fused queries; null-prompt slot; text tokens; attribute tokens]. A
token's map is its weight averaged over heads, upsampled to the image and averaged over the
resolutions. The fusion module's weights (B, heads, Q, 1 + T + A) averaged over heads and
queries say how much each context token fed the fused condition.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

PANEL = 128  # pixels per map in the figure


@dataclass
class TokenAttention:
    """Attention of one image, restricted to the tokens a user named.

    labels: K names ("red", "style=outline", ...); maps (K, R, R) in [0, 1] per token
    (each divided by its own maximum); mass (K,) the token's mean share of the generator's
    attention; fusion (K,) its share of the fusion module's attention (None for concat).
    """

    labels: list[str]
    maps: torch.Tensor
    mass: torch.Tensor
    fusion: torch.Tensor | None


def token_attention(generator_attention: dict[int, torch.Tensor], fusion_attention: torch.Tensor | None,
                    index: int, *, num_queries: int, text_labels: list[str], text_keep: list[bool],
                    attr_labels: list[str], attr_keep: list[bool], resolution: int) -> TokenAttention:
    """Maps for image `index` of a batch; *_keep select real words and the attributes that were given."""
    per_res = []
    for res, weights in generator_attention.items():
        mean_heads = weights[index].float().mean(dim=0)  # (r*r, M)
        grid = rearrange(mean_heads, "(h w) m -> 1 m h w", h=res, w=res)
        per_res.append(F.interpolate(grid, size=(resolution, resolution), mode="bilinear", align_corners=False)[0])
    maps = torch.stack(per_res).mean(dim=0)  # (M, R, R)
    context_offset = maps.shape[0] - (1 + len(text_labels) + len(attr_labels))  # the fused queries come first
    if context_offset != num_queries:  # concat fusion: one condition token, nothing per word
        raise ValueError("attention maps need the cross_attention fusion; this model uses concat, "
                         "whose generator attends to a single pooled condition token")
    keep = [False] * (1 + num_queries) + list(text_keep) + list(attr_keep)  # queries and null slot hidden
    labels = [lab for lab, k in zip([""] * (1 + num_queries) + text_labels + attr_labels, keep) if k]
    chosen = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long, device=maps.device)
    token_maps = maps[chosen]
    mass = token_maps.mean(dim=(1, 2))
    token_maps = token_maps / token_maps.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    fusion = None
    if fusion_attention is not None:
        shares = fusion_attention[index].float().mean(dim=(0, 1))  # (1 + T + A)
        fusion = shares[chosen - num_queries]
    return TokenAttention(labels, token_maps, mass, fusion)


def _heat(values: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, H, W) RGB in [0, 1]: black-blue-red-yellow."""
    anchors = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.9, 0.1, 0.1], [1.0, 0.95, 0.2]],
                           device=values.device)  # indexed by values' positions: on their device
    pos = values.clamp(0, 1) * (len(anchors) - 1)
    low = pos.floor().long().clamp(max=len(anchors) - 2)
    frac = (pos - low)[..., None]
    rgb = anchors[low] * (1 - frac) + anchors[low + 1] * frac  # (H, W, 3)
    return rearrange(rgb, "h w c -> c h w")


def attention_figure(image: torch.Tensor, attention: TokenAttention, title: str) -> Image.Image:
    """image (3, R, R) in [-1, 1] -> a figure: the image, then one overlay per token labelled with
    its share of the generator's attention and of the fusion module's attention."""
    font = ImageFont.load_default()
    base = ((image.float().clamp(-1, 1) + 1) / 2).cpu()  # (3, R, R) in [0, 1]
    grey = base.mean(dim=0, keepdim=True).expand(3, -1, -1)

    def panel(rgb: torch.Tensor) -> Image.Image:
        array = (rearrange(rgb, "c h w -> h w c").clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(array).resize((PANEL, PANEL), Image.Resampling.NEAREST)

    panels = [(panel(base), "image", "")]
    for k, label in enumerate(attention.labels):
        overlay = 0.35 * grey + 0.65 * _heat(attention.maps[k].cpu())
        detail = f"G {attention.mass[k]:.3f}"
        if attention.fusion is not None:
            detail += f" | fusion {100 * attention.fusion[k]:.0f}%"
        panels.append((panel(overlay), label, detail))
    header, caption = 28, 30
    figure = Image.new("RGB", (len(panels) * (PANEL + 4) + 4, header + PANEL + caption), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    draw.text((4, 6), title, fill=(0, 0, 0), font=font)
    for i, (im, label, detail) in enumerate(panels):
        x = 4 + i * (PANEL + 4)
        figure.paste(im, (x, header))
        draw.text((x, header + PANEL + 3), label[:22], fill=(0, 0, 0), font=font)
        draw.text((x, header + PANEL + 16), detail, fill=(90, 90, 90), font=font)
    return figure

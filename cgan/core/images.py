"""Images have one home: tensors to PIL images and back, grids with their labels, and saving.

Tensors are NCHW in [-1, 1]; PIL images are RGB. Saving goes through cgan/core/files.py (atomic).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cgan.core.files import atomic_save

# File suffix -> Pillow format and save options (--out follows its suffix).
IMAGE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"quality": 95}),
}


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    return array.permute(2, 0, 1).float() / 127.5 - 1.0


def tensor_to_images(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [-1, 1] -> list of PIL RGB images."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(a, "RGB") for a in array]


def images_as(tensor: torch.Tensor, output_type: str) -> Any:
    """Images (N, 3, R, R) in [-1, 1] -> PIL images ("pil"), or a tensor ("pt") / array ("np") in [0, 1]."""
    if output_type == "pil":
        return tensor_to_images(tensor)
    unit = ((tensor.detach().float().clamp(-1, 1) + 1) / 2).cpu()  # (N, 3, R, R)
    return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()  # (N, R, R, 3)


def image_format(path: Path, argument: str = "--out") -> tuple[str, dict[str, Any]]:
    try:
        return IMAGE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{argument} {str(path)!r}: unknown image suffix {path.suffix or '(none)'!r}; expected one "
                         f"of {', '.join(IMAGE_FORMATS)}") from None


def save_image(path: Path, image: Image.Image) -> None:
    """Write atomically, in the format the suffix names (PNG for a suffix that names none)."""
    fmt, options = IMAGE_FORMATS.get(path.suffix.lower(), ("PNG", {}))
    atomic_save(path, lambda tmp: image.save(tmp, format=fmt, **options))


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, max_width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > max_width:
            lines.append(line)
            candidate = word
        line = candidate
    return lines + [line]


def image_grid(images: list[Image.Image], num_columns: int, row_labels: list[str] | None = None,
               label_width: int = 220, column_labels: list[str] | None = None) -> Image.Image:
    """Tile images row by row. With labels, small images are enlarged (nearest neighbour) to at
    least 96 px; row labels, wrapped to fit, sit in a strip on the left of their row, column
    labels in a strip above their column."""
    if row_labels or column_labels:
        scale = max(1, 96 // images[0].size[1])
        images = [im.resize((im.size[0] * scale, im.size[1] * scale), Image.Resampling.NEAREST) for im in images]
    if not row_labels:
        label_width = 0
    header = 16 if column_labels else 0
    width, height = images[0].size
    num_rows = math.ceil(len(images) / num_columns)
    grid = Image.new("RGB", (label_width + num_columns * width, header + num_rows * height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, image in enumerate(images):
        row, col = divmod(i, num_columns)
        grid.paste(image, (label_width + col * width, header + row * height))
    for row, label in enumerate(row_labels or []):
        lines = _wrap(label, draw, font, label_width - 8)[: max(1, height // 12)]
        for k, line in enumerate(lines):
            draw.text((4, header + row * height + 4 + 12 * k), line, fill=(0, 0, 0), font=font)
    for col, label in enumerate(column_labels or []):
        draw.text((label_width + col * width + 4, 2), label, fill=(0, 0, 0), font=font)
    return grid


def describe_condition(prompt: str, attributes: Mapping[str, Any]) -> str:
    """'a red circle | style=flat size=0.7': the caption of a grid row."""
    parts = [f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in attributes.items()]
    return " ".join([f"{prompt or '(no prompt)'} |"] + parts) if parts else prompt or "(no prompt)"

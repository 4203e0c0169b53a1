"""Generation from an exported model: `CGANPipeline.from_pretrained(DIR)(prompt, attributes, ...)`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image, ImageDraw, ImageFont

from cgan.attributes import AttributeSchema, InvalidAttributeError
from cgan.checkpoint import CheckpointError, read_exported
from cgan.data import tensor_to_images
from cgan.generator import Generator
from cgan.text_encoder import FrozenTextEncoder, TextEmbeddingCache


def make_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """One z per seed (B, z_dim), each from its own CPU generator: image k of seed s is the same
    whatever the batch size or device."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate(G: Generator, text_cache: TextEmbeddingCache, schema: AttributeSchema, prompts: list[str],
             attributes: list[Mapping[str, Any]], seeds: list[int], truncation: float = 1.0,
             device: torch.device | str = "cpu", return_attention: bool = False):
    """Images (B, 3, R, R) in [-1, 1] for per-image prompts, attribute dicts and seeds."""
    text = text_cache(prompts, device=device)
    prompt_present = torch.tensor([bool(p.strip()) for p in prompts], device=device)
    attr_index, attr_value, attr_present = (t.to(device) for t in schema.encode(list(attributes)))
    z = make_latents(seeds, G.z_dim).to(device)
    return G(z, text, prompt_present, attr_index, attr_value, attr_present, truncation=truncation,
             return_attention=return_attention)


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
               label_width: int = 220) -> Image.Image:
    """Tile images row by row. With row labels, small images are enlarged (nearest neighbour) to
    at least 96 px so the label, wrapped to fit, sits in a strip on the left of its row."""
    if row_labels:
        scale = max(1, 96 // images[0].size[1])
        images = [im.resize((im.size[0] * scale, im.size[1] * scale), Image.Resampling.NEAREST) for im in images]
    else:
        label_width = 0
    width, height = images[0].size
    num_rows = math.ceil(len(images) / num_columns)
    grid = Image.new("RGB", (label_width + num_columns * width, num_rows * height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, image in enumerate(images):
        row, col = divmod(i, num_columns)
        grid.paste(image, (label_width + col * width, row * height))
    for row, label in enumerate(row_labels or []):
        lines = _wrap(label, draw, font, label_width - 8)[: max(1, height // 12)]
        for k, line in enumerate(lines):
            draw.text((4, row * height + 4 + 12 * k), line, fill=(0, 0, 0), font=font)
    return grid


class CGANPipeline:
    """An exported model ready to generate: prompt + attributes + seed -> PIL images."""

    def __init__(self, G: Generator, text_encoder: FrozenTextEncoder, schema: AttributeSchema, meta: dict[str, Any],
                 device: torch.device | str = "cpu"):
        self.G, self.text_encoder, self.schema, self.meta = G.eval().to(device), text_encoder.to(device), schema, meta
        self.device = torch.device(device)
        self.text_cache = TextEmbeddingCache(text_encoder)
        self.prompt_dropout = float(meta.get("prompt_dropout", 0.0))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        trust_remote_code: bool = False) -> "CGANPipeline":
        meta, schema_dict, weights = read_exported(model_dir)
        schema = AttributeSchema.from_dict(schema_dict, f"{model_dir}/attributes.json")
        try:
            G = Generator(schema=schema, **meta["generator"])
        except TypeError as err:
            raise CheckpointError(f"{model_dir}/config.json: generator arguments do not fit this cgan: {err}") from err
        try:
            G.load_state_dict(weights)
        except RuntimeError as err:
            raise CheckpointError(f"{model_dir}/G_ema.safetensors: weights do not fit config.json: "
                                  f"{str(err).splitlines()[0]}") from err
        encoder_info = meta["text_encoder"]
        text_encoder = FrozenTextEncoder(encoder_info["name"], max_length=encoder_info["max_length"],
                                         trust_remote_code=trust_remote_code)
        return cls(G, text_encoder, schema, meta, device)

    @property
    def resolution(self) -> int:
        return self.G.resolution

    def check_inputs(self, prompt: str, attributes: Mapping[str, Any] | None, num_images: int) -> dict[str, Any]:
        if num_images < 1:
            raise ValueError(f"num_images: expected at least 1, got {num_images}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
        if not prompt.strip() and self.prompt_dropout <= 0:
            raise ValueError("prompt: empty, but this model was trained without prompt dropout "
                             "(train.drop_prompt=0), so it cannot generate without a prompt")
        return self.schema.validate(dict(attributes or {}), source="attributes")

    def generate_tensor(self, prompt: str, attributes: Mapping[str, Any] | None = None, num_images: int = 1,
                        seed: int = 0, truncation: float = 1.0, return_attention: bool = False):
        clean = self.check_inputs(prompt, attributes, num_images)
        seeds = [seed + i for i in range(num_images)]
        return generate(self.G, self.text_cache, self.schema, [prompt] * num_images, [clean] * num_images, seeds,
                        truncation, self.device, return_attention)

    def __call__(self, prompt: str, attributes: Mapping[str, Any] | None = None, num_images: int = 1,
                 seed: int = 0, truncation: float = 1.0) -> list[Image.Image]:
        """num_images PIL images for one prompt; image k uses seed + k."""
        return tensor_to_images(self.generate_tensor(prompt, attributes, num_images, seed, truncation))


__all__ = ["CGANPipeline", "InvalidAttributeError", "generate", "image_grid", "make_latents"]

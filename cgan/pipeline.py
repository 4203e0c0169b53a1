"""Generation from an exported model: `CGANPipeline.from_pretrained(DIR)(prompt, attributes, ...)`."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from PIL import Image

from cgan.condition.attributes import InvalidAttributeError
from cgan.condition.fusion import Condition
from cgan.core.images import describe_condition, image_grid, tensor_to_images
from cgan.nets.attention_maps import TokenAttention, token_attention
from cgan.nets.export import ExportedModel, resolve_model_dir
from cgan.nets.sampling import condition_input, generate, make_latents


class CGANPipeline(ExportedModel):
    """An exported model ready to generate: prompt + attributes + seed -> PIL images.
    (Loading, devices and dtypes: ExportedModel, cgan/nets/export.py.)"""

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
        with self._autocast():
            out = generate(self.G, self.text_cache, self.schema, [prompt] * num_images,
                           [self.fill_unset(prompt, clean, s) for s in seeds], seeds, truncation, self.device,
                           return_attention)
        return (out[0].float(), out[1]) if return_attention else out.float()

    def generate_batch(self, prompts: list[str], attributes: list[Mapping[str, Any]] | None, seeds: list[int],
                       truncation: float = 1.0) -> torch.Tensor:
        """Images (N, 3, R, R) in [-1, 1], one per (prompt, attributes, seed) entry of the three lists."""
        attributes = [{}] * len(prompts) if attributes is None else list(attributes)
        if not len(prompts) == len(attributes) == len(seeds):
            raise ValueError(f"prompts, attributes and seeds: expected lists of one length, got {len(prompts)}, "
                             f"{len(attributes)} and {len(seeds)}")
        clean = [self.fill_unset(p, self.check_inputs(p, a, 1), s) for p, a, s in zip(prompts, attributes, seeds)]
        with self._autocast():
            return generate(self.G, self.text_cache, self.schema, list(prompts), clean, list(seeds), truncation,
                            self.device).float()

    def interpolate(self, prompt_a: str, prompt_b: str, attributes: Mapping[str, Any] | None = None, steps: int = 8,
                    num_seeds: int = 1, seed: int = 0, truncation: float = 1.0) -> torch.Tensor:
        """Images (num_seeds * steps, 3, R, R), row per seed: the fused condition moves linearly from
        prompt_a to prompt_b while z stays fixed."""
        if steps < 2:
            raise ValueError(f"steps: expected at least 2 for an interpolation, got {steps}")
        clean = self.check_inputs(prompt_a, attributes, num_seeds)
        self.check_inputs(prompt_b, attributes, num_seeds)
        inputs = condition_input(self.text_cache, self.schema, [prompt_a, prompt_b], [clean, clean], self.device)
        with torch.no_grad(), self._autocast():
            ends = self.G.condition(inputs)
            fractions = torch.linspace(0, 1, steps, device=self.device)
            weight = fractions.repeat(num_seeds)[:, None]  # (N = S * steps, 1), seed-major rows
            cond_vector = torch.lerp(ends.cond_vector[0:1], ends.cond_vector[1:2], weight)  # (N, D)
            attn_tokens = torch.lerp(ends.attn_tokens[0:1], ends.attn_tokens[1:2], weight[:, :, None])  # (N, M, D)
            either = ends.attn_mask[0:1] | ends.attn_mask[1:2]  # (1, M): a token either prompt has stays visible
            cond = Condition(cond_vector, attn_tokens, either.expand(weight.shape[0], -1))
            seeds = [seed + s for s in range(num_seeds) for _ in range(steps)]
            z = make_latents(seeds, self.G.z_dim).to(self.device)
            return self.G.from_condition(z, cond, truncation).float()

    def sweep(self, prompt: str, attributes: Mapping[str, Any] | None, name: str, values: list[Any],
              num_seeds: int = 1, seed: int = 0, truncation: float = 1.0) -> torch.Tensor:
        """Images (num_seeds * len(values), 3, R, R), row per seed, one column per value of attribute `name`."""
        base = self.check_inputs(prompt, attributes, num_seeds)
        settings = [self.schema.validate({**base, name: value}, source="--sweep") for value in values]
        conditions = [(s, self.fill_unset(prompt, a, seed + s)) for s in range(num_seeds) for a in settings]
        with self._autocast():
            return generate(self.G, self.text_cache, self.schema, [prompt] * len(conditions),
                            [a for _, a in conditions], [seed + s for s, _ in conditions], truncation,
                            self.device).float()

    def attention_maps(self, prompt: str, attributes: Mapping[str, Any] | None = None, num_images: int = 1,
                       seed: int = 0, truncation: float = 1.0) -> tuple[torch.Tensor, list[TokenAttention]]:
        """Images and, per image, where the generator attended for each word and each given attribute."""
        clean = self.check_inputs(prompt, attributes, num_images)
        images, attention = self.generate_tensor(prompt, clean, num_images, seed, truncation, return_attention=True)
        if not attention["generator"]:
            raise ValueError("attention maps: this model's generator has no cross-attention layers "
                             "(model.g_attn_resolutions is empty)")
        words, word_keep = self.text_encoder.token_strings(prompt)
        if not prompt.strip():
            word_keep = [False] * len(words)
        attr_labels = [f"{n}={clean[n]:.2g}" if isinstance(clean.get(n), float) else f"{n}={clean.get(n)}"
                       for n in self.schema.names]
        attr_keep = [n in clean for n in self.schema.names]
        per_image = [token_attention(attention["generator"], attention["fusion"], i,
                                     num_queries=self.G.conditioner.num_queries, text_labels=words,
                                     text_keep=word_keep, attr_labels=attr_labels, attr_keep=attr_keep,
                                     resolution=self.resolution) for i in range(num_images)]
        return images, per_image

    def __call__(self, prompt: str | list[str], attributes: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
                 num_images: int = 1, seed: int = 0, truncation: float = 1.0,
                 num_images_per_prompt: int | None = None) -> list[Image.Image]:
        """PIL images: num_images (or num_images_per_prompt) per prompt, image k of every prompt with seed + k.
        A list of prompts takes one attribute dict for all of them or a list with one per prompt; the
        images come prompt by prompt."""
        per_prompt = num_images if num_images_per_prompt is None else num_images_per_prompt
        if isinstance(prompt, str):
            return tensor_to_images(self.generate_tensor(prompt, attributes, per_prompt, seed, truncation))
        prompts = list(prompt)
        settings = list(attributes) if isinstance(attributes, (list, tuple)) else [attributes] * len(prompts)
        if len(settings) != len(prompts):
            raise ValueError(f"attributes: expected one dict for all prompts or a list of {len(prompts)}, "
                             f"got a list of {len(settings)}")
        if per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: expected at least 1, got {per_prompt}")
        seeds = [seed + k for _ in prompts for k in range(per_prompt)]
        return tensor_to_images(self.generate_batch([p for p in prompts for _ in range(per_prompt)],
                                                    [a or {} for a in settings for _ in range(per_prompt)],
                                                    seeds, truncation))


__all__ = ["CGANPipeline", "InvalidAttributeError", "condition_input", "describe_condition", "generate", "image_grid",
           "make_latents", "resolve_model_dir"]

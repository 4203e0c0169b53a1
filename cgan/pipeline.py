"""Generation from an exported model: `CGANPipeline.from_pretrained(DIR)(prompt, attributes, ...)`."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from cgan.condition.attributes import InvalidAttributeError
from cgan.condition.fusion import Condition
from cgan.condition.vocabulary import unknown_words
from cgan.core.errors import CganError
from cgan.core.images import describe_condition, image_grid, images_as
from cgan.nets.attention_maps import TokenAttention, token_attention
from cgan.nets.export import PIPELINE_CACHE_ENTRIES, ExportedModel, resolve_model_dir, write_exported
from cgan.nets.sampling import condition_input, generate, make_latents
from cgan.train.model_card import pipeline_model_card, with_card_header

OUTPUT_TYPES = ("pil", "pt", "np")


class UnknownWordsError(CganError, ValueError):
    """A prompt holds words the model never saw in its training captions, and the pipeline is strict."""


@dataclass
class CGANPipelineOutput(Sequence):
    """What a pipeline call returns, as in diffusers: `.images` (a list of PIL images for output_type="pil";
    an (N, 3, R, R) float tensor for "pt" or an (N, R, R, 3) float32 array for "np", both in [0, 1]) and
    `.seeds`, the seed of each image. It is also the sequence of its images (len, index, iterate), as the
    list that calls returned before."""

    images: Any
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.images)


def seeds_from_generator(generator: torch.Generator | list[torch.Generator], count: int,
                         per_prompt: int) -> list[int]:
    """The images' seeds from a torch.Generator's seed (`initial_seed()`), so that
    `generator=torch.Generator().manual_seed(s)` draws what `seed=s` and the CLI's `--seed s` draw: image
    k of every prompt uses s + k. A list (diffusers' form) gives each image its own generator's seed."""
    if not isinstance(generator, (list, tuple)):
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        return [int(generator.initial_seed()) + k for _ in range(count // per_prompt) for k in range(per_prompt)]
    generators = list(generator)
    if len(generators) != count:
        raise ValueError(f"generator: expected one torch.Generator or a list of {count} (one per image), "
                         f"got a list of {len(generators)}")
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(g).__name__}")
    return [int(g.initial_seed()) for g in generators]


class CGANPipeline(ExportedModel):
    """An exported model ready to generate: prompt + attributes + seed -> PIL images.
    (Loading, devices and dtypes: ExportedModel, cgan/nets/export.py.)"""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._warned_prompts: set[str] = set()  # each prompt's unknown words are named once

    def save_pretrained(self, model_dir: str | Path,
                        D: torch.nn.Module | Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write this model as an exported model folder that from_pretrained (and sample.py --model) reads:
        config.json, attributes.json, G_ema.safetensors, its vocabulary.json (when it has one) and MODEL_CARD.md;
        D.safetensors too when a discriminator (a module or its state dict) is given."""
        encoder = self.meta.get("text_encoder", {}).get("name", "")
        card = (with_card_header(self.model_card, encoder) if self.model_card else
                pipeline_model_card(Path(model_dir).name, self.meta, self.schema.describe(),
                                    sum(p.numel() for p in self.G.parameters())))
        return write_exported(model_dir, self.meta, self.schema.to_dict(), self.G, model_card=card, D=D,
                              vocabulary=self.vocabulary)

    def check_inputs(self, prompt: str, attributes: Mapping[str, Any] | None, num_images: int) -> dict[str, Any]:
        if num_images < 1:
            raise ValueError(f"num_images: expected at least 1, got {num_images}")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt: expected a string, got {type(prompt).__name__}")
        if not prompt.strip() and self.prompt_dropout <= 0:
            raise ValueError("prompt: empty, but this model was trained without prompt dropout "
                             "(train.drop_prompt=0), so it cannot generate without a prompt")
        clean = self.schema.validate(dict(attributes or {}), source="attributes")
        self.check_words(prompt)
        return clean

    def unknown_words(self, prompt: str) -> list[str]:
        """The prompt's words that never appeared in the training captions ([] when the model has no vocabulary)."""
        return [] if self.vocabulary is None else unknown_words(prompt, self.vocabulary)

    def check_words(self, prompt: str) -> None:
        """Warn (or, when strict, raise UnknownWordsError) naming the prompt's words the model never saw."""
        unknown = self.unknown_words(prompt)
        if not unknown:
            return
        message = (f"prompt {prompt!r}: {', '.join(repr(w) for w in unknown)} never appeared in this model's "
                   f"training captions ({len(self.vocabulary or ())} words), so the images will not follow "
                   f"{'it' if len(unknown) == 1 else 'them'}")
        if self.strict:
            raise UnknownWordsError(message)
        if prompt not in self._warned_prompts:
            if len(self._warned_prompts) >= PIPELINE_CACHE_ENTRIES:  # a server sees new prompts forever
                self._warned_prompts.clear()
            self._warned_prompts.add(prompt)
            warnings.warn(message + " (strict mode, --strict, makes this an error)", stacklevel=3)

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
        prompt_a to prompt_b while z stays fixed. Unset attributes are drawn per seed as each prompt's own
        images draw them, so the first and last columns are what generate_tensor gives for that seed."""
        if steps < 2:
            raise ValueError(f"steps: expected at least 2 for an interpolation, got {steps}")
        clean = self.check_inputs(prompt_a, attributes, num_seeds)
        self.check_inputs(prompt_b, attributes, num_seeds)
        seeds = [seed + s for s in range(num_seeds)]
        ends_attributes = [self.fill_unset(p, clean, s) for p in (prompt_a, prompt_b) for s in seeds]
        inputs = condition_input(self.text_cache, self.schema, [prompt_a] * num_seeds + [prompt_b] * num_seeds,
                                 ends_attributes, self.device)
        with torch.no_grad(), self._autocast():
            ends = self.G.condition(inputs)  # rows: prompt_a for each seed, then prompt_b for each seed

            def per_step(rows: torch.Tensor) -> torch.Tensor:  # (S, ...) -> (S * steps, ...), seed-major
                return rows.repeat_interleave(steps, dim=0)

            fractions = torch.linspace(0, 1, steps, device=self.device)
            weight = fractions.repeat(num_seeds)[:, None]  # (N = S * steps, 1), seed-major rows
            start, end = slice(0, num_seeds), slice(num_seeds, 2 * num_seeds)
            cond_vector = torch.lerp(per_step(ends.cond_vector[start]), per_step(ends.cond_vector[end]),
                                     weight)  # (N, D)
            attn_tokens = torch.lerp(per_step(ends.attn_tokens[start]), per_step(ends.attn_tokens[end]),
                                     weight[:, :, None])  # (N, M, D)
            either = per_step(ends.attn_mask[start] | ends.attn_mask[end])  # (N, M): a token of either end is seen
            cond = Condition(cond_vector, attn_tokens, either)
            z = make_latents([s for s in seeds for _ in range(steps)], self.G.z_dim).to(self.device)
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
        """Images and, per image, where the generator attended for each word and each attribute: the given
        ones, and those drawn from the data for the unset ones (labelled "(drawn)")."""
        clean = self.check_inputs(prompt, attributes, num_images)
        images, attention = self.generate_tensor(prompt, clean, num_images, seed, truncation, return_attention=True)
        if not attention["generator"]:
            raise ValueError("attention maps: this model's generator has no cross-attention layers "
                             "(model.g_attn_resolutions is empty)")
        words, word_keep = self.text_encoder.token_strings(prompt)
        if not prompt.strip():
            word_keep = [False] * len(words)

        def label(name: str, value: Any) -> str:
            shown = f"{name}={value:.2g}" if isinstance(value, float) else f"{name}={value}"
            return shown if name in clean else shown + " (drawn)"

        per_image = []
        for i in range(num_images):
            used = self.fill_unset(prompt, clean, seed + i)  # what image i was drawn with
            per_image.append(token_attention(
                attention["generator"], attention["fusion"], i, num_queries=self.G.conditioner.num_queries,
                text_labels=words, text_keep=word_keep, attr_labels=[label(n, used.get(n)) for n in self.schema.names],
                attr_keep=[n in used for n in self.schema.names], resolution=self.resolution))
        return images, per_image

    def __call__(self, prompt: str | list[str], attributes: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
                 num_images: int = 1, seed: int | None = None, truncation: float = 1.0,
                 num_images_per_prompt: int | None = None, *, generator: torch.Generator | list[torch.Generator]
                 | None = None, output_type: str = "pil") -> CGANPipelineOutput:
        """num_images (or num_images_per_prompt) per prompt, as a CGANPipelineOutput (`.images`, also a
        list-like of them). Image k of every prompt uses seed + k (seed 0 when neither seed nor generator is
        given); `generator=torch.Generator().manual_seed(s)` stands for seed=s (its initial_seed(); its
        state is not advanced), and a list of generators gives each image its generator's seed.
        A list of prompts takes one attribute dict for all of them or a list with one per prompt; the images
        come prompt by prompt. output_type: "pil", "pt" or "np" (the last two in [0, 1])."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        if seed is not None and generator is not None:
            raise ValueError("seed and generator: give one (the generator's seed is the images' seed)")
        per_prompt = num_images if num_images_per_prompt is None else num_images_per_prompt
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        settings = list(attributes) if isinstance(attributes, (list, tuple)) else [attributes] * len(prompts)
        if len(settings) != len(prompts):
            raise ValueError(f"attributes: expected one dict for all prompts or a list of {len(prompts)}, "
                             f"got a list of {len(settings)}")
        if per_prompt < 1:
            name = "num_images" if num_images_per_prompt is None else "num_images_per_prompt"
            raise ValueError(f"{name}: expected at least 1, got {per_prompt}")
        for p, a in zip(prompts, settings):
            self.check_inputs(p, a, per_prompt)
        if generator is not None:
            seeds = seeds_from_generator(generator, len(prompts) * per_prompt, per_prompt)
        else:
            seeds = [(seed or 0) + k for _ in prompts for k in range(per_prompt)]
        tensor = self.generate_batch([p for p in prompts for _ in range(per_prompt)],
                                     [a or {} for a in settings for _ in range(per_prompt)], seeds, truncation)
        return CGANPipelineOutput(images_as(tensor, output_type), seeds)


__all__ = ["CGANPipeline", "CGANPipelineOutput", "InvalidAttributeError", "UnknownWordsError", "condition_input",
           "describe_condition", "generate", "image_grid", "make_latents", "resolve_model_dir"]

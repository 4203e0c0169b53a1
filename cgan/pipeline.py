"""Generation from an exported model: `CGANPipeline.from_pretrained(DIR)(prompt, attributes, ...)`."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from cgan.attention_maps import TokenAttention, token_attention
from cgan.attributes import AttributeSchema, InvalidAttributeError
from cgan.checkpoint import CheckpointError, read_exported
from cgan.conditioning import Condition, ConditionInput
from cgan.data import tensor_to_images
from cgan.errors import CganError
from cgan.generator import Generator
from cgan.text_encoder import FrozenTextEncoder, TextEmbeddingCache
from cgan.vocabulary import VOCABULARY_FILE, read_vocabulary, unknown_words


def make_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """One z per seed (B, z_dim), each from its own CPU generator: image k of seed s is the same
    whatever the batch size or device."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


# On the CPU, a batch above ~16 images runs slower per image than 16 (its activations no longer fit
# the caches): 208 vs 279 img/s at 64 px (benchmarks/sample_speed.py), so generate() splits it.
CPU_MAX_BATCH = 16
# Prompts whose text embeddings a pipeline keeps (least recently used go first): ~25 KB each, so a
# server that sees new prompts forever stays within ~50 MB for them.
PIPELINE_CACHE_ENTRIES = 2048


@torch.no_grad()
def generate(G: Generator, text_cache: TextEmbeddingCache, schema: AttributeSchema, prompts: list[str],
             attributes: list[Mapping[str, Any]], seeds: list[int], truncation: float = 1.0,
             device: torch.device | str = "cpu", return_attention: bool = False, max_batch: int | None = None):
    """Images (B, 3, R, R) in [-1, 1] for per-image prompts, attribute dicts and seeds.

    At most max_batch images go through G at once (default: CPU_MAX_BATCH on the CPU, all of them
    elsewhere). Each image has its own z, so the split changes nothing but float rounding.
    """
    device = torch.device(device)
    if max_batch is None:
        max_batch = CPU_MAX_BATCH if device.type == "cpu" else len(seeds)
    if len(seeds) > max_batch and not return_attention:
        return torch.cat([generate(G, text_cache, schema, prompts[start:start + max_batch],
                                   attributes[start:start + max_batch], seeds[start:start + max_batch],
                                   truncation, device, max_batch=max_batch)
                          for start in range(0, len(seeds), max_batch)])
    z = make_latents(seeds, G.z_dim).to(device)
    return G(z, condition_input(text_cache, schema, prompts, attributes, device), truncation=truncation,
             return_attention=return_attention)


def condition_input(text_cache: TextEmbeddingCache, schema: AttributeSchema, prompts: list[str],
                    attributes: list[Mapping[str, Any]], device: torch.device | str) -> ConditionInput:
    """Prompts (an empty one means none) and valid attribute dicts -> the ConditionInput of G."""
    attr_index, attr_value, attr_present = (t.to(device) for t in schema.encode(list(attributes)))
    return ConditionInput(text_cache(prompts, device=device),
                          torch.tensor([bool(p.strip()) for p in prompts], device=device),
                          attr_index, attr_value, attr_present)


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


# Models that ship inside the package: `--model shapes64` works right after `pip install`.
PRETRAINED = {"shapes64": "assets/models/shapes64"}
OUTPUT_TYPES = ("pil", "pt", "np")


def resolve_model_dir(model: str | Path) -> Path:
    """A folder path, or the name of a shipped model (see PRETRAINED) when no such folder exists."""
    path = Path(model)
    if not path.exists() and str(model) in PRETRAINED:
        return Path(__file__).resolve().parent / PRETRAINED[str(model)]
    return path


def missing_model_error(model: str | Path) -> CheckpointError:
    """What from_pretrained says when `model` is neither a folder nor a shipped name (a hub id, say)."""
    hub = (f"; it does not download from the Hugging Face Hub: fetch the folder first (e.g. `huggingface-cli "
           f"download {model} --local-dir DIR`) and pass DIR") if str(model).count("/") == 1 else ""
    return CheckpointError(f"{model}: model folder not found; cgan loads a local model folder (config.json, "
                           f"attributes.json, G_ema.safetensors) or a shipped model's name "
                           f"({', '.join(PRETRAINED)}){hub}")


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


def images_as(tensor: torch.Tensor, output_type: str) -> Any:
    """Images (N, 3, R, R) in [-1, 1] -> PIL images, or a tensor ("pt") / array ("np") in [0, 1]."""
    if output_type == "pil":
        return tensor_to_images(tensor)
    unit = ((tensor.detach().float().clamp(-1, 1) + 1) / 2).cpu()  # (N, 3, R, R)
    return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()  # (N, R, R, 3)


def seeds_from_generator(generator: torch.Generator | list[torch.Generator], count: int) -> list[int]:
    """One seed per image drawn from a torch.Generator (or one generator per image, as diffusers takes
    a list): the same generator state gives the same images."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator] * count
    if len(generators) != count:
        raise ValueError(f"generator: expected one torch.Generator or a list of {count} (one per image), "
                         f"got a list of {len(generators)}")
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator: expected a torch.Generator, got {type(g).__name__}")
    return [int(torch.randint(0, 2 ** 63 - 1, (1,), generator=g, device=g.device)) for g in generators]


class CGANPipeline:
    """An exported model ready to generate: prompt + attributes + seed -> PIL images."""

    def __init__(self, G: Generator, text_encoder: FrozenTextEncoder, schema: AttributeSchema, meta: dict[str, Any],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 vocabulary: frozenset[str] | None = None, strict: bool = False, model_card: str | None = None):
        """vocabulary: the words of the training captions (None: prompts go unchecked); strict: a prompt with
        a word outside it raises UnknownWordsError instead of warning; model_card: the card save_pretrained
        writes (None: one is made from meta)."""
        self.G, self.text_encoder, self.schema, self.meta = G.eval(), text_encoder, schema, meta
        self.vocabulary, self.strict, self.model_card = vocabulary, strict, model_card
        self._warned_prompts: set[str] = set()  # each prompt's unknown words are named once
        self.text_cache = TextEmbeddingCache(text_encoder, max_entries=PIPELINE_CACHE_ENTRIES)
        self.prompt_dropout = float(meta.get("prompt_dropout", 0.0))
        self.dtype = dtype
        self.to(device, dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CGANPipeline":
        """Move to a device and/or set the compute dtype (float32; bfloat16 or float16 run G under autocast,
        the weights stay float32). Returns the pipeline."""
        if dtype is not None:
            if dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise ValueError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
            self.dtype = dtype
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {str(device)!r}: no CUDA GPU is available here; use cpu")
            # channels_last: 1.2-1.4x faster sampling on the CPU (benchmarks/sample_speed.py), as in training
            self.G = self.G.to(device, memory_format=torch.channels_last)
            self.text_encoder = self.text_encoder.to(device)
            self.device = device
        if self.dtype == torch.float16 and self.device.type == "cpu":
            raise ValueError("dtype torch.float16: needs a GPU; on the CPU use torch.bfloat16 or torch.float32")
        return self

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def save_pretrained(self, model_dir: str | Path) -> Path:
        """Write this model as an exported model folder that from_pretrained (and sample.py --model) reads:
        config.json, attributes.json, G_ema.safetensors, its vocabulary.json (when it has one) and MODEL_CARD.md."""
        from cgan.checkpoint import write_exported
        from cgan.model_card import pipeline_model_card, with_card_header

        encoder = self.meta.get("text_encoder", {}).get("name", "")
        card = (with_card_header(self.model_card, encoder) if self.model_card else
                pipeline_model_card(Path(model_dir).name, self.meta, self.schema.describe(),
                                    sum(p.numel() for p in self.G.parameters())))
        return write_exported(model_dir, self.meta, self.schema.to_dict(), self.G, model_card=card,
                              vocabulary=self.vocabulary)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, *, strict: bool = False,
                        torch_dtype: torch.dtype | None = None, **unsupported: Any) -> "CGANPipeline":
        """Load an exported model folder, or a shipped model by name (PRETRAINED). dtype (or diffusers'
        torch_dtype) sets the compute precision; strict: refuse prompts with words the model never saw."""
        if unsupported:
            raise TypeError(f"from_pretrained: unsupported argument(s) {', '.join(sorted(unsupported))}; it takes "
                            "model_dir (a local model folder or a shipped name: " + ", ".join(PRETRAINED) + "), "
                            "device, dtype (or torch_dtype), trust_remote_code and strict")
        dtype = torch_dtype if torch_dtype is not None else dtype
        model_dir = resolve_model_dir(model_dir)
        if not model_dir.exists():
            raise missing_model_error(model_dir)
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
        vocabulary = read_vocabulary(model_dir)
        if vocabulary is None:
            warnings.warn(f"{model_dir}: no {VOCABULARY_FILE} (exported before cgan kept its training words), so "
                          "prompts cannot be checked for words the model never saw", stacklevel=2)
        card_path = model_dir / "MODEL_CARD.md"
        card = card_path.read_text() if card_path.is_file() else None
        return cls(G, text_encoder, schema, meta, device, dtype, vocabulary=vocabulary, strict=strict, model_card=card)

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
            out = generate(self.G, self.text_cache, self.schema, [prompt] * num_images, [clean] * num_images, seeds,
                           truncation, self.device, return_attention)
        return (out[0].float(), out[1]) if return_attention else out.float()

    def generate_batch(self, prompts: list[str], attributes: list[Mapping[str, Any]] | None, seeds: list[int],
                       truncation: float = 1.0) -> torch.Tensor:
        """Images (N, 3, R, R) in [-1, 1], one per (prompt, attributes, seed) entry of the three lists."""
        attributes = [{}] * len(prompts) if attributes is None else list(attributes)
        if not len(prompts) == len(attributes) == len(seeds):
            raise ValueError(f"prompts, attributes and seeds: expected lists of one length, got {len(prompts)}, "
                             f"{len(attributes)} and {len(seeds)}")
        clean = [self.check_inputs(p, a, 1) for p, a in zip(prompts, attributes)]
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
        conditions = [(s, a) for s in range(num_seeds) for a in settings]
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
                 num_images: int = 1, seed: int | None = None, truncation: float = 1.0,
                 num_images_per_prompt: int | None = None, *, generator: torch.Generator | list[torch.Generator]
                 | None = None, output_type: str = "pil") -> CGANPipelineOutput:
        """num_images (or num_images_per_prompt) per prompt, as a CGANPipelineOutput (`.images`, also a
        list-like of them). Image k of every prompt uses seed + k (seed 0 when neither seed nor generator is
        given); with `generator` (a torch.Generator, or one per image) each image's seed is drawn from it.
        A list of prompts takes one attribute dict for all of them or a list with one per prompt; the images
        come prompt by prompt. output_type: "pil", "pt" or "np" (the last two in [0, 1])."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
        if seed is not None and generator is not None:
            raise ValueError("seed and generator: give one (the generator draws each image's seed)")
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
            seeds = seeds_from_generator(generator, len(prompts) * per_prompt)
        else:
            seeds = [(seed or 0) + k for _ in prompts for k in range(per_prompt)]
        tensor = self.generate_batch([p for p in prompts for _ in range(per_prompt)],
                                     [a or {} for a in settings for _ in range(per_prompt)], seeds, truncation)
        return CGANPipelineOutput(images_as(tensor, output_type), seeds)


__all__ = ["CGANPipeline", "CGANPipelineOutput", "InvalidAttributeError", "UnknownWordsError", "generate", "image_grid",
           "make_latents"]

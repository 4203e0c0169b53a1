"""Exported models: what `sample.py`, `CGANPipeline` and `train.init_from` load, a folder:
    config.json       format version, G's constructor arguments, text encoder, step, full config
    attributes.json   the attribute schema
    G_ema.safetensors the generator's EMA weights (nothing else)
    D.safetensors     the discriminator, only with train.export_d
    vocabulary.json   the words of the training captions (cgan/condition/vocabulary.py; absent in older models)
    MODEL_CARD.md     what it was trained on, how and what was measured (cgan/train/model_card.py)
written whole or not at all (cgan/core/files.py), read with clear errors.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from cgan.condition.attribute_prior import fill_unset
from cgan.condition.attributes import AttributeSchema
from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache
from cgan.condition.vocabulary import VOCABULARY_FILE, read_vocabulary, write_vocabulary
from cgan.core import __version__
from cgan.core.errors import CheckpointError
from cgan.core.files import load_weights, publish_folder, save_weights
from cgan.nets.generator import Generator

FORMAT_VERSION = 1
# Models that ship inside the package: `--model shapes64` works right after `pip install`.
PRETRAINED = {"shapes64": "assets/models/shapes64"}


def resolve_model_dir(model: str | Path) -> Path:
    """A folder path, or the name of a shipped model (see PRETRAINED) when no such folder exists."""
    path = Path(model)
    if not path.exists() and str(model) in PRETRAINED:
        return Path(__file__).resolve().parent.parent / PRETRAINED[str(model)]
    return path


def missing_model_error(model: str | Path) -> CheckpointError:
    """What from_pretrained says when `model` is neither a folder nor a shipped name (a hub id, say)."""
    hub = (f"; it does not download from the Hugging Face Hub: fetch the folder first (e.g. `huggingface-cli "
           f"download {model} --local-dir DIR`) and pass DIR") if str(model).count("/") == 1 else ""
    return CheckpointError(f"{model}: model folder not found; cgan loads a local model folder (config.json, "
                           f"attributes.json, G_ema.safetensors) or a shipped model's name "
                           f"({', '.join(PRETRAINED)}){hub}")


# Prompts whose text embeddings a pipeline keeps (least recently used go first): ~25 KB each, so a
# server that sees new prompts forever stays within ~50 MB for them.
PIPELINE_CACHE_ENTRIES = 2048


def export_model(out_dir: str | Path, *, G_ema: torch.nn.Module, generator_kwargs: dict[str, Any],
                 schema_dict: dict[str, Any], text_encoder: dict[str, Any], config_dict: dict[str, Any],
                 step: int, images_seen: int, model_card: str | None = None,
                 D: torch.nn.Module | None = None, vocabulary: list[str] | None = None,
                 attribute_prior: dict[str, Any] | None = None) -> Path:
    meta = {"format_version": FORMAT_VERSION, "cgan_version": __version__, "generator": generator_kwargs,
            "text_encoder": text_encoder, "step": step, "images_seen": images_seen,
            "prompt_dropout": config_dict["train"]["drop_prompt"], "config": config_dict}
    if attribute_prior:  # how generation draws an unset attribute (cgan/condition/attribute_prior.py)
        meta["attribute_prior"] = attribute_prior
    return write_exported(out_dir, meta, schema_dict, G_ema, model_card, D, vocabulary)


def write_exported(out_dir: str | Path, meta: dict[str, Any], schema_dict: dict[str, Any],
                   G_ema: torch.nn.Module, model_card: str | None = None,
                   D: torch.nn.Module | Mapping[str, torch.Tensor] | None = None,
                   vocabulary: Iterable[str] | None = None) -> Path:
    """Write a model folder (config.json, attributes.json, G_ema.safetensors; D.safetensors when D is given:
    not needed to generate, but `train.init_from` the model then continues with a trained D; vocabulary.json
    when the training captions' words are given) whole, or not at all."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    (tmp / "attributes.json").write_text(json.dumps(schema_dict, indent=2))
    save_weights(G_ema, tmp / "G_ema.safetensors")
    if D is not None:
        save_weights(D, tmp / "D.safetensors")
    if model_card is not None:
        (tmp / "MODEL_CARD.md").write_text(model_card)
    if vocabulary is not None:
        write_vocabulary(tmp, vocabulary, source="the words of the training captions")
    publish_folder(tmp, out_dir)
    return out_dir


def read_exported(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """-> (config.json contents, attribute schema dict, G_ema weights), with clear errors."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model folder not found (expected a folder with config.json, "
                              "attributes.json and G_ema.safetensors)")
    missing = [n for n in ("config.json", "attributes.json", "G_ema.safetensors") if not (model_dir / n).is_file()]
    if missing:
        raise CheckpointError(f"{model_dir}: not a complete cgan model, missing {', '.join(missing)}")
    try:
        meta = json.loads((model_dir / "config.json").read_text())
        schema = json.loads((model_dir / "attributes.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{model_dir}: config.json or attributes.json is not valid JSON: {err}") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{model_dir}: exported with model format {version!r} (cgan "
                              f"{meta.get('cgan_version', '?')}); this cgan reads format {FORMAT_VERSION}")
    return meta, schema, load_weights(model_dir / "G_ema.safetensors")


class ExportedModel:
    """An exported model in memory: G (eval mode), its frozen text encoder with a prompt cache, the
    attribute schema and config.json's contents (with its vocabulary and model card, when the folder has
    them), on a device with a compute dtype. What evaluation reads; CGANPipeline (cgan/pipeline.py) adds
    generation from prompts and attribute dicts, the prompt's word checks and save_pretrained."""

    def __init__(self, G: Generator, text_encoder: FrozenTextEncoder, schema: AttributeSchema, meta: dict[str, Any],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 vocabulary: frozenset[str] | None = None, strict: bool = False, model_card: str | None = None):
        """vocabulary: the words of the training captions (None: prompts go unchecked); strict: a prompt with
        a word outside it raises UnknownWordsError instead of warning (cgan/pipeline.py); model_card: the card
        save_pretrained writes (None: one is made from meta)."""
        self.G, self.text_encoder, self.schema, self.meta = G.eval(), text_encoder, schema, meta
        self.vocabulary, self.strict, self.model_card = vocabulary, strict, model_card
        self.text_cache = TextEmbeddingCache(text_encoder, max_entries=PIPELINE_CACHE_ENTRIES)
        self.prompt_dropout = float(meta.get("prompt_dropout", 0.0))
        # an unset attribute: "sample" draws it as the training data has it (cgan/condition/attribute_prior.py;
        # models exported without a prior keep the null token), "null" leaves it to the learned null token
        self.unset_attributes = "sample"
        self.dtype = dtype
        self.to(device, dtype)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ExportedModel":
        """Move to a device and/or set the compute dtype (float32; bfloat16 or float16 run G under autocast,
        the weights stay float32). Returns the model."""
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

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | torch.device = "cpu",
                        trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, *, strict: bool = False,
                        torch_dtype: torch.dtype | None = None, **unsupported: Any) -> "ExportedModel":
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

    def fill_unset(self, prompt: str, attributes: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """Validated attributes with each unset one drawn from the training data's distribution (one draw
        per image seed), unless unset_attributes is "null"."""
        if self.unset_attributes not in ("sample", "null"):
            raise ValueError(f"unset_attributes: expected 'sample' or 'null', got {self.unset_attributes!r}")
        if self.unset_attributes == "null":
            return dict(attributes)
        return fill_unset(self.meta.get("attribute_prior"), prompt, attributes, seed)

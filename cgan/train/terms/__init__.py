"""Loss terms beside the adversarial loss, as objects in a registry.

A term is one file in this folder: a `LossTerm` subclass registered with `@register_term`, whose
`name` is its weight in `config.loss` (declared there with `weight()`). It says what it needs:
  heads      D's auxiliary heads it reads: "contrastive" (image and condition embeddings),
             "attributes" (a prediction per attribute), or its own (`build_head`, in D.term_heads[name])
  negatives  the data set's contradicting captions (`Batch.negative_text`) loaded with each batch
and has a D part (`d_loss`, on real images, in the D phase) and/or a G part (`g_loss`, on generated
images, in the G phase), each returning a scalar or None. The D and G steps (cgan/train/steps.py)
add `weight * part` for every term whose weight is above 0. Every module here is imported below,
so adding a term is its file plus its weight: nothing else changes.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from cgan.condition.fusion import Condition
from cgan.core.config import LOSS_WEIGHTS, Config
from cgan.nets.d_contract import DiscriminatorBase, DOutput
from cgan.train.microbatch import Batch


@dataclass
class DContext:
    """What a term's D part reads: D's output for the D phase's pairs, with the rows of each kind."""

    D: DiscriminatorBase
    batch: Batch
    config: Config
    out: DOutput  # every pair of the phase: real, fake, mismatched text, mismatched attributes[, hard]
    logits: dict[str, torch.Tensor]  # "real", "fake", "mismatch_text", "mismatch_attr"[, "hard"]: (rows,) or (rows, N)
    rows: dict[str, slice]  # where each kind sits in `out`
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # diagnostics a term adds (detached)

    @property
    def size(self) -> int:
        return self.batch.images.shape[0]

    def real_plain(self) -> torch.Tensor | None:
        """(B, C) unconditioned features of the real images."""
        return self.out.plain[: self.size] if self.out.plain is not None else None

    def real_cond(self) -> Condition:
        """D's condition of the real images (B rows)."""
        return self.out.cond.slice(0, self.size)


@dataclass
class GContext:
    """What a term's G part reads: D's output for G's images (augmented as D saw them), and the G side:
    G itself, the latents and the images before augmentation (a term may draw more images of G)."""

    D: DiscriminatorBase
    batch: Batch
    config: Config
    fake: torch.Tensor  # (B, 3, R, R), augmented as D saw them
    out: DOutput
    logits: torch.Tensor  # (B,) or (B, N), float32
    G: nn.Module | None = None
    z: torch.Tensor | None = None  # (B, Z) the latents of the batch's images
    images: torch.Tensor | None = None  # (B, 3, R, R) G's images before augmentation
    anchor_images: torch.Tensor | None = None  # (B, 3, R, R) the frozen starting G's images of z (loss.anchor)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm:
    """One auxiliary loss term; subclasses set `name` (= its weight in config.loss) and override what they need."""

    name: str = ""
    label: str = ""  # the name in its logged statistics (loss/D_<label>, loss/G_<label>); default: name
    heads: frozenset[str] = frozenset()  # D heads it reads: "contrastive", "attributes", or its own name

    def needs_negatives(self, config: Config) -> bool:
        return False

    def build_head(self, *, plain_dim: int, cond_dim: int, attribute_sizes: list[int]) -> nn.Module | None:
        """A head of its own on D's unconditioned features (B, plain_dim); D keeps it in term_heads[name].
        attribute_sizes: per attribute, its number of values (1 for a continuous one)."""
        return None

    def d_loss(self, ctx: DContext) -> torch.Tensor | None:
        return None

    def g_loss(self, ctx: GContext) -> torch.Tensor | None:
        return None


TERMS: dict[str, LossTerm] = {}


def register_term(cls: type[LossTerm]) -> type[LossTerm]:
    """Class decorator: the term answers to config.loss.<cls.name>."""
    if cls.name not in LOSS_WEIGHTS:
        raise ValueError(f"loss term {cls.name!r}: declare its weight in LossConfig with weight() "
                         f"(weights there: {', '.join(LOSS_WEIGHTS)})")
    if cls.name in TERMS:
        raise ValueError(f"loss term {cls.name!r} is registered twice")
    TERMS[cls.name] = cls()
    return cls


for _module in pkgutil.iter_modules(__path__):  # every term file registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
_missing = [name for name in LOSS_WEIGHTS if name not in TERMS]
if _missing:
    raise ImportError(f"config.loss weights without a term in cgan/train/terms/: {', '.join(_missing)}")


def active_terms(config: Config) -> list[LossTerm]:
    """The terms whose weight is above 0, in LossConfig's order."""
    return [TERMS[name] for name in LOSS_WEIGHTS if getattr(config.loss, name) > 0]


def needs_negatives(config: Config) -> bool:
    return any(term.needs_negatives(config) for term in active_terms(config))


def discriminator_heads(config: Config) -> dict[str, Any]:
    """The factory's arguments for the heads the active terms read (cgan/nets/factory.py)."""
    heads = set().union(*(term.heads for term in active_terms(config)))
    own: dict[str, Callable[..., nn.Module | None]] = {term.name: term.build_head for term in active_terms(config)
                                                      if term.name in term.heads}
    return dict(contrastive_dim=config.model.conditioner.cond_dim if "contrastive" in heads else 0,
                attribute_heads="attributes" in heads, term_heads=own)


def terms_with_heads() -> list[str]:
    """Terms that add D heads when on: these cannot be turned on or off at --resume."""
    return [name for name in LOSS_WEIGHTS if TERMS[name].heads]


def late_weights(config: Config, images_seen: int) -> Config:
    """The config a step trains with: `config` itself, or a copy whose loss.late_terms weigh
    loss.late_factor times theirs from loss.late_kimg thousand images seen on, and whose loss.flat is 0
    before loss.flat_from_kimg thousand images of a run from a fresh G (no train.init_from)."""
    loss = config.loss
    changed: dict[str, float] = {}
    if loss.late_kimg > 0 and images_seen >= loss.late_kimg * 1000:
        changed = {name: getattr(loss, name) * loss.late_factor for name in loss.late_terms}
    if loss.flat > 0 and not config.train.init_from and images_seen < loss.flat_from_kimg * 1000:
        changed["flat"] = 0.0
    if not changed:
        return config
    return dataclasses.replace(config, loss=dataclasses.replace(loss, **changed))


def weighted_parts(parts: dict[str, torch.Tensor], config: Config) -> torch.Tensor | float:
    return sum(getattr(config.loss, name) * value for name, value in parts.items())

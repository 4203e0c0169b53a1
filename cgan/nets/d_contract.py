"""The discriminator contract: what every D takes, what it returns, and the registry of D types.

Every D is a `DiscriminatorBase`: `D(images (B, 3, R, R), ConditionInput, image_index=None) -> DOutput`.
The training steps and the loss terms read a D only through this: `DOutput.scores()` for the
adversarial terms, `plain` and `cond` for the auxiliary heads (`AuxiliaryHeads`), and
`attribute_num_values` for the matching-aware negatives. A new D type subclasses DiscriminatorBase,
registers itself with `@register_discriminator("name")` and says which `model.discriminator` settings
it reads (`from_config`); `model.discriminator.type: name` then builds it (cgan/nets/factory.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from cgan.condition.attributes import AttributeSchema
from cgan.condition.fusion import Condition, ConditionInput, Conditioner
from cgan.core.model_config import DiscriminatorConfig
from cgan.core.layers import EqualLinear


# A loss term's own head: (plain_dim=, cond_dim=) -> a module that reads unconditioned features (B, plain_dim).
HeadBuilder = Callable[..., nn.Module]


def pair_rows(x: torch.Tensor | None, image_index: torch.Tensor) -> torch.Tensor | None:
    """(N, ...) per image -> (B, ...) per pair, row i = x[image_index[i]] (None stays None). index_select, not
    x[image_index]: the backward of advanced indexing sums an image's rows with atomic adds on the CPU, in
    an order that depends on thread timing, so a busy machine changed the gradients' last bits and a
    resumed run drifted from the uninterrupted one; index_select's backward (index_add_) sums in order."""
    return None if x is None else x.index_select(0, image_index)


@dataclass
class DOutput:
    """What a D returns for B (image, condition) pairs."""

    # logit maps, each (B,) or (B, n): the residual D gives one (B,), the projected D one (B, s*s) per scale
    logits: list[torch.Tensor]
    plain: torch.Tensor | None  # (B, C) image features from before any condition (None when D has no heads)
    cond: Condition  # D's own condition of the B pairs

    def scores(self) -> torch.Tensor:
        """The logits the adversarial terms read: (B,) for a single (B,) map, else every map side by side (B, N)."""
        if len(self.logits) == 1 and self.logits[0].dim() == 1:
            return self.logits[0]
        return torch.cat([logits.reshape(logits.shape[0], -1) for logits in self.logits], dim=1)  # (B, N)


class AuxiliaryHeads(nn.Module):
    """The heads of the auxiliary losses, shared by both discriminators. They read `plain`, features
    of the image alone (B, plain_dim) -> (B, dim): the contrastive image and condition embeddings
    (loss.contrastive), one prediction per attribute (loss.attributes), and the heads a loss term
    builds for itself (`term_heads`, by the term's name: cgan/train/terms/)."""

    def build_auxiliary_heads(self, schema: AttributeSchema, plain_dim: int, dim: int, cond_dim: int,
                              contrastive_dim: int, attribute_heads: bool,
                              term_heads: Mapping[str, HeadBuilder] | None = None) -> None:
        self.plain = self.embed_image = self.embed_cond = self.attribute_out = None
        # one logit per categorical value, one output per continuous attribute (its value in [0, 1])
        self.attribute_categorical = [s.kind == "categorical" for s in schema.specs]
        self.attribute_sizes = [len(s.values) if s.kind == "categorical" else 1 for s in schema.specs]
        if contrastive_dim or (attribute_heads and self.attribute_sizes) or term_heads:
            self.plain = EqualLinear(plain_dim, dim, activation=True)
        if contrastive_dim:
            self.embed_image = EqualLinear(dim, contrastive_dim)
            self.embed_cond = nn.Sequential(EqualLinear(cond_dim, cond_dim, activation=True),
                                            EqualLinear(cond_dim, contrastive_dim))
        if attribute_heads and self.attribute_sizes:
            self.attribute_out = EqualLinear(dim, sum(self.attribute_sizes))
        self.term_heads = nn.ModuleDict({name: build(plain_dim=dim, cond_dim=cond_dim,
                                                     attribute_sizes=self.attribute_sizes)
                                         for name, build in (term_heads or {}).items()})

    def contrastive_embeddings(self, plain: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """Unconditioned features (B, C) -> (image embeddings (B, E), condition embeddings (B, E)), not normalised."""
        if self.embed_image is None or self.embed_cond is None:
            raise RuntimeError("this discriminator has no contrastive heads (loss.contrastive was 0 when it was built)")
        return self.embed_image(plain), self.embed_cond(cond.cond_vector.to(plain.dtype))

    def attribute_logits(self, plain: torch.Tensor) -> list[torch.Tensor]:
        """Unconditioned features (B, C) -> per attribute: (B, num_values) logits, or (B, 1) if continuous."""
        if self.attribute_out is None:
            raise RuntimeError("this discriminator has no attribute heads (loss.attributes was 0 when it was built)")
        return list(self.attribute_out(plain).split(self.attribute_sizes, dim=1))


class DiscriminatorBase(AuxiliaryHeads):
    """A conditioned discriminator: (images (B, 3, R, R), ConditionInput, image_index (B,) or None) -> DOutput.

    image_index: pair row i shows images[image_index[i]], so several conditions can share one image.
    Subclasses set `self.conditioner` (their own fusion), build their auxiliary heads, implement forward.
    """

    conditioner: Conditioner

    def condition(self, inputs: ConditionInput) -> Condition:
        return self.conditioner(inputs)

    @property
    def attribute_num_values(self) -> list[int]:
        """Per attribute: its number of categorical values (0: continuous)."""
        return self.conditioner.attr_embedder.num_values

    def forward(self, images: torch.Tensor, inputs: ConditionInput,
                image_index: torch.Tensor | None = None) -> DOutput:
        raise NotImplementedError

    @classmethod
    def config_kwargs(cls, config: DiscriminatorConfig) -> dict[str, Any]:
        """The constructor arguments this D type reads from `model.discriminator`."""
        raise NotImplementedError


DISCRIMINATORS: dict[str, type[DiscriminatorBase]] = {}


def register_discriminator(name: str) -> Callable[[type[DiscriminatorBase]], type[DiscriminatorBase]]:
    """Class decorator: `model.discriminator.type: name` builds this class."""

    def register(cls: type[DiscriminatorBase]) -> type[DiscriminatorBase]:
        if name in DISCRIMINATORS:
            raise ValueError(f"discriminator type {name!r} is registered twice")
        DISCRIMINATORS[name] = cls
        return cls

    return register

"""The one place models are built from the `model` config section (as EDM passes nested network kwargs).

    model:
      conditioner: {fusion, cond_dim, ...}        -> the Conditioner inside G and inside D
      generator: {z_dim, channel_base, ...}       -> Generator
      discriminator: {type: residual | projected, ...}  -> the registered D type (cgan/nets/d_contract.py)

An exported model's config.json keeps `generator_kwargs`, so it rebuilds G with no config at all.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cgan.condition.attributes import AttributeSchema
from cgan.core.errors import ConfigError
from cgan.core.model_config import ModelConfig
from cgan.nets import discriminator as _residual  # noqa: F401 - registers "residual"
from cgan.nets import projected as _projected  # noqa: F401 - registers "projected"
from cgan.nets.d_contract import DISCRIMINATORS, DiscriminatorBase, HeadBuilder
from cgan.nets.generator import Generator


def check_model_config(model: ModelConfig) -> None:
    """What the config itself cannot know: that the D type is registered."""
    if model.discriminator.type not in DISCRIMINATORS:
        raise ConfigError(f"model.discriminator.type: expected one of {', '.join(DISCRIMINATORS)}, "
                          f"got {model.discriminator.type!r}")


def generator_kwargs(model: ModelConfig, *, text_dim: int, resolution: int) -> dict[str, Any]:
    """G's constructor arguments (also written into an exported model's config.json)."""
    g = dataclasses.asdict(model.generator)
    g["attn_resolutions"] = tuple(g["attn_resolutions"])
    return dict(text_dim=text_dim, resolution=resolution, **dataclasses.asdict(model.conditioner), **g)


def build_generator(model: ModelConfig, *, schema: AttributeSchema, text_dim: int, resolution: int) -> Generator:
    return Generator(schema=schema, **generator_kwargs(model, text_dim=text_dim, resolution=resolution))


def discriminator_kwargs(model: ModelConfig, *, text_dim: int, resolution: int, contrastive_dim: int = 0,
                         attribute_heads: bool = False,
                         term_heads: Mapping[str, HeadBuilder] | None = None) -> dict[str, Any]:
    """The D type's constructor arguments: the conditioner's, the heads the loss terms need, its own settings."""
    check_model_config(model)
    d = model.discriminator
    return dict(text_dim=text_dim, resolution=resolution, **dataclasses.asdict(model.conditioner),
                attn_heads=d.attn_heads, contrastive_dim=contrastive_dim, attribute_heads=attribute_heads,
                term_heads=term_heads,
                **DISCRIMINATORS[d.type].config_kwargs(d))


def build_discriminator(model: ModelConfig, *, schema: AttributeSchema, text_dim: int, resolution: int,
                        contrastive_dim: int = 0, attribute_heads: bool = False,
                        term_heads: Mapping[str, HeadBuilder] | None = None) -> DiscriminatorBase:
    """model.discriminator.type names the class (the registry); contrastive_dim, attribute_heads and
    term_heads add the auxiliary heads the loss terms read (cgan/train/terms/ says which)."""
    kwargs = discriminator_kwargs(model, text_dim=text_dim, resolution=resolution, contrastive_dim=contrastive_dim,
                                  attribute_heads=attribute_heads, term_heads=term_heads)
    return DISCRIMINATORS[model.discriminator.type](schema=schema, **kwargs)

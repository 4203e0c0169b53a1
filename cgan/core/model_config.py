"""The `model` section of the config: the conditioner, the generator and the discriminator, each its
own dataclass (the factory, cgan/nets/factory.py, builds the networks from them), and the translation
of the flat `model` keys that configs, runs and exported models used before the nested section."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cgan.core.errors import ConfigError

MAX_TEXT_POSITIONS = 256  # model.conditioner.text_positions learns one embedding per token position up to this


@dataclass
class ConditionerConfig:
    """The condition's fusion (cgan/condition/fusion.py); G and D each hold one of these."""

    fusion: str = "cross_attention"  # cross_attention | concat (the baseline)
    cond_dim: int = 256  # width of condition tokens and the pooled condition vector
    num_cond_queries: int = 8  # learned queries of the cross-attention fusion
    fusion_layers: int = 2  # cross-attention layers of the fusion module
    fusion_heads: int = 4  # heads of the fusion module's attention
    # cross_attention: the fused tokens' mean joins the condition vector through a layer that starts at
    # zero (the pooled path alone at the start) or, with false, at a random init (the token path is heard
    # from the first step)
    fusion_zero_init: bool = False  # true: the default before the recipe study (the prompt stayed at chance)
    # cross_attention: a learned embedding of each text token's position (zero at the start) joins the
    # tokens the fusion and the spatial attention read, so "A left of B" and "B left of A" can differ
    text_positions: bool = False
    # cross_attention: trainable self-attention blocks over the text tokens before the fusion and the
    # spatial attention read them (each starts as the identity), so a word can learn which object it
    # belongs to and where that object is from the words around it (issue 12's binding)
    text_layers: int = 0


@dataclass
class GeneratorConfig:
    """The generator (cgan/nets/generator.py); the fields are its constructor's arguments."""

    z_dim: int = 128  # latent noise width
    w_dim: int = 256  # style vector width (mapping network output)
    mapping_layers: int = 4  # layers of the mapping network (z, condition -> w)
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping layers (StyleGAN's 0.01: slow to move)
    channel_base: int = 4096  # channels at resolution r: min(channel_max, channel_base // r)
    channel_max: int = 256  # cap on G's channels at any resolution
    # floor on G's channels at any resolution (0: none): wider top blocks for crisper edges (issue 12's
    # FID); init_from a narrower run widens it keeping its images (cgan/train/warm_start.py)
    channel_min: int = 0
    # G resolutions with cross-attention to the condition tokens
    attn_resolutions: list[int] = field(default_factory=lambda: [8, 16])
    attn_heads: int = 4  # heads of G's spatial cross-attention
    # G's spatial attention: a learned embedding of each location (zero at the start) joins its queries,
    # so a location's place can choose the words it reads (issue 12: which object is left, which right)
    attn_positions: bool = False
    output: str = "tanh"  # tanh (bounded, as real images are) | linear (StyleGAN's, may leave [-1, 1])
    # a residual head of plain 3 x 3 convolutions at the output resolution (0: none), for hard edges; its
    # last layer starts at zero, so init_from a model without one keeps its images (cgan/nets/generator.py)
    refine_layers: int = 0
    refine_channels: int = 32  # the refiner's width
    # auto: grayscale when the data set's images are grey (the generator then draws grey images), else rgb
    color: str = "auto"


@dataclass
class DiscriminatorConfig:
    """The discriminator: `type` names one in cgan/nets/factory.py's registry, the rest are its settings."""

    # residual: a convolutional D trained from scratch; projected: small heads on a frozen pretrained
    # image network (EfficientNet-Lite0, cgan/nets/projected.py), width channel_max (channel_base,
    # attn_resolutions, pool_first, top_full_res and word_match do not apply)
    type: str = "residual"
    channel_base: int = 4096  # D's channels at resolution r: min(channel_max, channel_base // r)
    channel_max: int = 256  # cap on D's channels at any resolution
    # floor on D's channels (0: none): wider first blocks, which see the edges; widened as G's channel_min
    channel_min: int = 0
    # D resolutions with cross-attention to the condition tokens
    attn_resolutions: list[int] = field(default_factory=lambda: [8])
    attn_heads: int = 4  # heads of D's spatial cross-attention
    # D blocks pool before their second convolution (as StyleGAN2's down-sampling convolution) instead
    # of after it: 0.62x the D phase's FLOPs, ~1.3x faster training; off keeps earlier runs' D
    pool_first: bool = False
    # with pool_first, the top block (at the image's own resolution) still runs both convolutions there:
    # D reads edges and corners pixel by pixel and only its lower blocks take the cheaper order
    top_full_res: bool = False
    # D adds a word-region matching score to its logit (AttnGAN's DAMSM idea): each prompt word attends
    # over D's 8 x 8 features, which know where they are, and scores what it found (cross_attention only)
    word_match: bool = False
    # minibatch standard deviation (ProGAN, StyleGAN2): D sees, as one extra 4 x 4 feature map, how much
    # groups of this many samples differ, so a batch of look-alikes is easy to reject (0 = off; residual only)
    mbstd_group: int = 0


@dataclass
class ModelConfig:
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


# The flat `model` section of configs, runs and exported models from before the nested one: each old
# key and where it lives now (model.attn_heads set both G's and D's heads). Translated when read.
FLAT_MODEL_KEYS: dict[str, tuple[str, ...]] = {
    **{key: (f"conditioner.{key}",) for key in ("fusion", "cond_dim", "num_cond_queries", "fusion_layers",
                                                  "fusion_heads", "fusion_zero_init", "text_positions", "text_layers")},
    **{key: (f"generator.{key}",) for key in ("z_dim", "w_dim", "mapping_layers", "mapping_lr_mul", "color")},
    **{f"g_{key}": (f"generator.{key}",) for key in ("channel_base", "channel_max", "channel_min",
                                                       "attn_resolutions", "attn_positions", "output")},
    **{f"d_{key}": (f"discriminator.{key}",) for key in ("channel_base", "channel_max", "channel_min",
                                                           "attn_resolutions", "pool_first", "word_match")},
    "attn_heads": ("generator.attn_heads", "discriminator.attn_heads"),
    "discriminator": ("discriminator.type",),  # a string then, a section now
}


def translate_flat_model(values: dict[str, Any]) -> dict[str, Any]:
    """A `model` section with old flat keys -> the nested one (new keys pass through unchanged)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if key == "discriminator" and isinstance(value, dict) or key not in FLAT_MODEL_KEYS:
            if isinstance(value, dict):
                nested.setdefault(key, {}).update(value)
            else:
                nested[key] = value
            continue
        for target in FLAT_MODEL_KEYS[key]:
            section, name = target.split(".")
            nested.setdefault(section, {})[name] = value
    return nested


def check_model(model: ModelConfig, max_length: int, resolution: int) -> None:
    c, g, d = model.conditioner, model.generator, model.discriminator
    cross = c.fusion == "cross_attention"
    check_choice("model.conditioner.fusion", c.fusion, ("cross_attention", "concat"))
    check_choice("model.generator.output", g.output, ("linear", "tanh"))
    check_choice("model.generator.color", g.color, ("auto", "rgb", "grayscale"))
    if c.text_positions and not cross:
        raise ConfigError("model.conditioner.text_positions: positions are read by the cross-attention fusion; "
                          f"model.conditioner.fusion is {c.fusion!r} (set model.conditioner.fusion=cross_attention)")
    if c.text_layers < 0:
        raise ConfigError(f"model.conditioner.text_layers: expected a number >= 0, got {c.text_layers}")
    if c.text_layers and not cross:
        raise ConfigError("model.conditioner.text_layers: the text blocks feed the cross-attention fusion; "
                          f"model.conditioner.fusion is {c.fusion!r} (set model.conditioner.fusion=cross_attention)")
    if d.word_match and (not cross or d.type != "residual"):
        raise ConfigError("model.discriminator.word_match: the residual discriminator of the cross-attention fusion "
                          f"matches words to its 8 x 8 features; got model.conditioner.fusion={c.fusion!r}, "
                          f"model.discriminator.type={d.type!r}")
    if d.top_full_res and not d.pool_first:
        raise ConfigError("model.discriminator.top_full_res: keeps the top block out of pool_first, which is off "
                          "(every block already convolves at full resolution); set model.discriminator.pool_first=true "
                          "or leave top_full_res out")
    if c.text_positions and max_length > MAX_TEXT_POSITIONS:
        raise ConfigError(f"model.conditioner.text_positions: learns one embedding per token position, at most "
                          f"{MAX_TEXT_POSITIONS}; text.max_length is {max_length}")
    for key, resolutions in (("generator", g.attn_resolutions), ("discriminator", d.attn_resolutions)):
        for r in resolutions:
            if r < 4 or r > resolution or r & (r - 1):
                raise ConfigError(f"model.{key}.attn_resolutions: {r} is not a power of two between 4 and "
                                  f"data.resolution={resolution}")
    if c.cond_dim % c.fusion_heads or c.cond_dim % g.attn_heads or c.cond_dim % d.attn_heads:
        raise ConfigError("model.conditioner.cond_dim: must be divisible by model.conditioner.fusion_heads, "
                          "model.generator.attn_heads and model.discriminator.attn_heads")
    if not 0.0 < g.mapping_lr_mul <= 1.0:
        raise ConfigError(f"model.generator.mapping_lr_mul: expected a number in (0, 1], got {g.mapping_lr_mul}")


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")

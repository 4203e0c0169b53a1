"""Building a training run: everything `train()` holds, checked and placed before the first step.

`build_run(config, out_dir)` fails on bad input before any step: the settings, the data, the text
encoder, the models (cgan/nets/factory.py) and their optimizers, the output folder and free space;
then it resumes a training state (`--resume`) or starts fresh (`train.init_from`). The `Run` it returns
is what the loop (cgan/train/loop.py) and its hooks (cgan/train/hooks.py) read and advance.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache
from cgan.condition.vocabulary import build_vocabulary
from cgan.core.config import Config, ConfigError, TrainConfig, data_cache_dir, save_config
from cgan.core.errors import CheckpointError
from cgan.data import CaptionedDataset, StepSampler, build_dataset, stratified_records
from cgan.data.cache import ArrayBatches, DatasetArrays, cached_arrays
from cgan.nets.factory import build_discriminator, build_generator, check_model_config
from cgan.train.augment import parse_policy
from cgan.train.caption_table import CaptionTable
from cgan.train.checkpoint import remove_stale_temporaries, resolve_resume
from cgan.train.precision import fast_gpu_math, phase_scalers, resolve_mixed_precision
from cgan.train.recovery import PHASES, check_output_dir, check_same_model, restore_training_state
from cgan.train.terms import discriminator_heads, needs_negatives
from cgan.train.terms.diversity import data_tau, level_taus
from cgan.train.warm_start import load_anchor, warm_start


@dataclass
class Run:
    """A training run in memory. G_run and D_run are G and D, or their compiled views (train.compile)
    for the D and G phases; optimizers and checkpoints use G and D themselves."""

    config: Config
    out_dir: Path
    accelerator: Any
    dataset: CaptionedDataset
    text_encoder: FrozenTextEncoder
    text_cache: TextEmbeddingCache
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_G: Any
    opt_D: Any
    augment: list[str]  # the DiffAugment policy
    grid: tuple[list[str], list[dict[str, Any]]]  # the progress grid's prompts and attributes
    checkpoint_bytes: int  # what one training state needs on disk
    G_run: torch.nn.Module | None = None
    D_run: torch.nn.Module | None = None
    arrays: DatasetArrays | None = None  # data.image_cache: the data set's images, memory-mapped (cgan/data/cache.py)
    table: CaptionTable | None = None  # with the image cache: every caption's embedding on the device, by id
    vocabulary: list[str] | None = None  # the training captions' words, exported beside the model
    scalers: dict[str, Any] | None = None  # fp16: one grad scaler per phase (cgan/train/precision.py)
    G_anchor: torch.nn.Module | None = None  # loss.anchor: train.init_from's G_ema, frozen (not checkpointed)
    step: int = 0
    images_seen: int = 0
    lr_scale: float = 1.0  # both learning rates' factor after rollbacks
    seconds_before: float = 0.0  # training time of earlier invocations

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    @property
    def optimizers(self) -> dict[str, Any]:
        optimizers = {"opt_G": self.opt_G, "opt_D": self.opt_D}
        optimizers.update({f"scaler_{name}": scaler for name, scaler in (self.scalers or {}).items()})
        return optimizers

    @property
    def global_batch(self) -> int:
        t = self.config.train
        return t.batch_size * t.grad_accum * self.accelerator.num_processes

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.train.channels_last else torch.contiguous_format


def resolve_color(config: Config, dataset) -> str | None:
    """Settle model.color=auto from the data (grey images: "grayscale", else "rgb") in the config, once,
    so the run's config and the exported model hold it. -> the colour so chosen, None if it was set."""
    if config.model.generator.color != "auto":
        return None
    config.model.generator.color = "grayscale" if dataset.is_grayscale() else "rgb"
    return config.model.generator.color


def build_models(config: Config, schema, text_dim: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """G, D and G_ema (G's copy, frozen) from the nested model config (cgan/nets/factory.py); D has the
    auxiliary heads the loss terms need."""
    sizes = dict(schema=schema, text_dim=text_dim, resolution=config.data.resolution)
    G = build_generator(config.model, **sizes)
    D = build_discriminator(config.model, **sizes, **discriminator_heads(config))
    G_ema = build_generator(config.model, **sizes).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    return G, D, G_ema


def g_trained(G: torch.nn.Module, t: TrainConfig) -> torch.nn.Module:
    """What the G phase trains (train.g_params): all of G, or its refiner alone (the rest of G then gets no
    gradient and keeps its weights)."""
    return G.refine if t.g_params == "refiner" else G


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: the main process stops the run cleanly (cgan/train/recovery.py's
    StopControl) and then ends its workers. Ctrl-C in a terminal, `timeout`, `docker stop` and cluster schedulers
    signal the whole process group; a worker killed by SIGTERM would crash the run instead of stopping it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: CaptionedDataset, config: Config, step: int, accelerator,
                arrays: DatasetArrays | None = None):
    """An endless iterator of this process's micro-batches, from `step` on (the same order after a resume);
    from the image cache's arrays when given (data.image_cache), else a DataLoader over the data set."""
    t = config.train
    if arrays is not None:
        return ArrayBatches(arrays, batch_size=t.batch_size, seed=t.seed, start_step=step * t.grad_accum,
                            num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                            pin=accelerator.device.type == "cuda", negatives=needs_negatives(config))
    sampler = StepSampler(len(dataset), batch_size=t.batch_size, seed=t.seed, start_step=step * t.grad_accum,
                          num_processes=accelerator.num_processes, process_index=accelerator.process_index)
    return iter(DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, num_workers=config.data.num_workers,
                           persistent_workers=config.data.num_workers > 0,
                           worker_init_fn=leave_stop_signals_to_the_main_process,
                           pin_memory=accelerator.device.type == "cuda",
                           generator=torch.Generator().manual_seed(t.seed)))  # keeps the global RNG untouched


def sample_conditions(config: Config, dataset: CaptionedDataset) -> tuple[list[str], list[dict[str, Any]]]:
    """The fixed prompts and attributes of the progress grid."""
    if config.sample.prompts:
        prompts = list(config.sample.prompts)
        attrs = list(config.sample.attributes) + [{}] * (len(prompts) - len(config.sample.attributes))
        return prompts, [dataset.schema.validate(a, "sample.attributes") for a in attrs]
    records = [dataset.record(i) for i in stratified_records(dataset, count=8, seed=config.sample.seed)]
    return [r["captions"][0] for r in records], [r["attributes"] for r in records]


def check_run_settings(config: Config) -> list[str]:
    """Every check of the settings that needs no data and no model (also run by --dry-run); returns the
    DiffAugment policy."""
    config.validate()
    check_model_config(config.model)
    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; on the CPU use bf16 or no")
    tracker = config.train.tracker
    if tracker in ("wandb", "mlflow"):
        import importlib.util

        if importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"train.tracker={tracker}: the {tracker} package is not installed "
                              f"(pip install {tracker}), or use train.tracker=tensorboard")
    return parse_policy(config.train.augment)


def make_accelerator(config: Config, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    t = config.train
    # A process that dies ends the run through the launcher; one that hangs, through this timeout.
    return Accelerator(mixed_precision=t.mixed_precision, project_dir=str(out_dir),
                       log_with=None if t.tracker == "none" else t.tracker,  # metrics go through its trackers
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=t.dist_timeout_s))])


def build_run(config: Config, out_dir: str | Path, resume: str | None = None,
              text_encoder: FrozenTextEncoder | None = None, accelerator: Any = None) -> Run:
    """Everything a run needs, checked, placed, and resumed or warm-started; also writes OUT/config.yaml."""
    precision_note = resolve_mixed_precision(config)  # before the checks: they check what will run
    augment = check_run_settings(config)
    t, out_dir = config.train, Path(out_dir)
    if t.threads:
        torch.set_num_threads(t.threads)
    accelerator = accelerator or make_accelerator(config, out_dir)
    if precision_note:
        accelerator.print(precision_note)
    fast_gpu_math(accelerator.device)
    dataset = build_dataset(config.data)  # everything that can fail on bad input fails before the first step
    if config.loss.diversity > 0 and not isinstance(config.loss.diversity_tau, float):  # measured, or checked
        resolve_diversity_tau(config, dataset, accelerator)
    if resolve_color(config, dataset) == "grayscale":
        accelerator.print("model.generator.color=auto: every image checked is grey, so the generator draws grey images")
    if text_encoder is None:
        text_encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length,
                                         trust_remote_code=config.text.trust_remote_code)
    text_encoder = text_encoder.to(accelerator.device)
    text_cache = TextEmbeddingCache(text_encoder, data_cache_dir(config.data))
    grid = sample_conditions(config, dataset)
    torch.manual_seed(t.seed)  # identical initial weights on every process
    G, D, G_ema = build_models(config, dataset.schema, text_encoder.dim)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    for module in (G, D, G_ema):
        module.to(accelerator.device, memory_format=memory_format)
    # fused: its found_inf lets a non-finite step be skipped on the device (skip_if_nonfinite)
    opt_G = torch.optim.Adam(g_trained(G, t).parameters(), lr=t.lr_g, betas=tuple(t.betas), eps=1e-8, fused=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=tuple(t.betas), eps=1e-8, fused=True)
    num_params = sum(p.numel() for m in (G, D, G_ema) for p in m.parameters())
    run = Run(config=config, out_dir=out_dir, accelerator=accelerator, dataset=dataset, text_encoder=text_encoder,
              text_cache=text_cache, G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D, augment=augment, grid=grid,
              checkpoint_bytes=num_params * 4 * 3 + 2 ** 20)  # weights + 2 Adam moments
    # train.compile: compiled views of G and D (same weights) for the D and G phases; R1 keeps the eager
    # D (compiled graphs have no double backward)
    run.G_run, run.D_run = (torch.compile(G), torch.compile(D)) if t.compile else (G, D)
    if config.loss.anchor > 0:  # rebuilt from train.init_from on every start, so a resume holds the same images
        run.G_anchor = build_generator(config.model, schema=dataset.schema, text_dim=text_encoder.dim,
                                       resolution=config.data.resolution)
        accelerator.print(load_anchor(t.init_from, run.G_anchor))
        run.G_anchor.to(accelerator.device, memory_format=memory_format)
    prepare_output(run)
    start_or_resume(run, resume)  # seeds (fresh) or restores (resume) the random state after every build
    accelerator.init_trackers("logs")  # TensorBoard: OUT/logs; W&B and MLflow: their own runs (main process)
    if accelerator.is_main_process:
        save_config(config, out_dir / "config.yaml")
        accelerator.print(f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M parameters, "
                          f"D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M; {len(dataset)} training images; "
                          f"{accelerator.num_processes} process(es) on {accelerator.device}")
    return run


def resolve_diversity_tau(config: Config, dataset: CaptionedDataset, accelerator: Any) -> None:
    """loss.diversity_tau=data: the number measured from the data, in the config the run saves (so a
    resume uses the same bound). loss.diversity_tau=levels: one number per level; a list the run saved
    must have one per level of this data set's attributes."""
    levels = 2 ** (1 + (len(dataset.schema) if dataset.schema is not None else 0))
    tau = config.loss.diversity_tau
    if isinstance(tau, list):
        if len(tau) != levels:
            raise ConfigError(f"loss.diversity_tau: a list of {len(tau)} bounds, but this data set's attributes make "
                              f"{levels} levels of conditioning; give 'levels' to measure them again")
        return
    if tau == "levels":
        config.loss.diversity_tau = level_taus(dataset)
        accelerator.print("loss.diversity_tau=levels: " + ", ".join(
            f"{level}: {value}" for level, value in enumerate(config.loss.diversity_tau))
            + " (by level: bit 0 = prompt given, bit j + 1 = attribute j given)")
        return
    try:
        tau, distance = data_tau(dataset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    config.loss.diversity_tau = round(tau, 4)
    accelerator.print(f"loss.diversity_tau=data: {config.loss.diversity_tau} (two real images of one caption are "
                      f"{distance:.3f} apart at half resolution)")


def prepare_output(run: Run) -> None:
    """The output folder (space, leftovers of a killed run), the caption and image caches, the vocabulary,
    the optimizers' placement and the phases' grad scalers."""
    accelerator, data = run.accelerator, run.config.data
    if accelerator.is_main_process:
        check_output_dir(run.out_dir, bytes_needed=run.checkpoint_bytes)
        for line in remove_stale_temporaries(run.out_dir):  # before anything of this run is written
            accelerator.print(line)
    with accelerator.main_process_first():  # main encodes and writes the disk caches, the others read them
        run.text_cache.precompute(run.dataset.all_captions() + run.grid[0])
        run.arrays = cached_arrays(run.dataset, data_cache_dir(data)) if data.image_cache else None
    if run.arrays is not None:
        run.table = CaptionTable(run.arrays.captions, run.text_cache, accelerator.device)
    run.vocabulary = build_vocabulary(run.dataset.all_captions())  # exported beside the model: prompts' unknown words
    run.opt_G, run.opt_D = accelerator.prepare(run.opt_G, run.opt_D)  # device placement and the fp16 grad scaler
    run.scalers = phase_scalers(accelerator, PHASES)  # fp16: one grad scaler per phase


def start_or_resume(run: Run, resume: str | None) -> None:
    """Restore the newest (or the given) training state, or start fresh, from train.init_from if set."""
    from accelerate.utils import gather_object

    accelerator, config, out_dir = run.accelerator, run.config, run.out_dir
    resume_path = resolve_resume(out_dir, resume)
    if resume_path is None:
        if resume == "latest":
            accelerator.print(f"--resume latest: no checkpoint in {out_dir}/checkpoints yet, starting fresh")
        if config.train.init_from:
            accelerator.print(warm_start(config.train.init_from, run.G, run.G_ema, run.D))
        torch.manual_seed(config.train.seed + 1 + accelerator.process_index)  # per-process noise, dropout, mismatches
        return
    check_same_model(out_dir, config)
    state = restore_training_state(resume_path, run.modules, run.optimizers, config, accelerator)
    run.step, run.images_seen, run.lr_scale = state["step"], state["images_seen"], state["lr_scale"]
    run.seconds_before = float(state.get("train_seconds", 0.0))
    accelerator.print(f"resumed from {resume_path} at step {run.step} ({run.images_seen} images seen)"
                      + (f", learning rates x{run.lr_scale:.3g} after earlier rollbacks" if run.lr_scale != 1 else ""))
    if accelerator.num_processes > 1:
        steps = gather_object([run.step])
        if len(set(steps)) > 1:
            raise CheckpointError(f"processes resumed at different steps {steps} from {resume_path}")
        accelerator.print(f"all {accelerator.num_processes} processes resumed at step {run.step}")

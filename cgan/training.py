"""The training loop: one readable function (`train`) calling the phase functions of cgan/steps.py.

Multi-process: Accelerate launches the processes, places the models, runs mixed precision
and the fp16 grad scaler. Gradients are averaged across processes by `steps.sync_gradients`.
All processes start from the same seed, so weights stay identical; only the main process writes.

Reliability (cgan/recovery.py): a phase whose loss or gradient is NaN or inf skips its optimizer
step on the device; the flags are read at logging and checkpoint steps, never per step. After
train.nonfinite_patience such steps in a row the run rolls back to the newest complete checkpoint
with lower learning rates, or stops with `TrainingDiverged`. Leftovers of a killed run are cleared at start.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cgan.attributes import drop_attributes
from cgan.augment import parse_policy
from cgan.caption_table import CaptionTable
from cgan.checkpoint import (CheckpointError, atomic_save, export_model, remove_stale_temporaries, resolve_resume,
                             save_training_state)
from cgan.conditioning import ConditionInput
from cgan.config import Config, ConfigError, data_cache_dir, save_config
from cgan.data import CaptionedDataset, StepSampler, build_dataset, stratified_records, tensor_to_images
from cgan.data.cache import ArrayBatches, cached_arrays
from cgan.discriminator import Discriminator
from cgan.ema import ema_beta, update_ema
from cgan.evaluation import Evaluator
from cgan.generator import Generator
from cgan.model_card import run_model_card
from cgan.pipeline import describe_condition, generate, image_grid
from cgan.precision import fast_gpu_math, phase_scalers, resolve_mixed_precision, use_scaler
from cgan.recovery import (PHASES, NonfiniteGuard, StopControl, check_free_space, check_output_dir,
                           check_same_model, restore_training_state, rng_state, roll_back)
from cgan.steps import Batch, d_step, g_step, r1_step, run_phase
from cgan.text_encoder import FrozenTextEncoder, TextEmbeddingCache
from cgan.vocabulary import build_vocabulary


def resolve_color(config: Config, dataset) -> str | None:
    """Settle model.color=auto from the data (grey images: "grayscale", else "rgb") in the config, once,
    so the run's config and the exported model hold it. -> the colour so chosen, None if it was set."""
    if config.model.color != "auto":
        return None
    config.model.color = "grayscale" if dataset.is_grayscale() else "rgb"
    return config.model.color


def generator_kwargs(config: Config, text_dim: int) -> dict[str, Any]:
    m = config.model
    return dict(text_dim=text_dim, resolution=config.data.resolution, z_dim=m.z_dim, w_dim=m.w_dim,
                cond_dim=m.cond_dim, mapping_layers=m.mapping_layers, channel_base=m.g_channel_base,
                channel_max=m.g_channel_max, channel_min=m.g_channel_min,
                attn_resolutions=tuple(m.g_attn_resolutions), attn_heads=m.attn_heads,
                fusion=m.fusion, num_cond_queries=m.num_cond_queries, fusion_layers=m.fusion_layers,
                fusion_heads=m.fusion_heads, fusion_zero_init=m.fusion_zero_init, text_positions=m.text_positions,
                text_layers=m.text_layers, output=m.g_output, mapping_lr_mul=m.mapping_lr_mul, color=m.color,
                attn_positions=m.g_attn_positions)


def discriminator_kwargs(config: Config, text_dim: int) -> dict[str, Any]:
    m = config.model
    shared = dict(text_dim=text_dim, resolution=config.data.resolution, cond_dim=m.cond_dim, attn_heads=m.attn_heads,
                  fusion=m.fusion, num_cond_queries=m.num_cond_queries, fusion_layers=m.fusion_layers,
                  fusion_heads=m.fusion_heads, fusion_zero_init=m.fusion_zero_init, text_positions=m.text_positions,
                  text_layers=m.text_layers, contrastive_dim=m.cond_dim if config.loss.contrastive > 0 else 0,
                  attribute_heads=config.loss.attributes > 0)
    if m.discriminator == "projected":
        return dict(shared, width=m.d_channel_max)
    return dict(shared, channel_base=m.d_channel_base, channel_max=m.d_channel_max, channel_min=m.d_channel_min,
                attn_resolutions=tuple(m.d_attn_resolutions), pool_first=m.d_pool_first, word_match=m.d_word_match)


def build_discriminator(config: Config, schema, text_dim: int) -> torch.nn.Module:
    """model.discriminator: residual (Discriminator) or projected (ProjectedDiscriminator)."""
    kwargs = discriminator_kwargs(config, text_dim)
    if config.model.discriminator == "projected":
        from cgan.projected import ProjectedDiscriminator

        return ProjectedDiscriminator(schema=schema, **kwargs)
    return Discriminator(schema=schema, **kwargs)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: the main process stops the run cleanly (cgan/recovery.py's
    StopControl) and then ends its workers. Ctrl-C in a terminal, `timeout`, `docker stop` and cluster schedulers
    signal the whole process group; a worker killed by SIGTERM would crash the run instead of stopping it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: CaptionedDataset, config: Config, step: int, accelerator, arrays=None):
    """An endless iterator of this process's micro-batches, from `step` on (the same order after a resume);
    from the image cache's arrays when given (data.image_cache), else a DataLoader over the data set."""
    t = config.train
    if arrays is not None:
        return ArrayBatches(arrays, batch_size=t.batch_size, seed=t.seed, start_step=step * t.grad_accum,
                            num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                            pin=accelerator.device.type == "cuda", negatives=uses_negatives(config))
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


def save_sample_grid(path: Path, G, text_cache, dataset, prompts, attrs, config: Config, device) -> None:
    num = config.sample.num_per_prompt
    seeds = [config.sample.seed + k for _ in prompts for k in range(num)]
    images = generate(G, text_cache, dataset.schema, [p for p in prompts for _ in range(num)],
                      [a for a in attrs for _ in range(num)], seeds, config.sample.truncation, device)
    labels = [describe_condition(p, a) for p, a in zip(prompts, attrs)]
    grid = image_grid(tensor_to_images(images), num, labels)
    atomic_save(path, lambda tmp: grid.save(tmp, format="PNG"))


def uses_negatives(config: Config) -> bool:
    """Whether the loss terms read each image's contradicting caption (the data set's `negatives`)."""
    return config.loss.hard_negative > 0 or config.loss.g_hard_negative > 0 or config.loss.contrastive_hard


def to_device_batch(raw: dict[str, Any], text_cache: TextEmbeddingCache, config: Config, device,
                    memory_format, table: CaptionTable | None = None) -> Batch:
    """A loader's micro-batch on the device. From the image cache (ArrayBatches): uint8 images, made [-1, 1]
    on the device, and caption ids looked up in `table`; from a DataLoader: images in [-1, 1] and captions."""
    t = config.train
    images = raw["image"].to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.float().div_(127.5).sub_(1.0)  # as cgan.data.image_to_tensor; in place: one allocation
    images = images.contiguous(memory_format=memory_format)
    by_id = "caption_id" in raw
    captions = table.strings(raw["caption_id"]) if by_id else list(raw["text"])
    size = images.shape[0]
    prompt_present = torch.rand(size, device=device) >= t.drop_prompt
    attr_present_full = raw["attr_present"].to(device, non_blocking=True)
    negative_text = negative_valid = None
    if uses_negatives(config):
        if by_id:
            negative_ids = raw["negative_id"].to(device, non_blocking=True)
            negative_text = table(negative_ids)
            negative_valid = negative_ids != (-1 if table.empty_id is None else table.empty_id)
        else:
            negatives = list(raw["negative"])
            negative_text = text_cache(negatives, device=device)
            negative_valid = torch.tensor([bool(n) for n in negatives]).to(device, non_blocking=True)
    text = table(raw["caption_id"].to(device, non_blocking=True)) if by_id else text_cache(captions, device=device)
    cond = ConditionInput(text, prompt_present,
                          raw["attr_index"].to(device, non_blocking=True), raw["attr_value"].to(device, non_blocking=True),
                          drop_attributes(attr_present_full, t.drop_attr))
    return Batch(images=images, captions=captions, cond=cond, attr_present_full=attr_present_full,
                 attr_host=(raw["attr_index"], raw["attr_value"], raw["attr_present"]), negative_text=negative_text,
                 negative_valid=negative_valid)


def check_run_settings(config: Config) -> list[str]:
    """Every check of the settings that needs no data and no model (also run by --dry-run); returns the
    DiffAugment policy."""
    config.validate()
    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; on the CPU use bf16 or no")
    tracker = config.train.tracker
    if tracker in ("wandb", "mlflow"):
        import importlib.util

        if importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"train.tracker={tracker}: the {tracker} package is not installed "
                              f"(pip install {tracker}), or use train.tracker=tensorboard")
    return parse_policy(config.train.augment)


def train(config: Config, out_dir: str | Path, resume: str | None = None, max_steps: int | None = None,
          text_encoder: FrozenTextEncoder | None = None) -> Path:
    """Train (or continue) a run in out_dir; returns the exported model folder.

    max_steps: stop after this many steps in this call (the run's length stays train.total_steps).
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, gather_object

    precision_note = resolve_mixed_precision(config)  # before the checks: they check what will run
    augment = check_run_settings(config)
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    out_dir = Path(out_dir)
    # A process that dies ends the run through the launcher; one that hangs, through this timeout.
    accelerator = Accelerator(mixed_precision=t.mixed_precision, project_dir=str(out_dir),
                              log_with=None if t.tracker == "none" else t.tracker,  # metrics go through its trackers
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=t.dist_timeout_s))])
    device, is_main = accelerator.device, accelerator.is_main_process
    if precision_note:
        accelerator.print(precision_note)
    fast_gpu_math(device)

    # Everything that can fail on bad input fails here, before the first step.
    dataset = build_dataset(config.data)
    if resolve_color(config, dataset) == "grayscale":
        accelerator.print("model.color=auto: every image checked is grey, so the generator draws grey images")
    if text_encoder is None:
        text_encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length,
                                         trust_remote_code=config.text.trust_remote_code)
    text_encoder = text_encoder.to(device)
    text_cache = TextEmbeddingCache(text_encoder, data_cache_dir(config.data))
    grid_prompts, grid_attrs = sample_conditions(config, dataset)

    torch.manual_seed(t.seed)  # identical initial weights on every process
    G = Generator(schema=dataset.schema, **generator_kwargs(config, text_encoder.dim))
    D = build_discriminator(config, dataset.schema, text_encoder.dim)
    G_ema = Generator(schema=dataset.schema, **generator_kwargs(config, text_encoder.dim)).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    for module in (G, D, G_ema):
        module.to(device, memory_format=memory_format)
    # train.compile: compiled views of G and D (same weights) for the D and G phases; R1 keeps the eager
    # D (compiled graphs have no double backward); optimizers and checkpoints use G and D themselves.
    G_run, D_run = (torch.compile(G), torch.compile(D)) if t.compile else (G, D)
    # fused: its found_inf lets a non-finite step be skipped on the device (skip_if_nonfinite)
    opt_G = torch.optim.Adam(G.parameters(), lr=t.lr_g, betas=tuple(t.betas), eps=1e-8, fused=True)
    opt_D = torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=tuple(t.betas), eps=1e-8, fused=True)
    num_params = sum(p.numel() for m in (G, D, G_ema) for p in m.parameters())
    checkpoint_bytes = num_params * 4 * 3 + 2 ** 20  # weights + 2 Adam moments
    if is_main:
        check_output_dir(out_dir, bytes_needed=checkpoint_bytes)
        for line in remove_stale_temporaries(out_dir):  # before anything of this run is written
            accelerator.print(line)
    with accelerator.main_process_first():  # main encodes and writes the disk caches, the others read them
        text_cache.precompute(dataset.all_captions() + grid_prompts)
        arrays = cached_arrays(dataset, data_cache_dir(config.data)) if config.data.image_cache else None
    table = CaptionTable(arrays.captions, text_cache, device) if arrays is not None else None
    vocabulary = build_vocabulary(dataset.all_captions())  # exported beside the model: prompts' unknown words
    opt_G, opt_D = accelerator.prepare(opt_G, opt_D)  # device placement and the fp16 grad scaler
    modules = {"G": G, "D": D, "G_ema": G_ema}
    optimizers = {"opt_G": opt_G, "opt_D": opt_D}
    scalers = phase_scalers(accelerator, PHASES)  # fp16: one grad scaler per phase
    optimizers.update({f"scaler_{name}": scaler for name, scaler in scalers.items()})

    step, images_seen, lr_scale, seconds_before = 0, 0, 1.0, 0.0
    resume_path = resolve_resume(out_dir, resume)
    if resume_path is not None:
        check_same_model(out_dir, config)
        state = restore_training_state(resume_path, modules, optimizers, config, accelerator)
        step, images_seen, lr_scale = state["step"], state["images_seen"], state["lr_scale"]
        seconds_before = float(state.get("train_seconds", 0.0))
        accelerator.print(f"resumed from {resume_path} at step {step} ({images_seen} images seen)"
                          + (f", learning rates x{lr_scale:.3g} after earlier rollbacks" if lr_scale != 1 else ""))
        if accelerator.num_processes > 1:
            steps = gather_object([step])
            if len(set(steps)) > 1:
                raise CheckpointError(f"processes resumed at different steps {steps} from {resume_path}")
            accelerator.print(f"all {accelerator.num_processes} processes resumed at step {step}")
    else:
        if resume == "latest":
            accelerator.print(f"--resume latest: no checkpoint in {out_dir}/checkpoints yet, starting fresh")
        if t.init_from:
            from cgan.warm_start import warm_start

            accelerator.print(warm_start(t.init_from, G, G_ema, D))
        torch.manual_seed(t.seed + 1 + accelerator.process_index)  # per-process noise, dropout and mismatches
    loader = make_loader(dataset, config, step, accelerator, arrays)

    accelerator.init_trackers("logs")  # TensorBoard: OUT/logs; W&B and MLflow: their own runs (main process)
    if is_main:
        save_config(config, out_dir / "config.yaml")
        accelerator.print(f"G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M parameters, "
                          f"D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M; {len(dataset)} training images; "
                          f"{accelerator.num_processes} process(es) on {device}")

    stopper = StopControl(t.max_minutes, t.checkpoint_minutes)
    started = time.perf_counter()

    def checkpoint(at_step: int) -> None:
        stopper.checkpointed()
        rng_states = gather_object([rng_state()])
        if is_main:
            check_free_space(out_dir, checkpoint_bytes)
            train_seconds = seconds_before + time.perf_counter() - started
            save_training_state(out_dir, step=at_step, images_seen=images_seen, modules=modules,
                                optimizers=optimizers, rng_states=rng_states, keep_last=t.keep_last,
                                extra={"lr_scale": lr_scale, "train_seconds": train_seconds})
            card = run_model_card(config, dataset, G_ema, step=at_step, images_seen=images_seen, out_dir=out_dir,
                              device=device, num_processes=accelerator.num_processes, train_seconds=train_seconds)
            export_model(out_dir / "model", G_ema=G_ema, generator_kwargs=generator_kwargs(config, text_encoder.dim),
                         schema_dict=dataset.schema.to_dict(),
                         text_encoder={"name": text_encoder.name, "max_length": text_encoder.max_length},
                         config_dict=config.to_dict(), step=at_step, images_seen=images_seen, model_card=card,
                         D=D if t.export_d else None, vocabulary=vocabulary)
        accelerator.wait_for_everyone()

    evaluator = Evaluator(config, dataset, text_encoder, text_cache, device)
    last_step = t.total_steps if max_steps is None else min(t.total_steps, step + max_steps)
    global_batch = t.batch_size * t.grad_accum * accelerator.num_processes
    from tqdm.auto import tqdm

    progress = tqdm(total=last_step, initial=step, disable=not is_main, unit="step", dynamic_ncols=True,
                    file=sys.stdout)
    sums: dict[str, list[torch.Tensor]] = {}
    window_start, window_images, window_skipped = time.perf_counter(), 0, 0
    guard, rollbacks = NonfiniteGuard(t.nonfinite_patience), 0  # skipped phases; rollbacks in this call

    def warn_skipped(at_step: int, skipped: list[str], streak: int) -> None:
        if is_main:
            progress.write(f"warning: step {at_step}: NaN or inf loss or gradient in {', '.join(skipped)}; "
                           f"optimizer step skipped ({streak} step(s) in a row, rollback at {t.nonfinite_patience})")

    stop_reason = None
    with stopper:  # SIGINT / SIGTERM end the loop cleanly while it runs
        while step < last_step:
            batches = [to_device_batch(next(loader), text_cache, config, device, memory_format, table)
                       for _ in range(t.grad_accum)]
            # The GAN phases as data: (what trains, what is frozen, its optimizer, the step function).
            phases = [(D, G, opt_D, d_step)]
            if step % t.r1_every == 0 and t.r1_gamma > 0:
                phases.append((D, G, opt_D, r1_step))
            train_G = step >= t.d_warmup_steps  # a fresh D learns alone first (train.d_warmup_steps)
            if train_G:
                phases.append((G, D, opt_G, g_step))
            stats: dict[str, torch.Tensor] = {}
            flags: dict[str, torch.Tensor] = {}  # phase name -> 1.0 if skipped as non-finite, on the device
            for trained, frozen, optimizer, step_fn in phases:
                use_scaler(accelerator, optimizer, scalers.get(step_fn.__name__))
                phase_stats, flags[step_fn.__name__] = run_phase(step_fn, trained, frozen, optimizer, batches, G_run,
                                                                 D if step_fn is r1_step else D_run, config,
                                                                 accelerator, augment)
                stats.update(phase_stats)
            images_seen += global_batch
            if train_G:
                update_ema(G_ema, G, ema_beta(global_batch, images_seen, t.ema_kimg, t.ema_rampup))
            step += 1
            window_images += global_batch
            progress.update(1)
            for key, value in stats.items():
                sums.setdefault(key, []).append(value)

            guard.record(step, flags)
            logging_step = step % t.log_every == 0 or step == last_step
            time_checkpoint = False
            if logging_step or accelerator.num_processes == 1:  # several processes decide together, at syncs
                stop_reason, time_checkpoint = stopper.poll(accelerator)
                if stop_reason is not None:
                    last_step = step  # this step is the last: it logs, samples, checkpoints and exports
                    logging_step = True
            checkpoint_step = step % t.checkpoint_every == 0 or step == last_step or time_checkpoint
            if logging_step or checkpoint_step:  # the guard's flags are read here only: no host sync per step
                num_skipped, diverged_at = guard.check(warn_skipped)
                window_skipped += num_skipped
                if diverged_at is not None:
                    state = roll_back(out_dir, modules, optimizers, config, accelerator, step=diverged_at,
                                      streak=guard.streak, rollbacks=rollbacks, lr_scale=lr_scale)
                    rollbacks += 1
                    guard.reset()
                    step, images_seen, lr_scale = state["step"], state["images_seen"], state["lr_scale"]
                    loader = make_loader(dataset, config, step, accelerator, arrays)
                    progress.n = step
                    progress.refresh()
                    if is_main:
                        with (out_dir / "metrics.jsonl").open("a") as handle:
                            handle.write(json.dumps({"step": step, "images_seen": images_seen, "rollback": rollbacks,
                                                     "lr_g": t.lr_g * lr_scale, "lr_d": t.lr_d * lr_scale}) + "\n")
                    sums, window_start, window_images, window_skipped = {}, time.perf_counter(), 0, 0
                    continue

            if logging_step:  # the loop's host syncs: the guard's flags above, the losses here
                elapsed = time.perf_counter() - window_start
                means = {k: float(torch.stack(v).mean()) for k, v in sums.items()}
                means["speed/images_per_s"] = window_images / max(elapsed, 1e-9)
                means["nonfinite/skipped"] = window_skipped  # phases skipped in this window
                if is_main:
                    progress.set_postfix({"img/s": f"{means['speed/images_per_s']:.1f}",
                                          "D": f"{means['loss/D']:.3f}",
                                          "G": f"{means['loss/G']:.3f}" if "loss/G" in means else "warm-up"})
                    accelerator.log(means, step=step)
                    with (out_dir / "metrics.jsonl").open("a") as handle:
                        handle.write(json.dumps({"step": step, "images_seen": images_seen, **means}) + "\n")
                sums, window_start, window_images, window_skipped = {}, time.perf_counter(), 0, 0
            if is_main and evaluator.due(step) and step >= t.d_warmup_steps:  # not while G stands still
                metrics = evaluator(G_ema, step)
                accelerator.log(metrics, step=step)
                with (out_dir / "metrics.jsonl").open("a") as handle:
                    handle.write(json.dumps({"step": step, "images_seen": images_seen, **metrics}) + "\n")
            if is_main and (step % t.sample_every == 0 or step == last_step):
                save_sample_grid(out_dir / "samples" / f"step_{step:08d}.png", G_ema, text_cache, dataset,
                                 grid_prompts, grid_attrs, config, device)
            if (checkpoint_step and guard.streak == 0) or step == last_step:  # not a state that fails
                checkpoint(step)
    progress.close()
    if stop_reason is not None:
        accelerator.print(f"stopped at step {step} ({stop_reason}): checkpoint {out_dir / 'checkpoints'}, model "
                          f"{out_dir / 'model'}; continue with the same command and --resume latest")
    if accelerator.num_processes > 1:  # the manual gradient all-reduce must keep every replica identical
        checksums = gather_object([[float(sum(p.detach().double().sum() for p in m.parameters()))
                                     for m in (G, D, G_ema)]])
        if any(c != checksums[0] for c in checksums):
            raise RuntimeError(f"processes diverged: weight checksums {checksums}")
        accelerator.print(f"weights identical on all {accelerator.num_processes} processes")
    accelerator.wait_for_everyone()
    accelerator.print(f"exported model: {out_dir / 'model'}")
    accelerator.end_training()  # last: it also ends the process group the checks above use
    return out_dir / "model"

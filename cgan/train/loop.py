"""The training loop: `train` builds the run (cgan/train/build.py), steps it (`train_step`, the phase
functions of cgan/train/steps.py) and hands metrics, evaluation, grids and checkpoints to its hooks
(cgan/train/hooks.py).

Multi-process: Accelerate launches the processes, places the models, runs mixed precision
and the fp16 grad scalers (one per phase, cgan/train/precision.py). Gradients are averaged across
processes by `steps.sync_gradients`.
All processes start from the same seed, so weights stay identical; only the main process writes.

Reliability (cgan/train/recovery.py): a phase whose loss or gradient is NaN or inf skips its optimizer
step on the device; the flags are read at logging and checkpoint steps, never per step. After
train.nonfinite_patience such steps in a row the run rolls back to the newest complete checkpoint
with lower learning rates, or stops with `TrainingDiverged`. Leftovers of a killed run are cleared at start.
"""
from __future__ import annotations

from functools import partial, update_wrapper
from pathlib import Path

import torch

from cgan.condition.text_encoder import FrozenTextEncoder
from cgan.core.config import Config
from cgan.train.build import Run, build_run, g_trained, make_loader
from cgan.train.ema import ema_beta, update_ema
from cgan.train.hooks import Hooks
from cgan.train.microbatch import Batch, to_device_batch
from cgan.train.precision import use_scaler
from cgan.train.steps import d_step, g_step, r1_step, run_phase
from cgan.train.terms import late_weights, needs_negatives


def train(config: Config, out_dir: str | Path, resume: str | None = None, max_steps: int | None = None,
          text_encoder: FrozenTextEncoder | None = None) -> Path:
    """Train (or continue) a run in out_dir; returns the exported model folder.

    max_steps: stop after this many steps in this call (the run's length stays train.total_steps).
    """
    run = build_run(config, out_dir, resume, text_encoder)
    t = config.train
    hooks = Hooks(run, t.total_steps if max_steps is None else min(t.total_steps, run.step + max_steps))
    loader = make_loader(run.dataset, config, run.step, run.accelerator, run.arrays)
    negatives = needs_negatives(config)
    with hooks.stopper:  # SIGINT / SIGTERM end the loop cleanly while it runs
        while run.step < hooks.last_step:
            batches = [to_device_batch(next(loader), run.text_cache, config, run.accelerator.device,
                                       run.memory_format, negatives, run.table) for _ in range(t.grad_accum)]
            stats, flags = train_step(run, batches)
            if hooks.after_step(stats, flags):  # rolled back to a checkpoint: the data order follows
                loader = make_loader(run.dataset, config, run.step, run.accelerator, run.arrays)
    hooks.close()
    finish(run, hooks.stop_reason)
    return run.out_dir / "model"


def train_step(run: Run, batches: list[Batch]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One optimizer step of each phase over the micro-batches, then G_ema; advances run.step.

    -> (the phases' statistics, on the device; phase name -> 1.0 if skipped as non-finite, on the device).
    """
    t = run.config.train
    config = late_weights(run.config, run.images_seen)  # loss.late_kimg: the late weights of some terms
    # The GAN phases as data: (what trains, what is frozen, its optimizer, the step function).
    phases = [(run.D, run.G, run.opt_D, d_step)]
    if run.step % t.r1_every == 0 and t.r1_gamma > 0:
        phases.append((run.D, run.G, run.opt_D, r1_step))
    train_G = run.step >= t.d_warmup_steps  # a fresh D learns alone first (train.d_warmup_steps)
    if train_G:  # loss.anchor: g_step also draws the frozen starting G's images of the same latents
        g_phase = g_step if run.G_anchor is None else update_wrapper(partial(g_step, G_anchor=run.G_anchor), g_step)
        phases.append((g_trained(run.G, t), run.D, run.opt_G, g_phase))  # train.g_params: G or its refiner
    stats: dict[str, torch.Tensor] = {}
    flags: dict[str, torch.Tensor] = {}
    for trained, frozen, optimizer, step_fn in phases:
        use_scaler(run.accelerator, optimizer, (run.scalers or {}).get(step_fn.__name__))  # fp16: the phase's own
        D = run.D if step_fn is r1_step else run.D_run  # R1's double backward needs the eager D
        phase_stats, flags[step_fn.__name__] = run_phase(step_fn, trained, frozen, optimizer, batches, run.G_run, D,
                                                         config, run.accelerator, run.augment)
        stats.update(phase_stats)
    run.images_seen += run.global_batch
    if train_G:
        update_ema(run.G_ema, run.G, ema_beta(run.global_batch, run.images_seen, t.ema_kimg, t.ema_rampup))
    run.step += 1
    return stats, flags


def finish(run: Run, stop_reason: str | None) -> None:
    """The end of an invocation: why it stopped, the replicas' agreement, the trackers closed."""
    from accelerate.utils import gather_object

    accelerator, out_dir = run.accelerator, run.out_dir
    if stop_reason is not None:
        accelerator.print(f"stopped at step {run.step} ({stop_reason}): checkpoint {out_dir / 'checkpoints'}, model "
                          f"{out_dir / 'model'}; continue with the same command and --resume latest")
    if accelerator.num_processes > 1:  # the manual gradient all-reduce must keep every replica identical
        checksums = gather_object([[float(sum(p.detach().double().sum() for p in m.parameters()))
                                     for m in (run.G, run.D, run.G_ema)]])
        if any(c != checksums[0] for c in checksums):
            raise RuntimeError(f"processes diverged: weight checksums {checksums}")
        accelerator.print(f"weights identical on all {accelerator.num_processes} processes")
    accelerator.wait_for_everyone()
    accelerator.print(f"exported model: {out_dir / 'model'}")
    accelerator.end_training()  # last: it also ends the process group the checks above use

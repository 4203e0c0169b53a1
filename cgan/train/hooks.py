"""What happens between training steps: metrics, evaluation, progress grids, checkpoints, rollbacks.

`Hooks.after_step` runs after every step of the loop (cgan/train/loop.py). Metrics are written in one
place, `MetricsLog.write` (OUT/metrics.jsonl and Accelerate's trackers, main process only). The loop's
host syncs are here, at logging and checkpoint steps only: the non-finite guard's flags and the losses.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cgan.condition.attribute_prior import dataset_prior
from cgan.core.config import Config
from cgan.core.images import describe_condition, image_grid, save_image, tensor_to_images
from cgan.eval.evaluation import Evaluator
from cgan.nets.export import export_model
from cgan.nets.factory import generator_kwargs
from cgan.nets.sampling import generate
from cgan.train.build import Run
from cgan.train.checkpoint import save_training_state
from cgan.train.model_card import run_model_card
from cgan.train.recovery import NonfiniteGuard, StopControl, check_free_space, rng_state, roll_back


class MetricsLog:
    """The one writer of metrics: a JSON line per write in OUT/metrics.jsonl (with the step and images
    seen) and, with track, Accelerate's trackers (TensorBoard, W&B, MLflow). Main process only."""

    def __init__(self, run: Run):
        self.run = run

    def write(self, values: dict[str, Any], *, track: bool = True) -> None:
        run = self.run
        if not run.accelerator.is_main_process:
            return
        if track:
            run.accelerator.log(values, step=run.step)
        with (run.out_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps({"step": run.step, "images_seen": run.images_seen, **values}) + "\n")


class LossWindow:
    """The phases' statistics between two logging steps, kept on the device until they are read."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.start, self.images, self.skipped = time.perf_counter(), 0, 0

    def add(self, stats: dict[str, torch.Tensor], images: int) -> None:
        self.images += images
        for key, value in stats.items():
            self.sums.setdefault(key, []).append(value)

    def means(self) -> dict[str, float]:
        """The means (a host sync), the speed in images/s, and the phases skipped as non-finite."""
        means = {k: float(torch.stack(v).mean()) for k, v in self.sums.items()}
        means["speed/images_per_s"] = self.images / max(time.perf_counter() - self.start, 1e-9)
        means["nonfinite/skipped"] = self.skipped  # phases skipped in this window
        return means


def save_sample_grid(path: Path, G, text_cache, dataset, prompts, attrs, config: Config, device) -> None:
    num = config.sample.num_per_prompt
    seeds = [config.sample.seed + k for _ in prompts for k in range(num)]
    images = generate(G, text_cache, dataset.schema, [p for p in prompts for _ in range(num)],
                      [a for a in attrs for _ in range(num)], seeds, config.sample.truncation, device)
    labels = [describe_condition(p, a) for p, a in zip(prompts, attrs)]
    save_image(path, image_grid(tensor_to_images(images), num, labels))


def save_checkpoint(run: Run, started: float) -> None:
    """A training state (every process's RNG included) and the exported model with its card."""
    from accelerate.utils import gather_object

    config, t, accelerator = run.config, run.config.train, run.accelerator
    rng_states = gather_object([rng_state()])
    if accelerator.is_main_process:
        check_free_space(run.out_dir, run.checkpoint_bytes)
        train_seconds = run.seconds_before + time.perf_counter() - started
        save_training_state(run.out_dir, step=run.step, images_seen=run.images_seen, modules=run.modules,
                            optimizers=run.optimizers, rng_states=rng_states, keep_last=t.keep_last,
                            extra={"lr_scale": run.lr_scale, "train_seconds": train_seconds})
        card = run_model_card(config, run.dataset, run.G_ema, step=run.step, images_seen=run.images_seen,
                              out_dir=run.out_dir, device=accelerator.device,
                              num_processes=accelerator.num_processes, train_seconds=train_seconds)
        encoder = run.text_encoder
        export_model(run.out_dir / "model", G_ema=run.G_ema,
                     generator_kwargs=generator_kwargs(config.model, text_dim=encoder.dim,
                                                       resolution=config.data.resolution),
                     schema_dict=run.dataset.schema.to_dict(),
                     text_encoder={"name": encoder.name, "max_length": encoder.max_length},
                     config_dict=config.to_dict(), step=run.step, images_seen=run.images_seen, model_card=card,
                     D=run.D if t.export_d else None, vocabulary=run.vocabulary,
                     attribute_prior=dataset_prior(run.dataset))
    accelerator.wait_for_everyone()


class Hooks:
    """After each step: stop requests, the non-finite guard (and rollbacks), metrics, evaluation, the
    progress grid and checkpoints, each at its own interval. last_step moves earlier on a stop request."""

    def __init__(self, run: Run, last_step: int):
        from tqdm.auto import tqdm

        t = run.config.train
        self.run, self.last_step = run, last_step
        self.stopper = StopControl(t.max_minutes, t.checkpoint_minutes)  # SIGINT / SIGTERM end the loop cleanly
        self.started = time.perf_counter()
        self.metrics, self.window = MetricsLog(run), LossWindow()
        self.evaluator = Evaluator(run.config, run.dataset, run.text_encoder, run.text_cache, run.accelerator.device)
        self.guard, self.rollbacks = NonfiniteGuard(t.nonfinite_patience), 0  # rollbacks in this call
        self.stop_reason: str | None = None
        self.progress = tqdm(total=last_step, initial=run.step, disable=not run.accelerator.is_main_process,
                             unit="step", dynamic_ncols=True, file=sys.stdout)

    def after_step(self, stats: dict[str, torch.Tensor], flags: dict[str, torch.Tensor]) -> bool:
        """-> True when the run rolled back to a checkpoint (the loop then restarts its data from run.step)."""
        run, t = self.run, self.run.config.train
        self.progress.update(1)
        self.window.add(stats, run.global_batch)
        self.guard.record(run.step, flags)
        logging_step = run.step % t.log_every == 0 or run.step == self.last_step
        time_checkpoint = False
        if logging_step or run.accelerator.num_processes == 1:  # several processes decide together, at syncs
            self.stop_reason, time_checkpoint = self.stopper.poll(run.accelerator)
            if self.stop_reason is not None:
                self.last_step = run.step  # this step is the last: it logs, samples, checkpoints and exports
                logging_step = True
        checkpoint_step = run.step % t.checkpoint_every == 0 or run.step == self.last_step or time_checkpoint
        if (logging_step or checkpoint_step) and self.check_guard():  # the guard's flags are read here only
            return True
        if logging_step:
            self.log()
        if run.accelerator.is_main_process and self.evaluator.due(run.step) and run.step >= t.d_warmup_steps:
            self.metrics.write(self.evaluator(run.G_ema, run.step))  # not while G stands still (D warm-up)
        if run.accelerator.is_main_process and (run.step % t.sample_every == 0 or run.step == self.last_step):
            save_sample_grid(run.out_dir / "samples" / f"step_{run.step:08d}.png", run.G_ema, run.text_cache,
                             run.dataset, *run.grid, run.config, run.accelerator.device)
        if (checkpoint_step and self.guard.streak == 0) or run.step == self.last_step:  # not a state that fails
            self.stopper.checkpointed()
            save_checkpoint(run, self.started)
        return False

    def check_guard(self) -> bool:
        """Read the non-finite flags; after train.nonfinite_patience skipped steps in a row, roll back."""
        run, t = self.run, self.run.config.train
        num_skipped, diverged_at = self.guard.check(self.warn_skipped)
        self.window.skipped += num_skipped
        if diverged_at is None:
            return False
        state = roll_back(run.out_dir, run.modules, run.optimizers, run.config, run.accelerator, step=diverged_at,
                          streak=self.guard.streak, rollbacks=self.rollbacks, lr_scale=run.lr_scale)
        self.rollbacks += 1
        self.guard.reset()
        run.step, run.images_seen, run.lr_scale = state["step"], state["images_seen"], state["lr_scale"]
        self.progress.n = run.step
        self.progress.refresh()
        self.metrics.write({"rollback": self.rollbacks, "lr_g": t.lr_g * run.lr_scale, "lr_d": t.lr_d * run.lr_scale},
                           track=False)
        self.window.reset()
        return True

    def warn_skipped(self, at_step: int, skipped: list[str], streak: int) -> None:
        if self.run.accelerator.is_main_process:
            self.progress.write(f"warning: step {at_step}: NaN or inf loss or gradient in {', '.join(skipped)}; "
                                f"optimizer step skipped ({streak} step(s) in a row, rollback at "
                                f"{self.run.config.train.nonfinite_patience})")

    def log(self) -> None:
        """The window's means to the metrics, and a summary beside the progress bar."""
        means = self.window.means()
        if self.run.accelerator.is_main_process:
            self.progress.set_postfix({"img/s": f"{means['speed/images_per_s']:.1f}", "D": f"{means['loss/D']:.3f}",
                                       "G": f"{means['loss/G']:.3f}" if "loss/G" in means else "warm-up"})
        self.metrics.write(means)
        self.window.reset()

    def close(self) -> None:
        self.progress.close()

"""Keeping a run alive and recoverable: the non-finite guard, rollback to a checkpoint, restoring a
state (weights, optimizers, RNG, learning rates), and the output-folder and free-space checks.

A phase whose loss or gradient is NaN or inf skips its optimizer step on the device
(`skip_if_nonfinite`); after train.nonfinite_patience such steps in a row `roll_back` reloads the
newest complete checkpoint with lower learning rates, or raises `TrainingDiverged`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cgan.train.checkpoint import list_checkpoints, load_training_state
from cgan.core.config import Config, ConfigError
from cgan.train.terms import terms_with_heads
from cgan.core.config import load_config


class TrainingDiverged(RuntimeError):
    """Losses or gradients stayed NaN/inf through every rollback allowed, or there was no checkpoint."""


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states (CPU, and CUDA where used): noise, dropout and mismatches draw from them."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def skip_if_nonfinite(trained: torch.nn.Module, optimizer, stats: dict[str, torch.Tensor], accelerator
                      ) -> torch.Tensor:
    """Make the coming optimizer.step() a no-op if a loss or gradient of this phase is NaN or inf.

    -> a 0-dim float on the device, 1.0 = skipped, the same on every process; no host sync. The skip
    is fused Adam's `found_inf` (as the fp16 grad scaler uses it): weights, moments and the step count
    stay as they were. Gradients are averaged over processes already, losses are not, hence the
    max-reduce. Under fp16 the grad scaler owns gradient overflow (routine there; it skips those steps
    itself), so only the losses are checked.
    """
    values = [v.float().reshape(1) for v in stats.values()]
    grads = [p.grad for p in trained.parameters() if p.grad is not None]
    if accelerator.scaler is None and grads:
        values += [norm.float().reshape(1) for norm in torch._foreach_norm(grads, math.inf)]  # max |g|, NaN kept
    bad = (~torch.isfinite(torch.cat(values)).all()).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="max")
    if accelerator.scaler is None:
        getattr(optimizer, "optimizer", optimizer).found_inf = bad  # the Adam inside Accelerate's wrapper
    return bad


PHASES = ("d_step", "r1_step", "g_step")


class NonfiniteGuard:
    """Which phases were skipped as non-finite, step by step, without a host sync per step.

    Each step's flags (from skip_if_nonfinite) stay on the device; `check` reads all the pending ones
    at once, which the loop does only at logging and checkpoint steps. The skips themselves happen on
    the device at once; only the warnings and a rollback wait for the next check.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.streak = 0  # steps in a row with a skipped phase, up to the last check
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, flags (3,) in PHASES order) not yet read

    def record(self, step: int, flags: dict[str, torch.Tensor]) -> None:
        zero = torch.zeros_like(next(iter(flags.values())))
        self.pending.append((step, torch.stack([flags.get(name, zero) for name in PHASES])))

    def check(self, warn: Callable[[int, list[str], int], None]) -> tuple[int, int | None]:
        """Read the pending flags (one host sync), calling warn(step, skipped phases, streak) per bad step.

        -> (phases skipped, the step at which the streak reached train.nonfinite_patience, or None).
        """
        if not self.pending:
            return 0, None
        steps = [step for step, _ in self.pending]
        rows = torch.stack([flags for _, flags in self.pending]).tolist()  # (steps, 3)
        self.pending = []
        num_skipped = 0
        for step, row in zip(steps, rows):
            skipped = [name for name, bad in zip(PHASES, row) if bad]
            self.streak = self.streak + 1 if skipped else 0
            num_skipped += len(skipped)
            if skipped:
                warn(step, skipped, self.streak)
            if self.streak >= self.patience:
                return num_skipped, step
        return num_skipped, None

    def reset(self) -> None:
        self.streak, self.pending = 0, []


def restore_training_state(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, Any],
                           config: Config, accelerator, lr_scale: float | None = None) -> dict[str, Any]:
    """Load a state into the models and optimizers, this process's RNG, and the learning rates.

    The learning rates are the config's times lr_scale (default: the state's own, lowered by earlier
    rollbacks), so a lower train.lr_g given at --resume takes effect. -> state.json with lr_scale.
    """
    state, rng_states = load_training_state(path, modules=modules, optimizers=optimizers)
    if len(rng_states) == accelerator.num_processes:
        set_rng_state(rng_states[accelerator.process_index])
    else:
        torch.manual_seed(config.train.seed + 1 + state["step"] * accelerator.num_processes
                          + accelerator.process_index)
    state["lr_scale"] = state.get("lr_scale", 1.0) if lr_scale is None else lr_scale
    for name, lr in (("opt_G", config.train.lr_g), ("opt_D", config.train.lr_d)):
        for group in optimizers[name].param_groups:
            group["lr"] = lr * state["lr_scale"]
    return state


def roll_back(out_dir: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, Any], config: Config,
              accelerator, *, step: int, streak: int, rollbacks: int, lr_scale: float) -> dict[str, Any]:
    """After `streak` skipped steps in a row: the newest complete checkpoint with lower learning rates.

    Raises TrainingDiverged when train.max_rollbacks are used up or there is no checkpoint.
    """
    t = config.train
    states = list_checkpoints(out_dir)
    if rollbacks >= t.max_rollbacks or not states:
        why = (f"after {rollbacks} rollback(s) (train.max_rollbacks={t.max_rollbacks})" if states else
               f"and there is no complete checkpoint in {out_dir / 'checkpoints'} to roll back to")
        raise TrainingDiverged(
            f"training stopped at step {step}: {streak} step(s) in a row had a NaN or inf loss or gradient, {why}. "
            f"Try lower learning rates (train.lr_g={t.lr_g * lr_scale:.3g} and train.lr_d={t.lr_d * lr_scale:.3g} "
            "now), train.mixed_precision=no, or check the data (python -m cgan.data check DIR); then continue "
            "with --resume latest")
    state = restore_training_state(states[-1], modules, optimizers, config, accelerator,
                                   lr_scale=lr_scale * t.rollback_lr_factor)
    accelerator.print(f"warning: {streak} step(s) in a row up to step {step} were skipped (NaN or inf); rolled back "
                      f"to {states[-1]} (step {state['step']}), learning rates x{state['lr_scale']:.3g}: "
                      f"lr_g {t.lr_g * state['lr_scale']:.3g}, lr_d {t.lr_d * state['lr_scale']:.3g} "
                      f"(rollback {rollbacks + 1} of at most {t.max_rollbacks})")
    return state


def flat_settings(section: Any, prefix: str) -> dict[str, Any]:
    """A (nested) config dataclass -> {"prefix.a.b": value}."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flat_settings(value, f"{prefix}.{f.name}"))
        else:
            flat[f"{prefix}.{f.name}"] = value
    return flat


def check_same_model(out_dir: Path, config: Config) -> None:
    """At --resume: the model section must be the run's own. Some changes (model.discriminator.pool_first,
    the attention resolutions' heads) keep every weight's shape, so loading would succeed and quietly
    train another architecture. A run's config.yaml from before the nested model section is translated."""
    saved_path = out_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved_config = load_config(saved_path)
    saved = flat_settings(saved_config.model, "model")
    if saved["model.generator.color"] == "auto":  # runs from before model.color was resolved at the start drew rgb
        saved["model.generator.color"] = "rgb"
    changed = [f"{key}={saved[key]!r} (now {value!r})" for key, value in flat_settings(config.model, "model").items()
               if saved.get(key) != value]
    # a loss term turned on or off adds or removes D's heads for it; its weight may change
    changed += [f"loss.{key}={getattr(saved_config.loss, key)!r} (now {getattr(config.loss, key)!r}; a term cannot "
                "be turned on or off)" for key in terms_with_heads()
                if (getattr(saved_config.loss, key) > 0) != (getattr(config.loss, key) > 0)]
    if saved_config.train.g_params != config.train.g_params:  # G's optimizer holds the moments of what it trains
        changed.append(f"train.g_params={saved_config.train.g_params!r} (now {config.train.g_params!r})")
    if changed:
        raise ConfigError(f"{saved_path}: this run was trained with {', '.join(changed)}; the model cannot "
                          "change at --resume. Use the run's own model settings, or start a new --out")


def check_output_dir(out_dir: Path, bytes_needed: int) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--out {out_dir}: not writable ({err.strerror or err})") from err
    check_free_space(out_dir, bytes_needed)


def check_free_space(out_dir: Path, bytes_needed: int) -> None:
    """Checked at start and before every checkpoint, so a full disk stops the run before a write fails."""
    free = shutil.disk_usage(out_dir).free
    if free < bytes_needed:
        newest = list_checkpoints(out_dir)
        kept = f"; the newest complete state is {newest[-1]}, continue with --resume latest" if newest else ""
        raise ConfigError(f"--out {out_dir}: {free / 2**20:.0f} MiB free, but a checkpoint and an exported "
                          f"model need about {bytes_needed / 2**20:.0f} MiB{kept}")


class StopControl:
    """Ends a run cleanly: on SIGINT or SIGTERM, or at the wall-clock budget train.max_minutes, the loop
    finishes its step, writes a checkpoint and the exported model and returns. A second SIGINT stops at
    once (KeyboardInterrupt); every checkpoint already written is complete. It also says when
    train.checkpoint_minutes have passed since the last checkpoint.

    With several processes the decision is taken on all of them together (an all-reduce of two flags),
    at the steps where the loop already synchronises; with one process, at every step, at no cost.
    """

    def __init__(self, max_minutes: float, checkpoint_minutes: float):
        self.max_seconds, self.checkpoint_seconds = max_minutes * 60, checkpoint_minutes * 60
        self.start = self.last_checkpoint = time.monotonic()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopControl":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: now
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this step, then saving a checkpoint and the model "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def poll(self, accelerator) -> tuple[str | None, bool]:
        """-> (why to stop now or None, whether a time-based checkpoint is due), the same on every process."""
        now = time.monotonic()
        stop = self.signal_name is not None or (self.max_seconds > 0 and now - self.start >= self.max_seconds)
        due = self.checkpoint_seconds > 0 and now - self.last_checkpoint >= self.checkpoint_seconds
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(torch.tensor([float(stop), float(due)], device=accelerator.device), "max")
            stop, due = bool(flags[0] > 0), bool(flags[1] > 0)
        if not stop:
            return None, due
        return (self.signal_name or f"time budget train.max_minutes={self.max_seconds / 60:g}"), due

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()

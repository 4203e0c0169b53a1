"""Precision and speed settings of a run on its device: which mixed precision wins (the config or the
launcher), one fp16 grad scaler per training phase, and the GPU's fast-math switches."""
from __future__ import annotations

import copy
import os

import torch

from cgan.core.config import Config
from cgan.core.errors import ConfigError

PRECISIONS = ("no", "bf16", "fp16")


def resolve_mixed_precision(config: Config, environ: dict[str, str] | None = None) -> str | None:
    """Settle train.mixed_precision against `accelerate launch --mixed_precision` (which reaches the process
    as ACCELERATE_MIXED_PRECISION) in the config, so the run's config and model card hold what ran.

    The launcher's bf16 or fp16 wins over the config's "no" (configs/*.yaml write "no" for CPUs; a GPU
    launch line that asks for bf16 must get it); "no" from the launcher is its default and changes nothing;
    two different low precisions are refused. -> a line for the log when the launcher's value was taken."""
    environ = os.environ if environ is None else environ
    launcher = environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    configured = config.train.mixed_precision
    if launcher in ("", "no") or launcher == configured:
        return None
    if launcher not in PRECISIONS:
        raise ConfigError(f"accelerate launch --mixed_precision {launcher}: cgan trains in one of "
                          f"{', '.join(PRECISIONS)}")
    if configured != "no":
        raise ConfigError(f"train.mixed_precision={configured}, but accelerate launch asks for --mixed_precision "
                          f"{launcher}: give the same value to both, or leave one out")
    config.train.mixed_precision = launcher
    return f"train.mixed_precision={launcher}: from accelerate launch --mixed_precision (the config said no)"


def phase_scalers(accelerator, phases: tuple[str, ...]) -> dict[str, object]:
    """fp16: one grad scaler per phase (D, R1, G), each a fresh copy of Accelerate's; {} otherwise.

    One shared scaler would let D's overflow lower G's scale, and advance its growth interval two or
    three times per step. The R1 phase runs in fp32 with its own gradient magnitudes."""
    if accelerator.scaler is None:
        return {}
    return {name: copy.deepcopy(accelerator.scaler) for name in phases}


def use_scaler(accelerator, optimizer, scaler) -> None:
    """Make `scaler` the one that scales this phase's backward (accelerator.backward) and unscales and
    steps its optimizer (Accelerate's optimizer wrapper). No-op without fp16."""
    if scaler is not None:
        accelerator.scaler = scaler
        optimizer.scaler = scaler


def fast_gpu_math(device: torch.device) -> bool:
    """On CUDA: TF32 matmuls and convolutions (fp32 weights, 10-bit mantissa products; what cuDNN's GAN
    trainers use) and cudnn.benchmark (fixed shapes: the fastest kernels are searched once). -> whether set."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return True

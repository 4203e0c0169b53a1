"""FLOPs per training image of a config: the phases of real training steps (D and G), counted by
torch.utils.flop_counter on the CPU, divided by the images those steps consumed. The R1 step (one step in
train.r1_every) is left out: the counter cannot follow its autograd.grad, so the figure is a lower bound.
With a measured images/s this gives the share of a card's peak that training reaches (issue 23):

    python benchmarks/train_flops.py --config configs/shapes-gpu.yaml [--images-per-s 5000 --peak-tflops 989]

It also counts the ATen operators per step (each at least one kernel launch on a GPU). The count is
architecture-only (the same on every device); the text encoder is not in it (its caption
table is built once, before training). Matrix products and convolutions are counted, elementwise work not.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cgan.core.config import load_config
from cgan.train.build import build_run, make_loader
from cgan.train.loop import train_step
from cgan.train.microbatch import to_device_batch
from cgan.train.terms import needs_negatives


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators a step dispatches: on a GPU each is at least one kernel launch, so their
    number times the host's cost per operator bounds the steps/s of a small model from above."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--images-per-s", type=float, default=0.0, help="a measured training speed")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak (H200: 989)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    config = load_config(args.config, [*args.overrides, "train.tracker=none", "eval.faithfulness_every=0",
                                       "eval.fid_every=0", "train.d_warmup_steps=0"])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as out:
        run = build_run(config, out, None, None)
        loader = make_loader(run.dataset, config, run.step, run.accelerator, run.arrays)
        steps = config.train.r1_every - 1  # the steps between two R1 steps (step 0 is one: not counted)
        counter, ops = FlopCounterMode(display=False), OpCounter()
        for step in range(steps + 1):
            batches = [to_device_batch(next(loader), run.text_cache, config, run.accelerator.device,
                                       run.memory_format, needs_negatives(config), run.table)
                       for _ in range(config.train.grad_accum)]
            if step == 0:
                train_step(run, batches)
                continue
            with counter, ops:
                train_step(run, batches)
    images = steps * run.global_batch
    per_image = counter.get_total_flops() / images
    print(f"{args.config} {' '.join(args.overrides)}: {steps} steps of {run.global_batch} images "
          f"(no R1 step): {per_image / 1e9:.3f} GFLOP per training image; {ops.count / steps:,.0f} ATen operators "
          f"per step")
    if args.images_per_s:
        share = per_image * args.images_per_s / (args.peak_tflops * 1e12)
        print(f"at {args.images_per_s:,.0f} images/s: {per_image * args.images_per_s / 1e12:.3g} TFLOP/s, "
              f"{100 * share:.2g}% of a {args.peak_tflops:g} TFLOP/s peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())

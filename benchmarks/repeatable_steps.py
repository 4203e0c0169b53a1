"""Is a training step bitwise repeatable on this machine, as it is? Repeat a run's first steps from one state.

    python benchmarks/repeatable_steps.py [--config configs/tiny.yaml] [--steps 2] [--repeats 40] [--threads 2]
                                          [OVERRIDE ...]

Builds the run once, draws its first `--steps` batches, then trains those steps `--repeats` times from
the same weights, optimizer state and RNG state, in one process, and prints for each phase of each step
(D, R1, G) how many repeats gave gradients that differ from the first in any bit, with the first
tensors that differed. A resumed run equals the uninterrupted one only where every phase prints 0.

Run it beside other jobs: an operation whose sum order follows thread timing (as D's pair rows once
did, docs/training.md) differs only when the threads are held up. On an idle machine it prints 0 either way.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_utils import cpu_flags, environment_line, set_threads  # noqa: E402
import cgan.train.loop as loop  # noqa: E402
from cgan.core.config import load_config  # noqa: E402
from cgan.train.build import build_run, make_loader  # noqa: E402
from cgan.train.microbatch import to_device_batch  # noqa: E402
from cgan.train.terms import needs_negatives  # noqa: E402

STATE = ("G", "D", "G_ema", "opt_G", "opt_D")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"CPU: {cpu_flags()}\n{environment_line()}")
    folder = Path(tempfile.mkdtemp())
    config = load_config(args.config, [f"data.cache_dir={folder / 'cache'}", *args.overrides])
    run = build_run(config, folder / "run")  # its own text encoder, as a training run builds it
    data = make_loader(run.dataset, config, 0, run.accelerator, run.arrays)
    batches = [[to_device_batch(next(data), run.text_cache, config, run.accelerator.device, run.memory_format,
                                needs_negatives(config), run.table)] for _ in range(args.steps)]
    start = {name: copy.deepcopy(getattr(run, name).state_dict()) for name in STATE}
    grads: dict[str, dict[str, torch.Tensor]] = {}
    phase = loop.run_phase

    def recording_phase(step_fn, trained, *rest, **kwargs):
        out = phase(step_fn, trained, *rest, **kwargs)
        grads[f"step {run.step} {step_fn.__name__}"] = {n: p.grad.clone() for n, p in trained.named_parameters()
                                                        if p.grad is not None}
        return out

    loop.run_phase = recording_phase

    def steps_from_start() -> dict[str, dict[str, torch.Tensor]]:
        for name, state in start.items():
            getattr(run, name).load_state_dict(copy.deepcopy(state))
        run.step = run.images_seen = 0
        torch.manual_seed(config.train.seed + 1)
        for step_batches in batches:
            loop.train_step(run, step_batches)
        return dict(grads)

    first = steps_from_start()
    differing: dict[str, list[list[str]]] = {key: [] for key in first}
    for _ in range(args.repeats):
        for key, tensors in steps_from_start().items():
            names = [n for n, g in tensors.items() if not torch.equal(g, first[key][n])]
            if names:
                differing[key].append(names)
    for key, found in differing.items():
        example = f"; e.g. {len(found[0])} tensors: {', '.join(found[0][:3])}, ..." if found else ""
        print(f"{key}: {len(found)} of {args.repeats} repeats differ{example}")


if __name__ == "__main__":
    main()

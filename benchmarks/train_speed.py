"""Training throughput of cgan's real training step, split into its parts, with FLOPs and memory.

    python benchmarks/train_speed.py [--configs tiny quickstart shapes emoji] [--variants fp32 bf16]
                                     [--reps 3] [--steps 2] [--threads 1] [--profile] [--ab-env NAME=VALUE]
                                     [--override train.batch_size=8 ...]

Each config runs in its own subprocess (so its peak memory is its own). Inside it, the variants
alternate A, B, A, B for --reps rounds, and the matmul peaks (fp32 and bf16, 2048 x 2048) are
measured before every round in the same process; every figure is a median, and utilisation is
achieved FLOP/s over the peak measured beside it. Variants: fp32 (train.mixed_precision=no),
bf16 (autocast), fp32-nchw / bf16-nchw (train.channels_last=false), fp32-compile (train.compile:
torch.compile'd G and D in the D and G phases), fp32-unfolded / bf16-unfolded (cgan's layers as
before the leaky ReLU gain was folded into their scalars, benchmarks/fused_activation.py).

Two clocks: wall time, and the CPU time of the process. On a machine shared with other jobs, run
with --threads 1: then the CPU time is the cost of the work on a core of its own and does not
depend on how much of the machine the scheduler gave us (with 2 threads on oversubscribed cores,
OpenMP workers wait at barriers for each other and small convolutions ran 20-50x slower).

One step is what cgan.train.loop.train_step runs, after next(loader) and to_device_batch (text
embeddings from the caption cache): run_phase(d_step); run_phase(r1_step) every train.r1_every steps (timed once
per round, amortised); run_phase(g_step); update_ema; the loss bookkeeping and, every log_every
steps, the host sync of the non-finite flags and the losses and the metrics line (amortised). Not
counted: progress bar, TensorBoard, sample grids and checkpoints (every few hundred steps).
Optimizer steps are timed apart from forward and backward. The DataLoader worker's CPU time is
reported beside the step (it runs in parallel). FLOPs: torch.utils.flop_counter's formulas for
matmul, convolution and attention (no elementwise ops). Peak memory: ru_maxrss (peak resident set
of the whole process: Python, torch, the text encoder, the loader's prefetched batches; DataLoader
worker processes not included).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import bench_utils as bu  # noqa: E402
import fused_activation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARTS = ("data", "batch", "text", "D", "opt_D", "G", "opt_G", "R1", "EMA", "log")
VARIANTS = {  # name: (train.mixed_precision, channels_last, torch.compile, layers as before the folded gain)
    "fp32": ("no", True, False, False),
    "bf16": ("bf16", True, False, False),
    "fp32-nchw": ("no", False, False, False),
    "bf16-nchw": ("bf16", False, False, False),
    "fp32-compile": ("no", True, True, False),
    "fp32-unfolded": ("no", True, False, True),
    "bf16-unfolded": ("bf16", True, False, True),
}


class TimedCall:
    """Wraps a callable (the caption cache) and adds up the (wall, CPU) seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, (0.0, 0.0)

    def __call__(self, *args, **kwargs):
        clock = bu.Clock()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds = add(self.seconds, clock.read())


class TimedOptimizer:
    """What run_phase needs of an Accelerate-prepared optimizer (zero_grad, step, .optimizer: the
    torch optimizer inside), with step() timed (wall, CPU)."""

    def __init__(self, prepared):
        self.prepared, self.seconds = prepared, (0.0, 0.0)

    @property
    def optimizer(self):
        return getattr(self.prepared, "optimizer", self.prepared)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.prepared.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        clock = bu.Clock()
        self.prepared.step()
        self.seconds = add(self.seconds, clock.read())


def add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] + b[0], a[1] + b[1]


def sub(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] - b[0], a[1] - b[1]


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of another process (a DataLoader worker) from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


class TrainHarness:
    """A run built by cgan's own build_run (cgan/train/build.py: data, caption cache, G, D, G_ema, their
    optimizers and the per-process seed, as train() builds them), stepped here phase by phase with each
    part timed. Its folder is a temporary one; no tracker."""

    def __init__(self, config):
        from cgan.train.build import build_run, make_loader
        from cgan.train.recovery import NonfiniteGuard

        config.train.tracker = "none"
        self.scratch = tempfile.TemporaryDirectory(prefix="cgan-train-speed-")
        self.config, self.run = config, build_run(config, self.scratch.name)
        self.augment, self.dataset, self.cache = self.run.augment, self.run.dataset, self.run.text_cache
        self.G, self.D, self.G_ema = self.run.G, self.run.D, self.run.G_ema
        # the torch optimizers inside the run's Accelerate wrappers: accelerator() wraps them anew per precision
        self.opt_G, self.opt_D = self.run.opt_G.optimizer, self.run.opt_D.optimizer
        self.memory_format = self.run.memory_format
        self.loader = make_loader(self.dataset, config, self.run.step, self.run.accelerator, self.run.arrays)
        self.images_seen = 0
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.guard = NonfiniteGuard(config.train.nonfinite_patience)
        self.compiled: tuple | None = None

    def num_params(self) -> tuple[int, int]:
        return sum(p.numel() for p in self.G.parameters()), sum(p.numel() for p in self.D.parameters())

    def worker_cpu_seconds(self) -> float:
        """CPU seconds used so far by the DataLoader's worker processes (0 without workers)."""
        return sum(process_cpu_seconds(w.pid) for w in getattr(self.loader, "_workers", []))

    def set_channels_last(self, on: bool) -> None:
        self.memory_format = torch.channels_last if on else torch.contiguous_format
        for module in (self.G, self.D, self.G_ema):
            module.to(memory_format=self.memory_format)

    def accelerator(self, mixed_precision: str):
        """A fresh Accelerator for this precision (Accelerate keeps one global state per process)."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        accelerator = Accelerator(mixed_precision=mixed_precision)
        opt_G, opt_D = accelerator.prepare(self.opt_G, self.opt_D)
        return accelerator, TimedOptimizer(opt_G), TimedOptimizer(opt_D)

    def models(self, use_compile: bool):
        """(G, D) for the D and G phases: eager, or torch.compile'd wrappers sharing the same weights
        (as train() does with train.compile)."""
        if not use_compile:
            return self.G, self.D
        if self.compiled is None:
            self.compiled = (torch.compile(self.G), torch.compile(self.D))
        return self.compiled

    def next_batch(self, times: dict[str, tuple[float, float]]):
        from cgan.train.microbatch import to_device_batch
        from cgan.train.terms import needs_negatives

        clock = bu.Clock()
        raw = next(self.loader)
        times["data"] = clock.read()
        cache = TimedCall(self.cache)
        clock = bu.Clock()
        batch = to_device_batch(raw, cache, self.config, torch.device("cpu"), self.memory_format,
                                needs_negatives(self.config), self.run.table)  # the table: data.image_cache
        times["text"] = cache.seconds
        times["batch"] = sub(clock.read(), cache.seconds)
        return batch

    def step(self, accelerator, opt_G: TimedOptimizer, opt_D: TimedOptimizer, use_compile: bool = False,
             with_r1: bool = False) -> dict[str, tuple[float, float]]:
        """One training step as train() runs it; -> (wall, CPU) seconds per part (R1 only when with_r1)."""
        from cgan.train.ema import ema_beta, update_ema
        from cgan.train.steps import d_step, g_step, r1_step, run_phase

        t = self.config.train
        G, D = self.models(use_compile)
        times: dict[str, tuple[float, float]] = {}
        batch = self.next_batch(times)
        stats: dict[str, torch.Tensor] = {}
        flags: dict[str, torch.Tensor] = {}
        phases = [("D", self.D, self.G, opt_D, d_step, G, D)]
        if with_r1:  # eager D: compiled graphs have no double backward
            phases.append(("R1", self.D, self.G, opt_D, r1_step, G, self.D))
        phases.append(("G", self.G, self.D, opt_G, g_step, G, D))
        for name, trained, frozen, optimizer, step_fn, G_used, D_used in phases:
            before = optimizer.seconds
            clock = bu.Clock()
            phase_stats, flag = run_phase(step_fn, trained, frozen, optimizer, [batch], G_used, D_used, self.config,
                                          accelerator, self.augment)
            elapsed = clock.read()
            stats.update(phase_stats)
            flags[step_fn.__name__] = flag
            if name == "R1":
                times["R1"] = elapsed
            else:
                optimizer_seconds = sub(optimizer.seconds, before)
                times[name] = sub(elapsed, optimizer_seconds)
                times[f"opt_{name}"] = optimizer_seconds
        clock = bu.Clock()
        self.images_seen += t.batch_size
        update_ema(self.G_ema, self.G, ema_beta(t.batch_size, self.images_seen, t.ema_kimg, t.ema_rampup))
        times["EMA"] = clock.read()
        clock = bu.Clock()
        for key, value in stats.items():
            self.sums.setdefault(key, []).append(value)
        self.guard.record(self.images_seen, flags)  # train() reads these at logging steps only
        times["log"] = clock.read()
        return times

    def flush_log(self, path: Path) -> tuple[float, float]:
        """The every-log_every part of logging: host sync of the non-finite flags and the means; one metrics line."""
        clock = bu.Clock()
        self.guard.check(lambda *args: None)
        means = {k: float(torch.stack(v).mean()) for k, v in self.sums.items()}
        with path.open("a") as handle:
            handle.write(json.dumps({"images_seen": self.images_seen, **means}) + "\n")
        self.sums = {}
        return clock.read()

    def count_flops(self) -> dict[str, float]:
        """FLOPs of one D phase, one R1 phase and one G phase, fp32 (the count is the same in bf16)."""
        from cgan.train.steps import d_step, g_step, r1_step, run_phase

        accelerator, opt_G, opt_D = self.accelerator("no")
        batch = self.next_batch({})
        flops = {}
        for name, trained, frozen, optimizer, step_fn in (("D", self.D, self.G, opt_D, d_step),
                                                          ("R1", self.D, self.G, opt_D, r1_step),
                                                          ("G", self.G, self.D, opt_G, g_step)):
            with bu.count_flops() as counter:
                run_phase(step_fn, trained, frozen, optimizer, [batch], self.G, self.D, self.config, accelerator,
                          self.augment)
            flops[name] = counter.get_total_flops()
        return flops


def step_seconds(parts: dict[str, float], r1_every: int, log_every: int) -> dict[str, float]:
    """Per-step seconds of every part (one clock), R1 and the log flush amortised over their intervals."""
    out = {k: parts.get(k, 0.0) for k in PARTS}
    out["R1"] = parts.get("R1", 0.0) / r1_every
    out["log"] = parts.get("log", 0.0) + parts.get("log_flush", 0.0) / log_every
    return out


def median_parts(records: list[dict[str, tuple[float, float]]], clock: int) -> dict[str, float]:
    """Median per part over steps, of the wall (clock=0) or CPU (clock=1) seconds."""
    keys = {k for r in records for k in r}
    return {k: bu.median([r[k][clock] for r in records if k in r]) for k in keys}


def profile_step(harness: TrainHarness, out_rows: int = 20) -> None:
    """torch.profiler over two fp32 steps (one with R1): the ops that take the time."""
    from torch.profiler import ProfilerActivity, profile

    accelerator, opt_G, opt_D = harness.accelerator("no")
    harness.step(accelerator, opt_G, opt_D)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        harness.step(accelerator, opt_G, opt_D, with_r1=True)
        harness.step(accelerator, opt_G, opt_D)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=out_rows, max_name_column_width=46))


def worker(args) -> dict[str, Any]:
    """One config in this process: build, count FLOPs, then the variants interleaved."""
    from cgan.core.config import load_config

    config = load_config(REPO / "configs" / f"{args.worker}.yaml", args.override)
    t = config.train
    rss_start = bu.current_rss_mib()
    build_clock = bu.Clock()
    harness = TrainHarness(config)
    build_seconds = build_clock.read()[0]
    rss_built = bu.current_rss_mib()
    g_params, d_params = harness.num_params()
    flops = harness.count_flops()
    flops_step = flops["D"] + flops["G"] + flops["R1"] / t.r1_every
    print(f"[{args.worker}] {config.data.resolution} px, batch {t.batch_size}, G {g_params / 1e6:.2f}M D "
          f"{d_params / 1e6:.2f}M params; built in {build_seconds:.1f} s; GFLOP per phase: D {flops['D'] / 1e9:.1f}, "
          f"G {flops['G'] / 1e9:.1f}, R1 {flops['R1'] / 1e9:.1f} (every {t.r1_every}) -> "
          f"{flops_step / 1e9:.1f} per step, {flops_step / t.batch_size / 1e9:.2f} per image", flush=True)
    if args.profile:
        profile_step(harness)

    log_path = Path(tempfile.mkdtemp(prefix="cgan-bench-")) / "metrics.jsonl"
    results: dict[str, dict[str, list]] = {v: {"parts": [], "peak32": [], "peak16": [], "first_step": [],
                                               "worker_cpu": []} for v in args.variants}
    peak_rss_fp32 = None
    for rep in range(args.reps):
        for variant in args.variants:
            precision, channels_last, use_compile, unfolded = VARIANTS[variant]
            record = results[variant]
            for key, dtype in (("peak32", torch.float32), ("peak16", torch.bfloat16)):
                record[key].append((bu.matmul_peak(dtype), bu.matmul_peak(dtype, cpu_time=True)))
            harness.set_channels_last(channels_last)
            accelerator, opt_G, opt_D = harness.accelerator(precision)
            with fused_activation.unfolded(unfolded):
                if rep == 0:  # warm-up (and, with compile, the compilation)
                    clock = bu.Clock()
                    harness.step(accelerator, opt_G, opt_D, use_compile, with_r1=True)
                    record["first_step"].append(clock.read())
                worker_before = harness.worker_cpu_seconds()
                for i in range(args.steps):
                    parts = harness.step(accelerator, opt_G, opt_D, use_compile, with_r1=(i == 0))
                    if i == 0:
                        parts["log_flush"] = harness.flush_log(log_path)
                    record["parts"].append(parts)
            record["worker_cpu"].append((harness.worker_cpu_seconds() - worker_before) / args.steps)
            if variant == "fp32" and peak_rss_fp32 is None:
                peak_rss_fp32 = bu.peak_rss_mib()
        harness.set_channels_last(t.channels_last)

    summary: dict[str, Any] = {"config": args.worker, "resolution": config.data.resolution,
                               "batch": t.batch_size, "G_params": g_params, "D_params": d_params,
                               "gflop_step": flops_step / 1e9, "gflop_phase": {k: v / 1e9 for k, v in flops.items()},
                               "rss_start_mib": rss_start, "rss_built_mib": rss_built,
                               "peak_rss_fp32_mib": peak_rss_fp32, "peak_rss_all_mib": bu.peak_rss_mib(),
                               "threads": torch.get_num_threads(), "data_workers": config.data.num_workers,
                               "variants": {}}
    for variant, record in results.items():
        out: dict[str, Any] = {"first_step_s": record["first_step"][0] if record["first_step"] else None,
                               "num_steps_timed": len(record["parts"]),
                               "data_worker_cpu_s_per_step": bu.median(record["worker_cpu"])}
        for clock, label in ((0, "wall"), (1, "cpu")):
            per_step = step_seconds(median_parts(record["parts"], clock), t.r1_every, t.log_every)
            total = sum(per_step.values())
            peak32 = bu.median([p[clock] for p in record["peak32"]])
            peak16 = bu.median([p[clock] for p in record["peak16"]])
            achieved = flops_step / total / 1e9
            overhead = total - per_step["D"] - per_step["G"] - per_step["R1"]
            out[label] = {"images_per_s": t.batch_size / total, "step_s": total, "parts_s": per_step,
                          "achieved_gflops": achieved, "peak_fp32_gflops": peak32, "peak_bf16_gflops": peak16,
                          "util_vs_fp32_peak": achieved / peak32, "util_vs_bf16_peak": achieved / peak16,
                          "overhead_frac": overhead / total,
                          "overhead_with_r1_frac": (overhead + per_step["R1"]) / total}
        summary["variants"][variant] = out
    return summary


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n== {s['config']}: {s['resolution']} px, batch {s['batch']}, G {s['G_params'] / 1e6:.2f}M / "
          f"D {s['D_params'] / 1e6:.2f}M, {s['gflop_step']:.1f} GFLOP/step "
          f"({s['gflop_step'] / s['batch']:.2f}/image); {s['threads']} thread(s), {s['data_workers']} data worker(s); "
          f"RSS after build {s['rss_built_mib']:.0f} MiB, peak {s['peak_rss_fp32_mib'] or float('nan'):.0f} MiB "
          f"(fp32 only), {s['peak_rss_all_mib']:.0f} MiB (all variants)")
    for clock in ("cpu", "wall"):
        what = ("CPU time of this process (the work itself; stable under contention with 1 thread)" if clock == "cpu"
                else "wall time (what the scheduler gave this process)")
        print(f"-- by {what}")
        print(f"{'variant':<13}{'img/s':>7}{'step s':>8}{'GFLOP/s':>9}{'fp32pk':>8}{'bf16pk':>8}{'util32':>7}"
              f"{'util16':>7}{'ovh%':>6}{'+R1%':>6}  split % " + " ".join(PARTS))
        for name, variant in s["variants"].items():
            v = variant[clock]
            split = " ".join(f"{100 * v['parts_s'][k] / v['step_s']:.1f}" for k in PARTS)
            print(f"{name:<13}{v['images_per_s']:>7.2f}{v['step_s']:>8.2f}{v['achieved_gflops']:>9.0f}"
                  f"{v['peak_fp32_gflops']:>8.0f}{v['peak_bf16_gflops']:>8.0f}{v['util_vs_fp32_peak']:>7.0%}"
                  f"{v['util_vs_bf16_peak']:>7.0%}{100 * v['overhead_frac']:>6.1f}"
                  f"{100 * v['overhead_with_r1_frac']:>6.1f}  {split}")
        if "fp32" in s["variants"] and len(s["variants"]) > 1:
            base = s["variants"]["fp32"][clock]["images_per_s"]
            print("  vs fp32: " + ", ".join(f"{k} {v[clock]['images_per_s'] / base:.2f}x"
                                            for k, v in s["variants"].items() if k != "fp32"))
    for name, variant in s["variants"].items():
        worker = variant["data_worker_cpu_s_per_step"]
        line = f"{name}: data worker CPU {worker:.3f} s per batch (runs beside the step)"
        if variant["first_step_s"] is not None:
            line += f"; first step {variant['first_step_s'][0]:.1f} s wall"
        print(line)


def run_worker(config: str, args, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", config, "--reps", str(args.reps), "--steps", str(args.steps),
           "--variants", *args.variants] + (["--profile"] if args.profile else []) + \
        (["--threads", str(args.threads)] if args.threads else [])
    for item in args.override:
        cmd += ["--override", item]
    env = {**os.environ, **(env_extra or {})}
    return bu.run_worker(cmd, config, cwd=REPO, env=env, echo=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "quickstart", "shapes", "emoji"])
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=sorted(VARIANTS))
    parser.add_argument("--reps", type=int, default=3, help="rounds of A, B, ... (medians over them)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--override", action="append", default=[], help="a config override, e.g. train.batch_size=8")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of two fp32 steps")
    parser.add_argument("--ab-env", action="append", default=[], metavar="NAME=VALUE",
                        help="also run each config with this environment (A, B, A, B in separate processes), e.g. "
                             "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 or "
                             "GLIBC_TUNABLES=glibc.malloc.hugetlb=1; repeat for more")
    parser.add_argument("--threads", type=int, help="torch intra-op threads in the workers (default: torch's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bu.set_threads(args.threads)
    if args.worker:
        bu.emit_result(worker(args))
        return
    print(bu.environment_line())
    print(bu.cpu_flags())
    for config in args.configs:
        if not args.ab_env:
            print_summary(run_worker(config, args))
            continue
        envs = {"default": {}} | {item: dict([item.split("=", 1)]) for item in args.ab_env}
        runs: dict[str, list] = {label: [] for label in envs}
        for _ in range(2):  # A, B, A, B: separate processes, since LD_PRELOAD and tunables are read at start-up
            for label, env in envs.items():
                runs[label].append(run_worker(config, args, env))
        for label, results in runs.items():
            rss = ", ".join(f"{r['peak_rss_all_mib']:.0f}" for r in results)
            for variant in args.variants:
                speeds = ", ".join(f"{r['variants'][variant]['wall']['images_per_s']:.2f}" for r in results)
                peaks = ", ".join(f"{r['variants'][variant]['wall']['peak_fp32_gflops']:.0f}" for r in results)
                print(f"{config} {variant} [{label}]: img/s (wall) {speeds}; fp32 matmul peak {peaks}; "
                      f"peak RSS {rss} MiB")
        for variant in args.variants:
            base = bu.median([r["variants"][variant]["wall"]["images_per_s"] for r in runs["default"]])
            for label in args.ab_env:
                other = bu.median([r["variants"][variant]["wall"]["images_per_s"] for r in runs[label]])
                print(f"{config} {variant}: [{label}] / default = {other / base:.2f}x (wall)")

if __name__ == "__main__":
    main()

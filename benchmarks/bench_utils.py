"""Shared helpers of the speed benchmarks: the machine's own peaks, FLOP counting, peak memory.

Not a test module and not part of the package: `benchmarks/*.py` import it from their folder.
Every figure is a median over repetitions, and the peaks are measured in the same process as
the work they are compared with, so a machine shared with other jobs skews both alike.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry, shape_wrapper

aten = torch.ops.aten


def set_threads(num_threads: int | None) -> None:
    """Intra-op threads of this process (None: torch's default, one per core). On a machine shared
    with other jobs, 1 thread avoids OpenMP workers spinning at barriers while the other is descheduled."""
    if num_threads:
        torch.set_num_threads(num_threads)


RESULT_PREFIX = "RESULT "


def emit_result(result: dict) -> None:
    """A worker subprocess's answer to its parent: one line on stdout (see run_worker)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(cmd: list[str], label: str, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
               echo: bool = False) -> dict:
    """Run a benchmark worker (a fresh process: its own peak memory, its own thread setting) and return
    the dict it emitted. echo: print its other stdout lines. On failure, show its output and exit."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
        elif echo:
            print(line)
    if proc.returncode or result is None:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{label}: worker failed (exit {proc.returncode})")
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Clock:
    """Seconds since it was made, on two clocks: wall time, and this process's CPU time.

    On a machine shared with other jobs, wall time measures how much of the CPU the scheduler gave
    this process; with one intra-op thread (--threads 1) the CPU time does not depend on that, so
    it is the stable measure of the work itself (a step's cost on a core of its own). With more
    threads the CPU time also counts OpenMP workers spinning at barriers, so use it with 1 thread.
    """

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def clock_seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of fn()."""
    clock = Clock()
    fn()
    return clock.read()


def timed(fn: Callable[[], object]) -> float:
    return clock_seconds(fn)[0]


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 3,
                cpu_time: bool = False) -> float:
    """GFLOP/s of a size x size matmul in dtype (median of `repeats`, after one warm-up), per second
    of wall time, or per second of this process's CPU time."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    seconds = median([clock_seconds(lambda: torch.mm(a, b))[1 if cpu_time else 0] for _ in range(repeats)])
    return 2 * size ** 3 / seconds / 1e9


def conv_probe(dtype: torch.dtype, channels_last: bool, batch: int = 64, channels: int = 128, size: int = 32,
               repeats: int = 3) -> tuple[float, float]:
    """GFLOP/s of a 3x3 convolution C -> C at size x size: (forward, forward + backward)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    w = torch.randn(channels, channels, 3, 3).to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
    flops = 2 * batch * channels * channels * 9 * size * size  # one convolution

    def forward() -> None:
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, padding=1)

    def forward_backward() -> None:
        torch.nn.functional.conv2d(x, w, padding=1).sum().backward()

    forward(), forward_backward()
    fwd = median([timed(forward) for _ in range(repeats)])
    both = median([timed(forward_backward) for _ in range(repeats)])
    return flops / fwd / 1e9, 3 * flops / both / 1e9


def _conv_backward_flop_grouped(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                                _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's convolution_backward formula, with the weight gradient divided by `groups`.

    torch.utils.flop_counter counts a grouped convolution's weight gradient as if every input
    channel met every output channel, i.e. `groups` times too high; the input gradient and the
    forward are counted correctly. For groups == 1 this equals torch's own formula.
    """
    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, list(out_shape[0]), not transposed)
    if output_mask[1]:
        grad_weight_shape = list(out_shape[1])
        if transposed:
            flops += conv_flop_count(t(grad_out_shape), t(x_shape), t(grad_weight_shape), transposed=False) // groups
        else:
            flops += conv_flop_count(t(x_shape), t(grad_out_shape), t(grad_weight_shape), transposed=False) // groups
    return flops


class FlopCounter(TorchDispatchMode):
    """Counts FLOPs of matmul, convolution and attention ops with torch.utils.flop_counter's formulas
    (elementwise ops are not counted), grouped convolutions' weight gradients counted correctly.

    A plain dispatch mode rather than FlopCounterMode, whose module tracking raises on the double
    backward of R1 ("A leaf node was passed to _will_engine_execute_node ...").
    """

    def __init__(self):
        super().__init__()
        self.total = 0
        self.formulas = {**flop_registry, aten.convolution_backward: shape_wrapper(_conv_backward_flop_grouped)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        return self.total


@contextmanager
def count_flops() -> Iterator[FlopCounter]:
    """Count FLOPs of what runs inside; read `.get_total_flops()` afterwards."""
    with FlopCounter() as counter:
        yield counter


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (getrusage ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_flags() -> str:
    """The CPU model and whether it has the instructions that make bf16 fast (avx512_bf16, amx)."""
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]
    return f"{model}; " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def environment_line() -> str:
    load = os.getloadavg()
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
            f"{load[0]:.1f} (other jobs share these cores: compare ratios measured in the same run), "
            f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")

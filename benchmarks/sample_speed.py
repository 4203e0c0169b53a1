"""Sampling speed: images/s at several batch sizes, single-image latency, and the text encoder's cost.

    python benchmarks/sample_speed.py [--resolutions 64 128] [--batches 1 16 64] [--reps 3]
                                      [--variants fp32 fp32-nchw bf16]

The generator is shapes.yaml's, randomly initialised at each resolution (speed does not depend on
what the weights have learned), in eval mode as an exported model is used: `cgan.pipeline.generate`
(caption-cache lookup, attribute encoding, one z per seed, fusion, mapping, synthesis), output
tensors without the PIL conversion. Variants: fp32 with channels_last (fp32), fp32 in the default
layout (fp32-nchw: what CGANPipeline did before it moved G to channels_last), fp32 with the whole
batch through G at once (fp32-unsplit: what generate() did before it split CPU batches into chunks of
16), bf16 autocast around generate() with channels_last (bf16). Each resolution runs in its own subprocess (peak memory: ru_maxrss of that
process); inside it the variants and batch sizes alternate for --reps rounds; figures are medians,
by CPU time of the process (stable under contention with --threads 1) and by wall time.

Text encoder (MiniLM, the frozen encoder of every config): per prompt uncached (one prompt; and
64 distinct prompts in one call, per prompt) and cached (a lookup in TextEmbeddingCache).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bench_utils as bu  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# variant -> channels_last; "bf16*" runs generate() under bf16 autocast, "*unsplit" sends a whole batch
# through G at once instead of generate()'s CPU split into chunks of CPU_MAX_BATCH
VARIANTS = {"fp32": True, "fp32-nchw": False, "fp32-unsplit": True, "bf16": True, "bf16-nchw": False}


def worker(args) -> dict[str, Any]:
    from cgan.core.config import load_config
    from cgan.data.shapes import SCHEMA
    from cgan.condition.attributes import AttributeSchema
    from cgan.data import ShapesDataset
    from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache
    from cgan.nets.factory import build_generator
    from cgan.nets.sampling import generate

    resolution = args.worker
    config = load_config(REPO / "configs" / "shapes.yaml", [f"data.resolution={resolution}", "model.generator.color=rgb"])
    encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length)
    cache = TextEmbeddingCache(encoder)
    schema = AttributeSchema.from_dict(SCHEMA)
    torch.manual_seed(0)
    G = build_generator(config.model, schema=schema, text_dim=encoder.dim,
                        resolution=resolution).eval().requires_grad_(False)
    params = sum(p.numel() for p in G.parameters())
    data = ShapesDataset(num_images=max(args.batches), resolution=resolution)
    prompts = [data.record(i)["captions"][0] for i in range(max(args.batches))]
    attrs = [data.record(i)["attributes"] for i in range(max(args.batches))]
    cache.precompute(prompts)
    rss_built = bu.current_rss_mib()

    def sample(batch: int, variant: str) -> torch.Tensor:
        # fp32-unsplit: the whole batch through G at once (what generate() did before it split CPU batches)
        max_batch = batch if variant.endswith("unsplit") else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.startswith("bf16")):
            return generate(G, cache, schema, prompts[:batch], attrs[:batch], list(range(batch)), max_batch=max_batch)

    with bu.count_flops() as counter:
        sample(1, "fp32")
    gflop_image = counter.get_total_flops() / 1e9

    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    peaks: list[tuple[float, float]] = []
    for rep in range(args.reps):
        peaks.append((bu.matmul_peak(torch.float32), bu.matmul_peak(torch.float32, cpu_time=True)))
        for variant in args.variants:
            G.to(memory_format=torch.channels_last if VARIANTS[variant] else torch.contiguous_format)
            for batch in args.batches:
                if rep == 0:
                    sample(batch, variant)  # warm-up
                repeats = 3 if batch <= 16 else 1
                times.setdefault((variant, batch), []).extend(bu.clock_seconds(lambda: sample(batch, variant))
                                                              for _ in range(repeats))

    # text encoder: uncached (the model runs) and cached (a dictionary lookup) per prompt
    fresh = [f"a prompt never seen before number {i}" for i in range(64)]
    encoder([fresh[0]])  # warm-up
    cpu = 1  # CPU time of this process: stable under contention with one thread
    one = bu.median([bu.clock_seconds(lambda i=i: encoder([fresh[i]]))[cpu] for i in range(1, 6)])
    many = bu.clock_seconds(lambda: encoder(fresh))[cpu]
    lookup = TextEmbeddingCache(encoder)
    lookup.precompute(fresh)
    cached_one = bu.median([bu.clock_seconds(lambda: lookup([fresh[0]]))[cpu] for _ in range(20)])
    cached_many = bu.median([bu.clock_seconds(lambda: lookup(fresh))[cpu] for _ in range(5)])
    return {"resolution": resolution, "G_params": params, "gflop_per_image": gflop_image,
            "rss_built_mib": rss_built, "peak_rss_mib": bu.peak_rss_mib(),
            "peak_fp32_gflops": {"wall": bu.median([p[0] for p in peaks]), "cpu": bu.median([p[1] for p in peaks])},
            "seconds": {clock: {f"{v}/{b}": bu.median([x[i] for x in t]) for (v, b), t in times.items()}
                        for i, clock in enumerate(("wall", "cpu"))},
            "text_ms_per_prompt": {"uncached, 1 prompt": 1000 * one, "uncached, 64 prompts per call": 1000 * many / 64,
                                   "cached, 1 prompt": 1000 * cached_one,
                                   "cached, 64 prompts per call": 1000 * cached_many / 64}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp32-nchw", "fp32-unsplit", "bf16"], choices=sorted(VARIANTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads in the workers (default: torch's)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bu.set_threads(args.threads)
    if args.worker:
        bu.emit_result(worker(args))
        return
    print(bu.environment_line())
    for resolution in args.resolutions:
        cmd = [sys.executable, __file__, "--worker", str(resolution), "--reps", str(args.reps),
               "--batches", *map(str, args.batches), "--variants", *args.variants] + \
            (["--threads", str(args.threads)] if args.threads else [])
        start = time.perf_counter()
        r = bu.run_worker(cmd, f"{resolution} px", cwd=REPO)
        print(f"\n== {resolution} px: G {r['G_params'] / 1e6:.2f}M params, {r['gflop_per_image']:.3f} GFLOP per image; "
              f"RSS after build {r['rss_built_mib']:.0f} MiB, peak {r['peak_rss_mib']:.0f} MiB "
              f"({time.perf_counter() - start:.0f} s)")
        print(f"{'':<17}{'-- by CPU time --':>34}  {'-- by wall time --':>28}")
        print(f"{'variant':<11}{'batch':>6}{'img/s':>9}{'ms/batch':>10}{'GFLOP/s':>9}{'util':>6}"
              f"{'img/s':>9}{'ms/batch':>10}{'util':>6}")
        peak_cpu, peak_wall = r["peak_fp32_gflops"]["cpu"], r["peak_fp32_gflops"]["wall"]
        for key, seconds in r["seconds"]["cpu"].items():
            variant, batch = key.split("/")
            wall = r["seconds"]["wall"][key]
            gflops, gflops_wall = r["gflop_per_image"] * int(batch) / seconds, r["gflop_per_image"] * int(batch) / wall
            print(f"{variant:<11}{batch:>6}{int(batch) / seconds:>9.1f}{1000 * seconds:>10.1f}{gflops:>9.0f}"
                  f"{gflops / peak_cpu:>6.0%}{int(batch) / wall:>9.1f}{1000 * wall:>10.1f}{gflops_wall / peak_wall:>6.0%}")
        print(f"fp32 matmul peak: {peak_cpu:.0f} GFLOP per CPU-second, {peak_wall:.0f} GFLOP/s wall")
        print("text encoder, CPU ms per prompt: " + ", ".join(f"{k} {v:.3f}" for k, v in r["text_ms_per_prompt"].items()))


if __name__ == "__main__":
    main()

"""Data loading throughput (images/s), with and without the caption-embedding cache.

    python benchmarks/data_throughput.py [--data shapes|FOLDER] [--resolution 64] [--batches 30] [--workers 0 1]

Measures, per configuration, the time to produce training batches: images from the
DataLoader plus text embeddings for their captions, either looked up in the cache
(computed once per unique caption) or recomputed by the frozen encoder every batch.
Prints medians over the batches after a warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from cgan.core.config import DataConfig
from cgan.data import StepSampler, build_dataset
from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    config = DataConfig(name="shapes" if args.data == "shapes" else "folder",
                        path=None if args.data == "shapes" else args.data, resolution=args.resolution)
    dataset = build_dataset(config)
    encoder = FrozenTextEncoder("minilm", max_length=32)
    cache = TextEmbeddingCache(encoder)
    start = time.perf_counter()
    cache.precompute(dataset.all_captions())
    print(f"{args.data}: {len(dataset)} records; caption cache: {len(cache.memory)} unique captions "
          f"encoded once in {time.perf_counter() - start:.1f} s")
    print(f"{'workers':>7} {'text':>9} {'images/s':>9} {'ms/batch':>9}")
    for workers in args.workers:
        for mode in ("cached", "uncached"):
            sampler = StepSampler(len(dataset), batch_size=args.batch_size, seed=0)
            loader = iter(DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                                     generator=torch.Generator().manual_seed(0)))
            times = []
            for i in range(args.batches + 3):
                t0 = time.perf_counter()
                batch = next(loader)
                text = cache(batch["text"]) if mode == "cached" else encoder(batch["text"])
                assert text.text_tokens.shape[0] == args.batch_size
                if i >= 3:  # warm-up: worker start, first allocations
                    times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            print(f"{workers:>7} {mode:>9} {args.batch_size / median:>9.0f} {median * 1000:>9.1f}")


if __name__ == "__main__":
    main()

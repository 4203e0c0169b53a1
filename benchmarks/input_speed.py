"""Training input speed: images/s of data, text lookup and transfer, as `train` consumes them.

    python benchmarks/input_speed.py --config configs/shapes.yaml [--batches 400] [--device cpu] [overrides ...]

Runs what the training loop runs for its batches, and nothing else: `make_loader` (from the image
cache, data.image_cache=true, or the DataLoader, false) and `to_device_batch` (images to [-1, 1] on the
device, caption and negative embeddings, prompt and attribute dropout). The first run of a setting
builds the image cache (reported apart). The last line is the figure: `input: N images/s`.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch


def cpu_features() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(amx_bf16|avx512_bf16|avx512f)\b", text)))
    return f"{model.group(1) if model else 'unknown CPU'}; {' '.join(flags) or 'no avx512f/bf16 flags'}"


def main() -> None:
    from accelerate import Accelerator

    from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache
    from cgan.core.config import data_cache_dir, load_config
    from cgan.data import build_dataset
    from cgan.data.cache import cached_arrays
    from cgan.train.build import make_loader
    from cgan.train.caption_table import CaptionTable
    from cgan.train.microbatch import to_device_batch
    from cgan.train.terms import needs_negatives

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--batches", type=int, default=5000,
                        help="timed micro-batches, after 20 of warm-up (5000 x 32: three epochs of shapes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, every core)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device
    dataset = build_dataset(config.data)
    encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length).to(device)
    text_cache = TextEmbeddingCache(encoder, data_cache_dir(config.data))
    started = time.perf_counter()
    text_cache.precompute(dataset.all_captions())
    arrays = cached_arrays(dataset, data_cache_dir(config.data)) if config.data.image_cache else None
    table = CaptionTable(arrays.captions, text_cache, device) if arrays is not None else None
    print(f"setup (text cache, image cache, caption table): {time.perf_counter() - started:.1f} s; "
          f"{len(dataset)} images at {config.data.resolution} px, batch {config.train.batch_size}, "
          f"image_cache={config.data.image_cache}, {torch.get_num_threads()} torch threads, device {device}")
    print(f"CPU: {cpu_features()}")
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    loader = make_loader(dataset, config, 0, accelerator, arrays)
    times, cpu_start = [], None
    for i in range(args.batches + 20):
        if i == 20:
            cpu_start = time.process_time()
        start = time.perf_counter()
        batch = to_device_batch(next(loader), text_cache, config, device, memory_format, needs_negatives(config), table)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 20:
            times.append(time.perf_counter() - start)
        assert batch.images.shape[0] == config.train.batch_size
    cpu_seconds = time.process_time() - cpu_start
    total = config.train.batch_size * len(times) / sum(times)
    median = config.train.batch_size / statistics.median(times)
    slow = sorted(times)[int(0.99 * len(times))]
    print(f"{len(times)} batches: {1000 * statistics.median(times):.2f} ms median per batch "
          f"({median:,.0f} images/s at the median), 99th percentile {1000 * slow:.2f} ms; the training "
          f"process used {1e6 * cpu_seconds / (len(times) * config.train.batch_size):.1f} CPU-us per image; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"input: {total:,.0f} images/s")


if __name__ == "__main__":
    main()

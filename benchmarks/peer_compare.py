"""cgan against the public peer gigagan-pytorch 0.3.0, side by side in one run, at 64 px and matched size.

    python benchmarks/peer_compare.py [--peer-python /work/peer-venv/bin/python] [--batch 4] [--reps 2]
                                      [--sample-batch 16] [--threads 1] [--flops]

The peer lives in its own virtual environment (it pulls open-clip-torch, kornia, timm, ema-pytorch
and more that cgan does not need); make it once:

    python3 -m venv /work/peer-venv
    echo /work/venv/lib/python3.11/site-packages > /work/peer-venv/lib/python3.11/site-packages/zz_cgan.pth
    /work/peer-venv/bin/pip install gigagan-pytorch==0.3.0

(the .pth line lets the peer reuse cgan's torch 2.14 rather than install a second copy; pip installs
the peer's own dependencies into /work/peer-venv and leaves cgan's environment untouched).

Each side runs in its own subprocess, A, B, A, B for --reps rounds, so contention from other jobs
hits both alike; figures are medians, ratios are cgan / peer, by wall time and by the CPU time of
each process (on a machine shared with other jobs use --threads 1: then CPU time is the cost of the
work on a core of its own, see train_speed.py). Peak memory: ru_maxrss of each subprocess (the whole
process: Python, torch, models, optimizer state, activations).

The peer, as configured here (G 8.9M, D 16.1M parameters; FACTS.md measured a peer at 8.5M / 16.0M):
  * Its text encoder wants CLIP weights that cannot be downloaded here. It is fed text encodings
    directly: a stand-in for its `OpenClipAdapter` returns, for each caption, the same frozen
    MiniLM token encodings (384-d, zero at padding, as the peer's masks expect) that cgan's caption
    cache holds. The peer's own trainable TextEncoder transformer (in its G and D) still runs.
  * Its generator contrastive loss needs CLIP's image tower: weight 0 (that only removes work from
    the peer). No vision-aided discriminator (its default). Everything else is its default
    training: hinge loss, multiscale D outputs every step, gradient penalty every 4th step (its
    default, amortised here), the D's auxiliary reconstruction loss, the matching-aware loss, EMA.
  * Patched: its auxiliary matching loss `log(1 + exp(-x))` overflows to inf and turns every weight
    into NaN at the first step; it is replaced by `softplus(-x)`, the same function, stable.
  * Its data: a pool of shapes images (in [0, 1]) and captions held in memory, so the peer does no
    data loading; cgan's step includes its real DataLoader and caption-cache lookups.
cgan: configs/shapes.yaml with wider channels to match the peer's parameter counts (MATCH below),
the real training step of benchmarks/train_speed.py (D, R1 every 16 steps amortised, G, EMA).
Sampling: images/s of the EMA generator at --sample-batch, condition encoding included, from
cached text encodings on both sides.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import bench_utils as bu  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# cgan widths that match the peer's parameter counts: shapes.yaml's layout (channels = base / resolution,
# capped), with more channels at low resolution. Parameter count alone does not fix the work: the
# peer keeps most parameters in low-resolution attention, and a cgan with wide high-resolution
# layers (g 8192/256, d 16384/384: G 8.8M, D 15.7M) has about 5x the FLOPs per image of this one.
MATCH = ["model.g_channel_base=2048", "model.g_channel_max=512", "model.d_channel_base=4096",
         "model.d_channel_max=512"]
PEER_GENERATOR = dict(image_size=64, dim_capacity=16, dim_max=256, dim_latent=256,
                      style_network=dict(dim=128, depth=4, dim_text_latent=64),
                      self_attn_resolutions=(32, 16), cross_attn_resolutions=(32, 16))
PEER_DISCRIMINATOR = dict(image_size=64, dim_capacity=16, dim_max=256, attn_resolutions=(32, 16))
PEER_TEXT_ENCODER = dict(dim=64, depth=2)


# ---------------------------------------------------------------------------------------------
# the peer (runs in the peer's environment)

def build_peer(pool: dict[str, Any], tmp: Path):
    import torch.nn as nn
    from gigagan_pytorch import gigagan_pytorch as peer
    from gigagan_pytorch.open_clip import OpenClipAdapter

    def aux_matching_loss(real, fake):  # the peer's formula, log(1 + exp(-x)), written stably
        return (F.softplus(-real) + F.softplus(-fake)).mean()

    peer.aux_matching_loss = aux_matching_loss

    table = {text: tokens for text, tokens in zip(pool["texts"], pool["tokens"])}

    class CachedTextEncodings(OpenClipAdapter):
        """Stands in for CLIP: each caption's precomputed token encodings (T, 384), zero at padding."""

        def __init__(self):
            nn.Module.__init__(self)
            self._dim_latent = pool["tokens"].shape[-1]

        def embed_texts(self, texts):
            encodings = torch.stack([table[t] for t in texts])  # (B, T, 384)
            pooled = F.normalize(encodings.sum(dim=1), dim=-1)
            return pooled, encodings

    clip = CachedTextEncodings()
    gan = peer.GigaGAN(
        generator={**PEER_GENERATOR, "text_encoder": {**PEER_TEXT_ENCODER, "clip": clip}},
        discriminator={**PEER_DISCRIMINATOR, "text_encoder": {**PEER_TEXT_ENCODER, "clip": clip}},
        generator_contrastive_loss_weight=0.0, model_folder=str(tmp / "models"), results_folder=str(tmp / "results"))
    return gan


def peer_worker(args) -> dict[str, Any]:
    pool = torch.load(args.pool, weights_only=True)
    tmp = Path(tempfile.mkdtemp(prefix="peer-bench-"))
    gan = build_peer(pool, tmp)
    g_params = sum(p.numel() for p in gan.G.parameters())
    d_params = sum(p.numel() for p in gan.D.parameters())
    batch = args.batch
    num = pool["images"].shape[0]

    def batches(size: int):
        start = 0
        while True:
            idx = [(start + i) % num for i in range(size)]
            start += size
            yield pool["images"][idx], [pool["texts"][i] for i in idx]

    data = batches(batch)
    rss_built = bu.current_rss_mib()
    out: dict[str, Any] = {"side": "peer", "G_params": g_params, "D_params": d_params, "rss_built_mib": rss_built}
    if args.flops:
        for name, fn in (("D", lambda: gan.train_discriminator_step(data, apply_gradient_penalty=False)),
                         ("D_gp", lambda: gan.train_discriminator_step(data, apply_gradient_penalty=True)),
                         ("G", lambda: gan.train_generator_step(batch_size=batch, dl_iter=data))):
            with bu.count_flops() as counter:
                fn()
            out[f"gflop_{name}"] = counter.get_total_flops() / 1e9
        texts = pool["texts"][:args.sample_batch]
        # gan.generate runs under inference_mode, where a Python dispatch mode sees no ops (it counted
        # 0): the same EMA generator call under no_grad.
        with torch.no_grad(), bu.count_flops() as counter:
            gan.G_ema.ema_model(batch_size=args.sample_batch, texts=texts)
        out["gflop_sample"] = counter.get_total_flops() / 1e9
        return out
    # Warm-up at batch 1 (thread pool, allocator, kernels): a full-batch warm-up step would double
    # the peer's minutes; its first full-batch step was ~15 % slower than the next in a trial.
    small = batches(1)
    gan.train_discriminator_step(small, apply_gradient_penalty=True)
    gan.train_generator_step(batch_size=1, dl_iter=small)
    times: dict[str, tuple[float, float]] = {}
    losses = [None]

    def d_step(gp: bool) -> None:
        losses[0] = gan.train_discriminator_step(data, apply_gradient_penalty=gp)

    times["D"] = bu.clock_seconds(lambda: d_step(False))
    times["D_gp"] = bu.clock_seconds(lambda: d_step(True))
    times["G"] = bu.clock_seconds(lambda: gan.train_generator_step(batch_size=batch, dl_iter=data))
    every = gan.apply_gradient_penalty_every
    finite = all(torch.isfinite(p).all() for p in gan.G.parameters()) and \
        all(torch.isfinite(p).all() for p in gan.D.parameters())
    texts = pool["texts"][:args.sample_batch]
    gan.generate(batch_size=2, texts=texts[:2])  # warm-up
    sample = [bu.clock_seconds(lambda: gan.generate(batch_size=args.sample_batch, texts=texts)) for _ in range(2)]
    out.update(weights_finite=bool(finite), d_loss=float(losses[0].divergence), peak_rss_mib=bu.peak_rss_mib())
    for clock, label in ((0, "wall"), (1, "cpu")):
        step = times["D"][clock] * (every - 1) / every + times["D_gp"][clock] / every + times["G"][clock]
        out[label] = {"times": {k: v[clock] for k, v in times.items()}, "step_s": step,
                      "train_images_per_s": batch / step,
                      "sample_images_per_s": args.sample_batch / bu.median([x[clock] for x in sample]),
                      "peak_fp32_gflops": bu.matmul_peak(torch.float32, cpu_time=clock == 1)}
    return out


# ---------------------------------------------------------------------------------------------
# cgan (runs in cgan's environment)

def cgan_worker(args) -> dict[str, Any]:
    from cgan.core.config import load_config
    from cgan.pipeline import generate

    from train_speed import TrainHarness, median_parts, step_seconds

    config = load_config(REPO / "configs" / "shapes.yaml", MATCH + [f"train.batch_size={args.batch}"])
    t = config.train
    harness = TrainHarness(config)
    g_params, d_params = harness.num_params()
    out: dict[str, Any] = {"side": "cgan", "G_params": g_params, "D_params": d_params,
                           "rss_built_mib": bu.current_rss_mib()}
    prompts = [harness.dataset[i]["text"] for i in range(args.sample_batch)]
    attrs = [harness.dataset.record(i)["attributes"] for i in range(args.sample_batch)]
    seeds = list(range(args.sample_batch))
    G_ema = harness.G_ema

    def sample() -> None:
        generate(G_ema, harness.cache, harness.dataset.schema, prompts, attrs, seeds)

    if args.flops:
        flops = harness.count_flops()
        out.update({f"gflop_{k}": v / 1e9 for k, v in flops.items()})
        with bu.count_flops() as counter:
            sample()
        out["gflop_sample"] = counter.get_total_flops() / 1e9
        return out
    accelerator, opt_G, opt_D = harness.accelerator(t.mixed_precision)
    harness.step(accelerator, opt_G, opt_D, with_r1=True)  # warm-up
    worker_before = harness.worker_cpu_seconds()
    parts = [harness.step(accelerator, opt_G, opt_D, with_r1=(i == 0)) for i in range(args.cgan_steps)]
    worker_per_step = (harness.worker_cpu_seconds() - worker_before) / args.cgan_steps
    sample()  # warm-up
    sample_times = [bu.clock_seconds(sample) for _ in range(3)]
    out["peak_rss_mib"] = bu.peak_rss_mib()
    for clock, label in ((0, "wall"), (1, "cpu")):
        per_step = step_seconds(median_parts(parts, clock), t.r1_every, t.log_every)
        if clock == 1:  # the DataLoader worker's CPU too (it renders the images; the peer has none to render)
            per_step["data worker"] = worker_per_step
        step = sum(per_step.values())
        out[label] = {"times": per_step, "step_s": step, "train_images_per_s": args.batch / step,
                      "sample_images_per_s": args.sample_batch / bu.median([x[clock] for x in sample_times]),
                      "peak_fp32_gflops": bu.matmul_peak(torch.float32, cpu_time=clock == 1)}
    return out


def make_pool(path: Path, num: int = 32) -> None:
    """Shapes images in [0, 1] with captions and their MiniLM token encodings, for the peer."""
    from cgan.core.config import data_cache_dir, load_config
    from cgan.data import build_dataset
    from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache

    config = load_config(REPO / "configs" / "shapes.yaml")
    dataset = build_dataset(config.data)
    items = [dataset[i] for i in range(num)]
    texts = [item["text"] for item in items]
    cache = TextEmbeddingCache(FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length),
                               data_cache_dir(config.data))
    cache.precompute(dataset.all_captions())
    encoding = cache(texts)
    tokens = encoding.text_tokens * encoding.text_mask[..., None]  # (N, T, 384), zero at padding
    images = (torch.stack([item["image"] for item in items]) + 1) / 2  # (N, 3, 64, 64) in [0, 1]
    torch.save({"images": images, "texts": texts, "tokens": tokens}, path)


def run(python: str, args, side: str, pool: Path, flops: bool = False) -> dict[str, Any]:
    batch = args.flops_batch if flops else args.batch
    cmd = [python, __file__, "--worker", side, "--pool", str(pool), "--batch", str(batch),
           "--sample-batch", str(args.sample_batch), "--cgan-steps", str(args.cgan_steps)] + (["--flops"] if flops else []) + \
        (["--threads", str(args.threads)] if args.threads else [])
    start = time.perf_counter()
    result = bu.run_worker(cmd, side, cwd=REPO)
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default="/work/peer-venv/bin/python")
    parser.add_argument("--batch", type=int, default=4, help="training batch of both sides")
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2, help="rounds of cgan, peer")
    parser.add_argument("--cgan-steps", type=int, default=4, help="timed cgan steps per round")
    parser.add_argument("--flops", action="store_true", help="also count FLOPs per training image (one more round)")
    parser.add_argument("--flops-batch", type=int, default=2, help="batch of the FLOP count (FLOPs scale with it)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of both sides (default: torch's)")
    parser.add_argument("--worker", choices=["cgan", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bu.set_threads(args.threads)
    if args.worker:
        result = (cgan_worker if args.worker == "cgan" else peer_worker)(args)
        bu.emit_result(result)
        return
    print(bu.environment_line())
    pool = Path(tempfile.mkdtemp(prefix="peer-pool-")) / "pool.pt"
    make_pool(pool)
    results: dict[str, list[dict[str, Any]]] = {"cgan": [], "peer": []}
    for rep in range(args.reps):
        for side, python in (("cgan", sys.executable), ("peer", args.peer_python)):
            r = run(python, args, side, pool)
            results[side].append(r)
            for clock in ("cpu", "wall"):
                v = r[clock]
                print(f"round {rep + 1} {side} ({clock} time): train {v['train_images_per_s']:.3f} img/s (step "
                      f"{v['step_s']:.2f} s), sample {v['sample_images_per_s']:.2f} img/s, fp32 matmul peak "
                      f"{v['peak_fp32_gflops']:.0f} GFLOP/s; parts " + ", ".join(f"{k} {x:.2f}" for k, x in v["times"].items()))
            print(f"round {rep + 1} {side}: peak RSS {r['peak_rss_mib']:.0f} MiB, {r['wall_s']:.0f} s", flush=True)
    flops = {side: run(python, args, side, pool, flops=True)
             for side, python in (("cgan", sys.executable), ("peer", args.peer_python))} if args.flops else {}

    def med(side: str, key: str, clock: str | None = None) -> float:
        return bu.median([(r[clock] if clock else r)[key] for r in results[side]])

    c, p = results["cgan"][0], results["peer"][0]
    print(f"\nparameters: cgan G {c['G_params'] / 1e6:.2f}M D {c['D_params'] / 1e6:.2f}M; peer G "
          f"{p['G_params'] / 1e6:.2f}M D {p['D_params'] / 1e6:.2f}M (cgan/peer G {c['G_params'] / p['G_params']:.2f}, "
          f"D {c['D_params'] / p['D_params']:.2f}); training batch {args.batch}, sampling batch {args.sample_batch}; "
          f"{args.threads or torch.get_num_threads()} thread(s) each")
    if flops:
        fc, fp = flops["cgan"], flops["peer"]
        cgan_step = fc["gflop_D"] + fc["gflop_G"] + fc["gflop_R1"] / 16
        peer_step = 0.75 * fp["gflop_D"] + 0.25 * fp["gflop_D_gp"] + fp["gflop_G"]
        print(f"GFLOP per training image: cgan {cgan_step / args.flops_batch:.2f}, "
              f"peer {peer_step / args.flops_batch:.2f} (counted at batch {args.flops_batch}); "
              f"per sampled image: cgan {fc['gflop_sample'] / args.sample_batch:.3f}, peer "
              f"{fp['gflop_sample'] / args.sample_batch:.3f}")
    for clock in ("cpu", "wall"):
        print(f"-- medians over {args.reps} rounds, by {clock} time")
        print(f"{'':<22}{'cgan':>10}{'peer':>10}{'cgan/peer':>11}")
        for label, key in (("train img/s", "train_images_per_s"), ("sample img/s", "sample_images_per_s"),
                           ("fp32 matmul GFLOP/s", "peak_fp32_gflops")):
            a, b = med("cgan", key, clock), med("peer", key, clock)
            print(f"{label:<22}{a:>10.3f}{b:>10.3f}{a / b:>11.2f}")
    for label, key in (("peak RSS MiB", "peak_rss_mib"), ("RSS after build MiB", "rss_built_mib")):
        a, b = med("cgan", key), med("peer", key)
        print(f"{label:<22}{a:>10.0f}{b:>10.0f}{a / b:>11.2f}")
    print(f"peer weights finite after its steps (softplus patch): {all(r['weights_finite'] for r in results['peer'])}")


if __name__ == "__main__":
    main()

"""What a polish could reach at best: each image optimised alone on the polish loss (issue 22's FID bar).

    python benchmarks/per_image_bound.py --model shapes64 --specs none sparse:0.5:0.3 sparse:0.5:1 [--threads 2]

Generates the images `python -m cgan.fid --model M --data shapes` scores (the held-out records' captions
and attributes, the same seeds, as 8-bit images), then optimises each alone on

    prior(x) + anchor * mean |x - x0|

(cgan/train/polish.py's `per_image_optimum`: 300 steps of Adam at lr 0.005 on its pixels) and scores the
results against the same records' real images: FID and precision / recall (k = 3) at N = 1,000. A spec is
`none` (the images as drawn), `sparse:EXPONENT:ANCHOR` or `capped:CAP:ANCHOR`. A model that drew the
optima itself would score what a line says; `python -m cgan.polish --target per_image` fits G to them.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from bench_utils import cpu_flags, set_threads
from cgan.core.images import image_to_tensor, tensor_to_images
from cgan.eval.diversity import precision_recall
from cgan.eval.fid import DEFAULT_CACHE_DIR, frechet_distance, image_features, load_feature_network
from cgan.eval.fid_data import generated_images, reference_statistics
from cgan.pipeline import CGANPipeline
from cgan.train.polish import PolishConfig, per_image_optimum


def config_of(spec: str) -> PolishConfig:
    """'sparse:EXPONENT:ANCHOR' or 'capped:CAP:ANCHOR' -> the polish settings (ValueError naming the spec)."""
    try:
        prior, value, anchor = spec.split(":")
        setting = {"exponent": float(value)} if prior == "sparse" else {"cap": float(value)}
        return PolishConfig(prior=prior, anchor=float(anchor), **setting)
    except ValueError as err:
        raise ValueError(f"--specs {spec}: expected none, sparse:EXPONENT:ANCHOR or capped:CAP:ANCHOR ({err})") from err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes64", help="a model folder or a shipped model name")
    parser.add_argument("--specs", nargs="+", default=["none", "sparse:0.5:0.3"])
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:  # a bad spec fails before the minutes of generation
        configs = {spec: None if spec == "none" else config_of(spec) for spec in args.specs}
    except ValueError as err:
        parser.error(str(err))
    set_threads(args.threads)
    print(f"CPU: {cpu_flags()}; {args.threads} thread(s)")
    network = load_feature_network(cache_dir=DEFAULT_CACHE_DIR)
    pipe = CGANPipeline.from_pretrained(args.model)
    dataset, name, split, reference, _ = reference_statistics("shapes", None, pipe.resolution, 2 * args.num,
                                                              network, DEFAULT_CACHE_DIR, quiet=True)
    real = reference["feats"][:args.num]  # the first N of `cgan.fid`'s 2N-record cache: its reference
    drawn = torch.stack([image_to_tensor(image.convert("RGB")) for image in  # (N, 3, R, R)
                         generated_images(pipe.G, pipe.text_cache, pipe.schema, dataset, name, args.num)])
    for spec, config in configs.items():
        start = time.perf_counter()
        images = drawn if config is None else torch.cat([per_image_optimum(chunk, config)
                                                          for chunk in drawn.split(250)])
        feats = image_features(tensor_to_images(images), network)
        precision, recall = precision_recall(real, feats)
        moved = float((images - drawn).abs().mean()) * 127.5
        print(f"{spec:<16} FID {frechet_distance(feats, real):6.2f}  precision {precision:.3f}  "
              f"recall {recall:.3f}  moved {moved:.2f} / 255  ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

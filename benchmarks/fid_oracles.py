"""What FID would a generator get that is perfect but for one thing? (issue 12's FID <= 30 bar)

    python benchmarks/fid_oracles.py [--num 1000] [--resolution 64]

Each "oracle" redraws the very records `python -m cgan.fid --model M --data shapes` compares a model
against (shapes, held-out split, same scenes), wrong in one way only, and scores it against the
same cached real statistics:

- circles: every object drawn as a circle (right colour, place, size, style and background): a
  model that has not learned shapes;
- blurred: the real images under a Gaussian blur of 1 px: soft, rounded edges;
- other records: real images of other held-out scenes (right in every way, but not these
  records): the floor a perfect generator reaches at this N.

So a model's FID can be read against what its remaining mistakes cost. Prints one line per oracle.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import ImageFilter

ROOT = Path(__file__).resolve().parents[1]

from bench_utils import cpu_flags, set_threads  # noqa: E402
from cgan.data import ShapesDataset  # noqa: E402
from cgan.data import shapes as shapes_lib  # noqa: E402
from cgan.eval.fid import DEFAULT_CACHE_DIR, SHAPES_REFERENCE_SEED, folder_features, load_feature_network  # noqa: E402
from cgan.eval.fid_data import reference_statistics  # noqa: E402


def oracle_images(name: str, dataset: ShapesDataset, num: int, resolution: int):
    """-> the num images of one oracle (PIL)."""
    if name == "circles":
        for i in range(num):
            scene = dataset.scene(i)
            circles = [{**o, "shape": "circle"} for o in scene.objects]
            yield shapes_lib.render(dataclasses.replace(scene, objects=circles), resolution)
    elif name == "blurred":
        for i in range(num):
            yield dataset.image(i).filter(ImageFilter.GaussianBlur(radius=1))
    elif name == "other records":
        others = ShapesDataset(num_images=num, resolution=resolution, split="heldout",
                               seed=SHAPES_REFERENCE_SEED + 1000)
        for i in range(num):
            yield others.image(i)
    else:
        raise ValueError(name)


def main() -> int:
    from cleanfid.fid import frechet_distance

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"CPU: {cpu_flags()}; {args.threads} thread(s)")
    network = load_feature_network(cache_dir=DEFAULT_CACHE_DIR)
    dataset, _, split, reference, cache = reference_statistics("shapes", None, args.resolution, args.num, network,
                                                               DEFAULT_CACHE_DIR)
    print(f"reference: shapes/{split}, {len(reference['feats'])} images at {args.resolution} px (cache {cache})")
    for name in ("other records", "circles", "blurred"):
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="cgan-oracle-") as folder:
            for i, image in enumerate(oracle_images(name, dataset, args.num, args.resolution)):
                image.save(Path(folder) / f"{i:06d}.png")
            feats = folder_features(folder, network)
        fid = frechet_distance(np.mean(feats, axis=0), np.cov(feats, rowvar=False), reference["mu"],
                               reference["sigma"])
        print(f"{name:<15} FID {fid:7.2f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

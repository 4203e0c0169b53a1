"""What FID would a generator get that is perfect but for one thing? (issue 12's FID <= 30 bar)

    python benchmarks/fid_oracles.py [--num 1000] [--resolution 64]

Each "oracle" redraws the very records `python -m cgan.fid --model M --data shapes` compares a model
against (shapes, held-out split, same scenes), wrong in one way only, and scores it against the
same cached real statistics:

- circles: every object drawn as a circle (right colour, place, size, style and background): a
  model that has not learned shapes;
- blurred: the real images under a Gaussian blur of 1 px: soft, rounded edges;
- blurred 0.5: the same under a blur of 0.5 px;
- noise 2: the real images with Gaussian pixel noise of 2 of 255 levels (seeded): right in every way
  but the flatness of their flat regions, the fault loss.flat works on;
- other records: real images of other held-out scenes (right in every way, but not these
  records): the floor a perfect generator reaches at this N.

So a model's FID can be read against what its remaining mistakes cost. Prints one line per oracle:
FID, improved precision / recall (k = 3, as `cgan.fid` prints them) and the pixel spread of its
6 x 6 corners (the backgrounds: 0 where they are flat). With `--model M`, also M's own lines on these
records, raw and under a 3 x 3 median filter (what the noise in its flat regions costs it).

    python benchmarks/fid_oracles.py --oracles "noise 2" "blurred 0.5" --model shapes64
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]

from bench_utils import cpu_flags, set_threads  # noqa: E402
from cgan.data import ShapesDataset  # noqa: E402
from cgan.data import shapes as shapes_lib  # noqa: E402
from cgan.eval.fid import (DEFAULT_CACHE_DIR, SHAPES_REFERENCE_SEED, frechet_distance, image_features,  # noqa: E402
                           load_feature_network)
from cgan.eval.diversity import precision_recall  # noqa: E402
from cgan.eval.fid_data import generated_images, reference_statistics  # noqa: E402

ORACLES = ("other records", "circles", "blurred", "blurred 0.5", "noise 2")


def with_noise(image: Image.Image, levels: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0.0, levels, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def corner_spread(images: list[Image.Image]) -> float:
    """Mean over images of the pixel standard deviation (0..255) in the 6 x 6 top-left corner."""
    return float(np.mean([np.asarray(im)[:6, :6].astype(np.float32).std(axis=(0, 1)).mean() for im in images]))


def oracle_images(name: str, dataset: ShapesDataset, num: int, resolution: int):
    """-> the num images of one oracle (PIL)."""
    if name == "circles":
        for i in range(num):
            scene = dataset.scene(i)
            circles = [{**o, "shape": "circle"} for o in scene.objects]
            yield shapes_lib.render(dataclasses.replace(scene, objects=circles), resolution)
    elif name in ("blurred", "blurred 0.5"):
        radius = 1.0 if name == "blurred" else 0.5
        for i in range(num):
            yield dataset.image(i).filter(ImageFilter.GaussianBlur(radius=radius))
    elif name == "noise 2":
        rng = np.random.default_rng(0)
        for i in range(num):
            yield with_noise(dataset.image(i), 2.0, rng)
    elif name == "other records":
        others = ShapesDataset(num_images=num, resolution=resolution, split="heldout",
                               seed=SHAPES_REFERENCE_SEED + 1000)
        for i in range(num):
            yield others.image(i)
    else:
        raise ValueError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--oracles", nargs="*", default=list(ORACLES[:3]), choices=ORACLES)
    parser.add_argument("--model", help="also this exported model's FID, raw and under a 3 x 3 median filter")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"CPU: {cpu_flags()}; {args.threads} thread(s)")
    network = load_feature_network(cache_dir=DEFAULT_CACHE_DIR)
    # 2 x num records, as `cgan.fid` reads them (the same cache): the first num are the reference
    dataset, name, split, reference, cache = reference_statistics("shapes", None, args.resolution, 2 * args.num,
                                                                  network, DEFAULT_CACHE_DIR)
    real_feats = reference["feats"][:args.num]
    print(f"reference: shapes/{split}, {len(real_feats)} images at {args.resolution} px (cache {cache}); "
          f"corner spread of the real images {corner_spread([dataset.image(i) for i in range(args.num)]):.2f}")
    sets = {oracle: lambda oracle=oracle: list(oracle_images(oracle, dataset, args.num, args.resolution))
            for oracle in args.oracles}
    if args.model:
        from cgan.pipeline import ExportedModel

        pipe = ExportedModel.from_pretrained(args.model)
        drawn: list[Image.Image] = []

        def model_images() -> list[Image.Image]:
            if not drawn:
                drawn.extend(generated_images(pipe.G, pipe.text_cache, pipe.schema, dataset, name, args.num))
            return drawn

        sets[args.model] = model_images
        sets[f"{args.model}, median 3"] = lambda: [im.filter(ImageFilter.MedianFilter(3)) for im in model_images()]
    for label, images_of in sets.items():
        start = time.perf_counter()
        images = images_of()
        feats = image_features(images, network)
        precision, recall = precision_recall(real_feats, feats)
        print(f"{label:<24} FID {frechet_distance(feats, real_feats):7.2f}  precision / recall {precision:.3f} / "
              f"{recall:.3f}  corner spread {corner_spread(images):5.2f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where does a model's FID gap lie: fine detail or coarse content? (issue 12's FID <= 30 bar)

    python benchmarks/fid_scales.py --model shapes64 [--num 1000] [--threads 1]

Generates the images `python -m cgan.fid --model M --data shapes` scores (the held-out records'
captions and attributes, the same seeds), then scores them against the same records' real images
after one transform applied to BOTH sides:

- none: the plain FID (as cgan.eval.fid reports it);
- blur 1.5 px: a Gaussian blur: edges, corners and fine texture no longer count;
- 16 px: down to 16 px and back up: only the layout, sizes and colours count;
- border 4 px: a 4 px frame painted grey on both: artefacts at the image border no longer count;
- 8 colours: each image quantised to its own 8-colour palette: gloss, halos and shading no longer count.

A transform that brings the FID far down names where the gap is. Prints one line per transform,
after the border profile: the mean |generated - real| over the real background's pixels, by ring of
pixels from the image border inward (a rim artefact shows as a higher ring 0). --border-only: that alone.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]

from bench_utils import cpu_flags, set_threads  # noqa: E402
from cgan.eval.fid import DEFAULT_CACHE_DIR, folder_features, load_feature_network  # noqa: E402
from cgan.eval.fid_data import write_generated  # noqa: E402
from cgan.eval.fid_data import reference_statistics  # noqa: E402
from cgan.pipeline import CGANPipeline  # noqa: E402


def downscaled(image: Image.Image, size: int = 16) -> Image.Image:
    return image.resize((size, size), Image.BICUBIC).resize(image.size, Image.BICUBIC)


def framed(image: Image.Image, width: int = 4) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).rectangle([0, 0, out.width - 1, out.height - 1], outline=(128, 128, 128), width=width)
    return out


TRANSFORMS = {
    "none": lambda image: image,
    "blur 1.5 px": lambda image: image.filter(ImageFilter.GaussianBlur(radius=1.5)),
    "16 px": downscaled,
    "border 4 px": framed,
    "8 colours": lambda image: image.quantize(colors=8).convert("RGB"),
}


def transformed_features(images: list[Image.Image], transform, network) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="cgan-fid-scales-") as folder:
        for i, image in enumerate(images):
            transform(image).save(Path(folder) / f"{i:06d}.png")
        return folder_features(folder, network)


def border_profile(real: list[Image.Image], fake: list[Image.Image], rings: int = 6) -> list[float]:
    """Mean |fake - real| (0-255, over RGB) on the real images' background pixels (the colour of their
    top-left pixel), for each ring of pixels 0 (the outermost) .. rings - 1."""
    real_px, fake_px = (np.stack([np.asarray(image, dtype=np.float32) for image in images]) for images in (real, fake))
    background = np.all(np.abs(real_px - real_px[:, :1, :1, :]) < 1, axis=-1)  # (N, H, W)
    size = real_px.shape[1]
    yy, xx = np.mgrid[:size, :size]
    ring = np.minimum(np.minimum(yy, xx), np.minimum(size - 1 - yy, size - 1 - xx))  # (H, W)
    error = np.abs(fake_px - real_px).mean(-1)  # (N, H, W)
    return [float(error[background & (ring == r)[None]].mean()) for r in range(rings)]


def main() -> int:
    from cleanfid.fid import frechet_distance

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes64", help="a model folder or a shipped model name")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--border-only", action="store_true", help="print the border profile only (no FID)")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"CPU: {cpu_flags()}; {args.threads} thread(s)")
    network = load_feature_network(cache_dir=DEFAULT_CACHE_DIR)
    pipe = CGANPipeline.from_pretrained(args.model)
    dataset, name, split, reference, _ = reference_statistics("shapes", None, pipe.resolution, args.num, network,
                                                              DEFAULT_CACHE_DIR)
    num = len(reference["feats"])
    real = [dataset.image(i).convert("RGB") for i in range(num)]
    with tempfile.TemporaryDirectory(prefix="cgan-fid-scales-") as scratch:
        write_generated(pipe.G, pipe.text_cache, pipe.schema, dataset, name, num, Path(scratch))
        fake = [Image.open(path).convert("RGB") for path in sorted(Path(scratch).glob("*.png"))]
    print(f"{args.model}: {num} generated vs {num} real images of shapes/{split} at {pipe.resolution} px")
    profile = border_profile(real, fake)
    print("border profile, mean |generated - real| on the background, rings 0 (outermost) ..: "
          + " ".join(f"{value:.2f}" for value in profile), flush=True)
    if args.border_only:
        return 0
    for label, transform in TRANSFORMS.items():
        start = time.perf_counter()
        feats_real, feats_fake = (transformed_features(images, transform, network) for images in (real, fake))
        fid = frechet_distance(np.mean(feats_fake, axis=0), np.cov(feats_fake, rowvar=False),
                               np.mean(feats_real, axis=0), np.cov(feats_real, rowvar=False))
        print(f"{label:<12} FID {fid:7.2f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

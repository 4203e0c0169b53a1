"""Write Fashion-MNIST (Debian's `dataset-fashion-mnist`) as a captioned image folder, the way a user
brings their own data: images/*.png plus metadata.jsonl with a caption and two attributes.

- text: the article, in a few wordings ("a sneaker", "sneaker", "a photo of a sneaker");
- group (categorical): top, bottom, dress, footwear or bag;
- ink (continuous): the fraction of the 28 x 28 pixels the article covers (brightness >= 0.1).

The 28 x 28 images are padded with 2 black pixels on each side to 32 x 32 (the smallest model size;
cgan refuses images smaller than the model), which keeps every original pixel.

    python benchmarks/fashion_folder.py --out data/fashion --num 10000

It reads the 10,000-image test split (t10k) first, then the training split if --num asks for more.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
ARTICLES = ("T-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
PLURAL = {"trousers"}  # no "a" before them
GROUPS = ("top", "bottom", "top", "dress", "top", "footwear", "top", "footwear", "bag", "footwear")
INK_THRESHOLD = 0.1
PAD = 2


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): images (N, 28, 28) uint8 or labels (N,) uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def captions(article: str) -> list[str]:
    a = "" if article in PLURAL else ("an " if article[0] in "aeiou" else "a ")
    return [f"{a}{article}", article, f"a photo of {a}{article}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=10_000)
    args = parser.parse_args()
    splits = [("t10k", SOURCE / "t10k-images-idx3-ubyte.gz", SOURCE / "t10k-labels-idx1-ubyte.gz"),
              ("train", SOURCE / "train-images-idx3-ubyte.gz", SOURCE / "train-labels-idx1-ubyte.gz")]
    missing = [str(p) for _, images, labels in splits for p in (images, labels) if not p.exists()]
    if missing:
        print(f"error: {missing[0]} not found: install Debian's dataset-fashion-mnist "
              "(apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 2
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, image_path, label_path in splits:
        images, labels = read_idx(image_path), read_idx(label_path)
        for index in range(min(len(images), args.num - len(rows))):
            name = f"images/{split}_{index:05d}.png"
            padded = np.pad(images[index], PAD)  # (28, 28) -> (32, 32), black border
            Image.fromarray(padded, mode="L").save(out / name)
            label = int(labels[index])
            ink = float((images[index] >= 255 * INK_THRESHOLD).mean())
            rows.append({"file_name": name, "text": captions(ARTICLES[label]), "group": GROUPS[label],
                         "ink": round(ink, 4)})
        if len(rows) >= args.num:
            break
    temporary = out / "metadata.jsonl.tmp"
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(temporary, out / "metadata.jsonl")  # the folder is complete only once this exists
    print(f"wrote {len(rows)} records to {out} (articles: {', '.join(ARTICLES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

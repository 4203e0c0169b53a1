"""Can a run's discriminator tell who is where, and which shape is which? (issue 12)

    python benchmarks/binding_probe.py runs/NAME [--num 200]

Shapes: on real one-object images, D scores each image with its caption and with the same caption
with the shape replaced by each other shape; prints, per real shape, the mean logit of each
caption and how often the true shape's caption scores highest, and the cosine between D's
condition vectors of the shape captions (a D that puts two shapes' captions together cannot teach
G to draw them apart).

Binding:
on real two-object shapes images (objects that differ in shape and colour), D scores the image with
its true caption and with captions made of the same words that describe another scene: the objects
swapped ("B left of A"), the colours exchanged between the shapes, and a true paraphrase (a control
that must score like the true caption). Prints the mean logit of each, how often the true caption
beats each contradiction, and the cosine between the condition vectors of the true caption and each
other one. A D that cannot tell swapped objects (wins near 0.5) gives G no signal to place them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cgan.checkpoint import list_checkpoints, load_weights  # noqa: E402
from cgan.config import load_config  # noqa: E402
from cgan.data import ShapesDataset, image_to_tensor  # noqa: E402
from cgan.data import shapes as shapes_lib  # noqa: E402
from cgan.pipeline import condition_input  # noqa: E402
from cgan.text_encoder import FrozenTextEncoder, TextEmbeddingCache  # noqa: E402
from cgan.training import build_discriminator  # noqa: E402


def probe_captions(scene_truth: dict) -> dict[str, str] | None:
    """The true caption and its contradictions for a two-object scene, or None for other scenes."""
    objects, relation = scene_truth["objects"], scene_truth["relation"]
    if len(objects) != 2 or objects[0]["color"] == objects[1]["color"] or objects[0]["shape"] == objects[1]["shape"]:
        return None
    a, b = objects
    exchanged = shapes_lib.exchange_colors(a, b)
    return {"true": shapes_lib.paraphrases([a, b], relation)[0],
            "paraphrase (true)": shapes_lib.paraphrases([a, b], relation)[2],
            "objects swapped": shapes_lib.paraphrases([b, a], relation)[0],
            "colours exchanged": shapes_lib.paraphrases(exchanged, relation)[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder (its newest checkpoint is probed)")
    parser.add_argument("--num", type=int, default=200, help="two-object images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(Path(args.run) / "config.yaml")
    state = list_checkpoints(args.run)[-1]
    dataset = ShapesDataset(num_images=20 * args.num, resolution=config.data.resolution, split="train", seed=7)
    encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length)
    cache = TextEmbeddingCache(encoder)
    D = build_discriminator(config, dataset.schema, encoder.dim)
    D.load_state_dict(load_weights(state / "D.safetensors"))
    D.eval()
    images, attributes, captions = [], [], {}
    for index in range(len(dataset)):
        scene = dataset.scene(index)
        probe = probe_captions(scene.truth())
        if probe is None:
            continue
        for kind, caption in probe.items():
            captions.setdefault(kind, []).append(caption)
        images.append(image_to_tensor(shapes_lib.render(scene, config.data.resolution)))
        attributes.append(dataset.schema.validate(scene.attributes))
        if len(images) == args.num:
            break
    images = torch.stack(images)
    print(f"{state}: {len(images)} real two-object images at {config.data.resolution} px")
    print(f"{'caption':<20}{'mean logit':>12}{'true wins':>11}{'cond cosine':>13}")
    with torch.no_grad():
        conditions = {k: condition_input(cache, dataset.schema, c, attributes, "cpu") for k, c in captions.items()}
        logits = {k: D(images, c) for k, c in conditions.items()}
        vectors = {k: D.condition(c).cond_vector for k, c in conditions.items()}
    for kind in captions:
        wins = (logits["true"] > logits[kind]).float().mean() if kind != "true" else float("nan")
        cosine = F.cosine_similarity(vectors["true"], vectors[kind]).mean()
        print(f"{kind:<20}{logits[kind].mean():>12.2f}{wins:>11.2f}{cosine:>13.4f}")
    shape_probe(D, cache, dataset, config.data.resolution, args.num)
    return 0


def shape_probe(D, cache, dataset, resolution: int, num: int) -> None:
    images, attributes, objects = [], [], []
    for index in range(len(dataset)):
        scene = dataset.scene(index)
        if len(scene.objects) == 1:
            images.append(image_to_tensor(shapes_lib.render(scene, resolution)))
            attributes.append(dataset.schema.validate(scene.attributes))
            objects.append(scene.objects[0])
        if len(images) == num:
            break
    images = torch.stack(images)
    shapes = shapes_lib.SHAPES
    with torch.no_grad():
        conditions = {s: condition_input(cache, dataset.schema, [shapes_lib.paraphrases([{**o, "shape": s}], None)[0]
                                                                 for o in objects], attributes, "cpu") for s in shapes}
        logits = torch.stack([D(images, conditions[s]) for s in shapes], dim=1)  # (N, shapes)
        vectors = {s: D.condition(conditions[s]).cond_vector for s in shapes}
    print(f"\none-object images ({len(images)}): mean logit of each shape's caption; 'right' = the true shape's "
          "caption scores highest")
    print(f"{'real shape':<12}" + "".join(f"{s:>10}" for s in shapes) + f"{'right':>8}")
    truth = torch.tensor([shapes.index(o["shape"]) for o in objects])
    for k, shape in enumerate(shapes):
        rows = truth == k
        right = (logits[rows].argmax(1) == k).float().mean()
        print(f"{shape:<12}" + "".join(f"{v:>10.2f}" for v in logits[rows].mean(0).tolist()) + f"{right:>8.2f}")
    print("cosine of D's condition vectors, caption of one shape vs another (same colour and attributes):")
    for a in shapes:
        print(f"{a:<12}" + "".join(f"{F.cosine_similarity(vectors[a], vectors[b]).mean():>10.3f}" for b in shapes))


if __name__ == "__main__":
    sys.exit(main())

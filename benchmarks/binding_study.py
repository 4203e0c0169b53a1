"""Which discriminator can learn who is where? A supervised study on real images (issue 12).

    python benchmarks/binding_study.py --variant "base:" \
        --variant "text2:model.text_layers=2" [--steps 1500] [--resolution 32]

In GAN training the generator learns what D can tell apart (shapes came only after D could tell a
square from a circle), and on two-object prompts D tells nothing: it scores "A left of B" and
"B left of A" alike on real images. This trains each variant's D from scratch, with no generator,
as a matcher of real two-object images (objects differing in shape and colour) against captions:
the true caption (any paraphrase) is the positive; the objects swapped, the colours exchanged
between the shapes, and one shape or colour replaced are the negatives (logistic loss, balanced).
Every `--eval-every` steps it prints, on fresh images, how often the true caption outscores each
kind of negative (0.5 = chance): a variant whose "swapped" and "exchanged" stay at 0.5 cannot
teach G to bind colours to shapes or to place them. One thread, as a fair timing.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from bench_utils import cpu_flags  # noqa: E402
from cgan.core.config import load_config  # noqa: E402
from cgan.data import ShapesDataset, image_to_tensor  # noqa: E402
from cgan.data import shapes as shapes_lib  # noqa: E402
from cgan.nets.sampling import condition_input  # noqa: E402
from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache  # noqa: E402
from cgan.nets.factory import build_discriminator  # noqa: E402
from cgan.train.terms import discriminator_heads  # noqa: E402

KINDS = ("swapped", "exchanged", "replaced")


def captions_for(scene: shapes_lib.Scene, rng: random.Random) -> dict[str, str]:
    """A random true paraphrase and one negative of each kind for a two-object scene."""
    truth = scene.truth()
    (a, b), relation = truth["objects"], truth["relation"]
    exchanged = shapes_lib.exchange_colors(a, b)
    replaced = shapes_lib.contradictions([a, b], relation, "all", salt=rng.randrange(1 << 30))[:2]
    return {"true": rng.choice(shapes_lib.paraphrases([a, b], relation)),
            "swapped": rng.choice(shapes_lib.paraphrases([b, a], relation)),
            "exchanged": rng.choice(shapes_lib.paraphrases(exchanged, relation)),
            "replaced": rng.choice(replaced)}


def two_object_pool(num: int, resolution: int, seed: int) -> tuple[torch.Tensor, list, list]:
    """-> images (N, 3, R, R), scenes, attribute dicts: real two-object scenes whose objects differ
    in both shape and colour (the ones where binding is the question)."""
    dataset = ShapesDataset(num_images=20 * num, resolution=resolution, split="all", seed=seed)
    images, scenes, attributes = [], [], []
    for index in range(len(dataset)):
        scene = dataset.scene(index)
        objects = scene.objects
        if len(objects) != 2 or objects[0]["color"] == objects[1]["color"] or \
                objects[0]["shape"] == objects[1]["shape"]:
            continue
        images.append(image_to_tensor(shapes_lib.render(scene, resolution)))
        scenes.append(scene)
        attributes.append(dataset.schema.validate(scene.attributes))
        if len(images) == num:
            break
    return torch.stack(images), scenes, attributes


def evaluate(D, cache, schema, images, scenes, attributes) -> dict[str, float]:
    rng = random.Random(1)
    sets = [captions_for(s, rng) for s in scenes]
    D.eval()
    with torch.no_grad():
        logits = {k: D(images, condition_input(cache, schema, [c[k] for c in sets], attributes, "cpu")).scores()
                  for k in ("true",) + KINDS}
    D.train()
    return {k: float((logits["true"] > logits[k]).float().mean()) for k in KINDS}


def run_variant(name: str, overrides: list[str], args, pools, cache, encoder_dim: int) -> list[dict]:
    torch.manual_seed(args.seed)
    config = load_config(ROOT / "configs/shapes.yaml", [f"data.resolution={args.resolution}", *overrides])
    (train_images, train_scenes, train_attrs), (eval_images, eval_scenes, eval_attrs), schema = pools
    D = build_discriminator(config.model, schema=schema, text_dim=encoder_dim, resolution=config.data.resolution,
                            **discriminator_heads(config))
    optimizer = torch.optim.Adam(D.parameters(), lr=config.train.lr_d, betas=tuple(config.train.betas))
    rng = random.Random(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = [rng.randrange(len(train_scenes)) for _ in range(args.batch)]
        sets = [captions_for(train_scenes[i], rng) for i in rows]
        attrs = [train_attrs[i] for i in rows]
        images = train_images[rows]
        positives = D(images, condition_input(cache, schema, [c["true"] for c in sets], attrs, "cpu")).scores()
        negatives = torch.stack([D(images, condition_input(cache, schema, [c[k] for c in sets], attrs, "cpu")).scores()
                                 for k in KINDS])  # (kinds, B)
        loss = F.softplus(-positives).mean() + F.softplus(negatives).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            wins = evaluate(D, cache, schema, eval_images, eval_scenes, eval_attrs)
            point = {"variant": name, "step": step, "pairs": step * args.batch, "loss": round(loss.item(), 4),
                     "seconds": round(time.perf_counter() - start, 1), **{k: round(v, 3) for k, v in wins.items()}}
            curve.append(point)
            print(json.dumps(point), flush=True)
    return curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME:OVERRIDES (space-separated config overrides on configs/shapes.yaml)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the curves here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU features: {cpu_flags()}; {args.threads} thread(s); {args.resolution} px", flush=True)
    config = load_config(ROOT / "configs/shapes.yaml")
    encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length)
    cache = TextEmbeddingCache(encoder)
    train_pool = two_object_pool(4000, args.resolution, seed=11)
    eval_pool = two_object_pool(400, args.resolution, seed=12)
    schema = ShapesDataset(num_images=1, resolution=args.resolution).schema
    curves = []
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        curves += run_variant(name, overrides.split(), args, (train_pool, eval_pool, schema), cache, encoder.dim)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(curves, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

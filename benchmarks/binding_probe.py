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

Fakes (--fakes): G_ema draws the same two-object captions; the shapes reader sorts its images into
drawn right (the two objects asked for, in either place), colours exchanged and other; on each
group D scores the image with the true caption and with the colours-exchanged one. Where G exchanged the colours, a D that reads fakes as it reads real
images prefers the exchanged caption (the one that describes the image); if it still prefers the
true one, its binding knowledge does not reach G's images and G gets no signal to fix them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from cgan.core.files import load_weights
from cgan.train.checkpoint import list_checkpoints  # noqa: E402
from cgan.core.config import load_config  # noqa: E402
from cgan.data import ShapesDataset, image_to_tensor  # noqa: E402
from cgan.data import shapes as shapes_lib  # noqa: E402
from cgan.nets.sampling import condition_input  # noqa: E402
from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache  # noqa: E402
from cgan.nets.factory import build_discriminator, build_generator  # noqa: E402
from cgan.train.terms import discriminator_heads  # noqa: E402


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
            "colours exchanged": shapes_lib.paraphrases(exchanged, relation)[0],
            "shapes exchanged": shapes_lib.paraphrases(shapes_lib.exchange_shapes(a, b), relation)[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder (its newest checkpoint is probed)")
    parser.add_argument("--num", type=int, default=200, help="two-object images")
    parser.add_argument("--fakes", action="store_true", help="also probe D on G_ema's images (see above)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(Path(args.run) / "config.yaml")
    state = list_checkpoints(args.run)[-1]
    dataset = ShapesDataset(num_images=20 * args.num, resolution=config.data.resolution, split="train", seed=7)
    encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length)
    cache = TextEmbeddingCache(encoder)
    D = build_discriminator(config.model, schema=dataset.schema, text_dim=encoder.dim,
                            resolution=config.data.resolution, **discriminator_heads(config))
    D.load_state_dict(load_weights(state / "D.safetensors"))
    D.eval()
    images, attributes, captions, objects = [], [], {}, []
    for index in range(len(dataset)):
        scene = dataset.scene(index)
        probe = probe_captions(scene.truth())
        if probe is None:
            continue
        for kind, caption in probe.items():
            captions.setdefault(kind, []).append(caption)
        objects.append(scene.truth()["objects"])
        images.append(image_to_tensor(shapes_lib.render(scene, config.data.resolution)))
        attributes.append(dataset.schema.validate(scene.attributes))
        if len(images) == args.num:
            break
    images = torch.stack(images)
    print(f"{state}: {len(images)} real two-object images at {config.data.resolution} px")
    print(f"{'caption':<20}{'mean logit':>12}{'true wins':>11}{'cond cosine':>13}{'contrastive':>13}{'true wins':>11}")
    with torch.no_grad():
        conditions = {k: condition_input(cache, dataset.schema, c, attributes, "cpu") for k, c in captions.items()}
        outputs = {k: D(images, c) for k, c in conditions.items()}
        logits = {k: out.scores() for k, out in outputs.items()}
        vectors = {k: out.cond.cond_vector for k, out in outputs.items()}
        plain = outputs["true"].plain
        similarity = {k: contrastive_cosines(D, plain, outputs["true"].cond, out.cond)[1] for k, out in outputs.items()}
    for kind in captions:
        wins = (logits["true"] > logits[kind]).float().mean() if kind != "true" else float("nan")
        cosine = F.cosine_similarity(vectors["true"], vectors[kind]).mean()
        line = f"{kind:<20}{logits[kind].mean():>12.2f}{wins:>11.2f}{cosine:>13.4f}"
        if similarity[kind] is not None:  # the contrastive embedding's cosine with the image, and its wins
            line += f"{similarity[kind].mean():>13.3f}{(similarity['true'] > similarity[kind]).float().mean():>11.2f}"
        print(line)
    shape_probe(D, cache, dataset, config.data.resolution, args.num)
    if args.fakes:
        fake_probe(D, config, state, cache, dataset.schema, captions, attributes, objects)
    return 0


def fake_probe(D, config, state: Path, cache, schema, captions: dict[str, list[str]], attributes: list,
               objects: list[list[dict]]) -> None:
    """objects: per caption, the two objects of its scene (their shape and colour)."""
    from cgan.eval.faithfulness import HEADS, FaithfulnessReader
    from cgan.nets.sampling import generate

    G = build_generator(config.model, schema=schema, text_dim=cache.encoder.dim,
                        resolution=config.data.resolution).eval().requires_grad_(False)
    G.load_state_dict(load_weights(state / "G_ema.safetensors"))
    true, exchanged = captions["true"], captions["colours exchanged"]
    with torch.no_grad():
        fakes = generate(G, cache, schema, true, attributes, list(range(len(true))))
        pred = FaithfulnessReader.load().predict(fakes)
        out_true = D(fakes, condition_input(cache, schema, true, attributes, "cpu"))
        out_exchanged = D(fakes, condition_input(cache, schema, exchanged, attributes, "cpu"))
        logit_true, logit_exchanged = out_true.scores(), out_exchanged.scores()
        sim_true, sim_exchanged = contrastive_cosines(D, out_true.plain, out_true.cond, out_exchanged.cond)
    # what the reader saw and what each caption names, as sets of (shape, colour) pairs
    drawn = [{(HEADS["shape0"][pred["shape0"][i]], HEADS["color0"][pred["color0"][i]]),
              (HEADS["shape1"][pred["shape1"][i]], HEADS["color1"][pred["color1"][i]])} for i in range(len(true))]
    kinds = lambda scene: {(o["shape"], o["color"]) for o in scene}  # noqa: E731
    groups = {"drawn right": [], "colours exchanged": [], "other": []}
    for i, (a, b) in enumerate(objects):
        kind = ("drawn right" if drawn[i] == kinds([a, b]) else
                "colours exchanged" if drawn[i] == kinds(shapes_lib.exchange_colors(a, b)) else "other")
        groups[kind].append(i)
    print(f"\nG_ema's images of the same {len(true)} two-object captions, sorted by the shapes reader; "
          "D's mean logit with the true and the colours-exchanged caption, and how often it prefers the true one")
    print("(logit: D's output; contrastive: the cosine of D's image and condition embeddings, where "
          "loss.contrastive is on)")
    print(f"{'group':<20}{'images':>8}{'true':>8}{'exchanged':>11}{'prefers true':>14}"
          f"{'contrastive: true':>19}{'exchanged':>11}{'prefers true':>14}")
    for kind, rows in groups.items():
        if rows:
            r = torch.tensor(rows)
            line = f"{kind:<20}{len(rows):>8}{logit_true[r].mean():>8.2f}{logit_exchanged[r].mean():>11.2f}" \
                   f"{(logit_true[r] > logit_exchanged[r]).float().mean():>14.2f}"
            if sim_true is not None:
                line += f"{sim_true[r].mean():>19.3f}{sim_exchanged[r].mean():>11.3f}" \
                        f"{(sim_true[r] > sim_exchanged[r]).float().mean():>14.2f}"
            print(line)


def contrastive_cosines(D, plain, cond_a, cond_b) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Cosine (B,) of D's contrastive image embedding with each condition's, or (None, None) without one."""
    if plain is None or getattr(D, "embed_image", None) is None:
        return None, None
    image, a = D.contrastive_embeddings(plain, cond_a)
    _, b = D.contrastive_embeddings(plain, cond_b)
    return F.cosine_similarity(image, a), F.cosine_similarity(image, b)


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
        logits = torch.stack([D(images, conditions[s]).scores() for s in shapes], dim=1)  # (N, shapes)
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

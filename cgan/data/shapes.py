"""The built-in `shapes` data set: procedural compositional scenes with exact ground truth.

One or two objects (shape x colour) per image, never overlapping; two-object scenes stand in
a relation (left of, right of, above, below) with a clear margin. Attributes per image:
style (flat | outline | shaded), background (light | dark), size in [0, 1] (object scale).

Held-out compositions: the colour-shape pairs in HELDOUT_PAIRS never appear in the `train`
split (as either object); every `heldout` scene contains at least one of them. Each colour
and each shape is still seen in training, only these pairings are new.

Item i of a data set is a pure function of (seed, i): the same on every machine and run.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230),
    "yellow": (240, 210, 40), "purple": (150, 60, 200), "orange": (245, 140, 30),
}
RELATIONS = ("left of", "right of", "above", "below")
STYLES = ("flat", "outline", "shaded")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"light": (235, 235, 230), "dark": (30, 30, 36)}
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("green", "diamond"), ("blue", "circle"), ("yellow", "square")})
SPLITS = ("train", "heldout", "all")

SCHEMA: dict[str, Any] = {
    "style": {"type": "categorical", "values": list(STYLES)},
    "background": {"type": "categorical", "values": list(BACKGROUNDS)},
    "size": {"type": "continuous", "range": [0.0, 1.0]},
}

MARGIN = 0.04  # free border around every object, in image widths
GAP = 0.08  # minimum free space between two objects


@dataclass
class Scene:
    """Ground truth of one image. x, y: object centre in [0, 1] (y grows downward); size: diameter."""

    objects: list[dict[str, Any]]
    relation: str | None  # objects[0] <relation> objects[1]
    style: str
    background: str
    size: float
    captions: list[str] = field(default_factory=list)

    @property
    def attributes(self) -> dict[str, Any]:
        return {"style": self.style, "background": self.background, "size": self.size}

    def truth(self) -> dict[str, Any]:
        return {"objects": self.objects, "relation": self.relation}


def describe(obj: dict[str, Any]) -> str:
    return f"{obj['color']} {obj['shape']}"


def paraphrases(objects: list[dict[str, Any]], relation: str | None) -> list[str]:
    """Every caption that describes the scene; the first is canonical."""
    if relation is None:
        a = describe(objects[0])
        return [f"a {a}", f"one {a}", f"a single {a}"]
    a, b = describe(objects[0]), describe(objects[1])
    forms = {
        "left of": [f"a {a} left of a {b}", f"a {a} to the left of a {b}", f"a {b} right of a {a}",
                    f"a {b} to the right of a {a}"],
        "right of": [f"a {a} right of a {b}", f"a {a} to the right of a {b}", f"a {b} left of a {a}",
                     f"a {b} to the left of a {a}"],
        "above": [f"a {a} above a {b}", f"a {a} on top of a {b}", f"a {b} below a {a}", f"a {b} under a {a}"],
        "below": [f"a {a} below a {b}", f"a {a} under a {b}", f"a {b} above a {a}", f"a {b} on top of a {a}"],
    }
    return forms[relation]


def contradictions(objects: list[dict[str, Any]], relation: str | None, split: str, salt: int = 0) -> list[str]:
    """Captions made of the scene's own words that describe another scene: hard negatives for the
    discriminator, one per kind of mistake a generator makes.

    - every scene: one object's shape replaced, and one object's colour replaced (so D must read
      shape and colour, not only the layout);
    - two objects: also the objects swapped (the relation reversed) and, where the colours and
      shapes differ, the colours exchanged between the shapes and the shapes exchanged between the
      colours (the only one of these that D cannot reject by the colours' places alone).

    Each is worded as any of its scene's paraphrases. The replacements and the wording are drawn by
    a generator seeded with the scene and `salt` (the record's index: each image of a composition
    gets its own replacements, so D meets every wrong shape and colour of every composition), so
    the list is a pure function of the scene and the salt. Colour-shape pairs the split must not
    show (held out of `train`) never appear, and two objects never become identical."""
    rng = random.Random(repr([(o["shape"], o["color"]) for o in objects]) + str(relation) + f"/{salt}")
    scenes: list[list[dict[str, Any]]] = []
    for field_name, values in (("shape", SHAPES), ("color", tuple(COLORS))):
        target = rng.randrange(len(objects))
        options = []
        for value in values:
            changed = [dict(o) for o in objects]
            changed[target][field_name] = value
            kinds = [(o["shape"], o["color"]) for o in changed]  # objects also carry a place and a size
            if value != objects[target][field_name] and (len(kinds) == 1 or kinds[0] != kinds[1]):
                options.append(changed)
        allowed = [s for s in options if all(_pair_allowed(o["color"], o["shape"], split) for o in s)]
        if allowed:
            scenes.append(rng.choice(allowed))
    if relation is not None:
        a, b = objects
        scenes.append([b, a])
        if a["color"] != b["color"] and a["shape"] != b["shape"]:
            scenes += [exchange_colors(a, b), exchange_shapes(a, b)]
    allowed = [s for s in scenes if all(_pair_allowed(o["color"], o["shape"], split) for o in s)]
    # any paraphrase, as the true captions are: negatives in one form only would let D tell them
    # from the true captions by their wording, without looking at the image
    return [rng.choice(paraphrases(s, relation)) for s in allowed]


def exchange_colors(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The two objects with their colours exchanged (shapes and order kept): the binding mistake."""
    return [{"shape": a["shape"], "color": b["color"]}, {"shape": b["shape"], "color": a["color"]}]


def exchange_shapes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The two objects with their shapes exchanged (colours and order kept): the other binding mistake.
    Unlike the objects swapped or the colours exchanged, a caption of it can only be told from the
    true one by which shape is where: the colours are where the true caption puts them."""
    return [{"shape": b["shape"], "color": a["color"]}, {"shape": a["shape"], "color": b["color"]}]


def _pair_allowed(color: str, shape: str, split: str) -> bool:
    return split != "train" or (color, shape) not in HELDOUT_PAIRS


def _object_diameter(size: float, num_objects: int) -> float:
    return 0.30 + 0.35 * size if num_objects == 1 else 0.22 + 0.16 * size


def sample_scene(rng: random.Random, split: str = "train") -> Scene:
    if split not in SPLITS:
        raise ValueError(f"shapes split: expected one of {', '.join(SPLITS)}, got {split!r}")
    while True:
        num_objects = rng.choice((1, 2))
        objects = [{"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS))} for _ in range(num_objects)]
        if num_objects == 2 and objects[0] == objects[1]:
            continue  # two identical objects make "a red circle left of a red circle" ambiguous
        pairs = [(o["color"], o["shape"]) for o in objects]
        if split == "train" and any(p in HELDOUT_PAIRS for p in pairs):
            continue
        if split == "heldout" and not any(p in HELDOUT_PAIRS for p in pairs):
            continue
        break
    size = rng.random()
    diameter = _object_diameter(size, num_objects)
    low, high = diameter / 2 + MARGIN, 1 - diameter / 2 - MARGIN
    relation = None
    if num_objects == 1:
        objects[0].update(x=rng.uniform(low, high), y=rng.uniform(low, high))
    else:
        relation = rng.choice(RELATIONS)
        while True:  # rejection: separated along the relation's axis, roughly aligned across it
            along = sorted(rng.uniform(low, high) for _ in range(2))
            across = [rng.uniform(low, high) for _ in range(2)]
            distance = along[1] - along[0]
            if distance >= diameter + GAP and abs(across[0] - across[1]) <= 0.5 * distance:
                break
        first, second = (along[0], along[1]) if relation in ("left of", "above") else (along[1], along[0])
        if relation in ("left of", "right of"):
            objects[0].update(x=first, y=across[0])
            objects[1].update(x=second, y=across[1])
        else:
            objects[0].update(x=across[0], y=first)
            objects[1].update(x=across[1], y=second)
    for obj in objects:
        obj["size"] = diameter
    scene = Scene(objects, relation, rng.choice(STYLES), rng.choice(list(BACKGROUNDS)), size)
    scene.captions = paraphrases(objects, relation)
    return scene


def _shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        r = radius * 0.85
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - radius), (cx + radius, cy + radius * 0.8), (cx - radius, cy + radius * 0.8)]
    if shape == "diamond":
        return [(cx, cy - radius), (cx + radius * 0.8, cy), (cx, cy + radius), (cx - radius * 0.8, cy)]
    return None  # circle


def _shape_mask(shape: str, cx: float, cy: float, radius: float, canvas: int) -> np.ndarray:
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    polygon = _shape_polygon(shape, cx, cy, radius)
    if polygon is None:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    return np.asarray(mask) > 127


def render(scene: Scene, resolution: int = 64, supersample: int = 4) -> Image.Image:
    """Draw the scene at resolution x resolution (RGB), anti-aliased by supersampling."""
    canvas = resolution * supersample
    pixels = np.empty((canvas, canvas, 3), dtype=np.float32)
    pixels[:] = BACKGROUNDS[scene.background]
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    for obj in scene.objects:
        cx, cy, radius = obj["x"] * canvas, obj["y"] * canvas, obj["size"] * canvas / 2
        mask = _shape_mask(obj["shape"], cx, cy, radius, canvas)
        color = np.array(COLORS[obj["color"]], dtype=np.float32)
        if scene.style == "outline":  # a ring: the shape minus a shrunken copy of itself
            stroke = max(0.16 * radius, 2.0 * supersample)
            inner_radius = max(radius - stroke * (2.0 if obj["shape"] == "triangle" else 1.0), 0.0)
            mask &= ~_shape_mask(obj["shape"], cx, cy, inner_radius, canvas)
            pixels[mask] = color
        elif scene.style == "shaded":  # lit from the top left
            t = ((xs - cx) + (ys - cy)) / (2 * radius)  # about -1 (top left) .. 1 (bottom right)
            shade = np.clip(1.0 - 0.45 * t, 0.45, 1.45)[..., None]
            lit = np.clip(color * shade, 0, 255)
            pixels[mask] = lit[mask]
        else:
            pixels[mask] = color
    image = Image.fromarray(pixels.round().astype(np.uint8), "RGB")
    return image.resize((resolution, resolution), Image.Resampling.BOX)


def scene_at(seed: int, index: int, split: str) -> Scene:
    """The scene of item `index` in the shapes set with this seed and split (deterministic)."""
    return sample_scene(random.Random(f"shapes/{seed}/{split}/{index}"), split)


def all_captions(split: str) -> list[str]:
    """Every caption the split can produce (for precomputing the text embedding cache)."""
    captions = []
    objects = [{"shape": s, "color": c} for c in COLORS for s in SHAPES]
    for a in objects:
        if split == "train" and not _pair_allowed(a["color"], a["shape"], split):
            continue
        if split != "heldout" or (a["color"], a["shape"]) in HELDOUT_PAIRS:
            captions += paraphrases([a], None)
        for b in objects:
            if a == b:
                continue
            pairs = [(a["color"], a["shape"]), (b["color"], b["shape"])]
            if split == "train" and any(p in HELDOUT_PAIRS for p in pairs):
                continue
            if split == "heldout" and not any(p in HELDOUT_PAIRS for p in pairs):
                continue
            for relation in RELATIONS:
                captions += paraphrases([a, b], relation)
    return sorted(set(captions))

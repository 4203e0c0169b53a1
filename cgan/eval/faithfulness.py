"""Prompt faithfulness: does a generated image show what its prompt and attributes asked for?

shapes: a small CNN (the "reader", shipped in cgan/assets/shapes_reader.safetensors) reads the
objects, their relation, style, background and object count; we generate from the captions and
attributes of shapes records (seen compositions: split=train; held-out compositions:
split=heldout) and compare. Custom folders (`--data DIR`, cgan.eval.custom_faithfulness): judges are
trained on the folder's own real images (80 %) for its attributes (continuous ones as low / middle /
high bins) and its captions
(as classes where they are few, by R-precision of a small image-text matcher where they are
free-form); their score on the other 20 % is the ceiling, then images generated from those 20 %
records are judged.

    python -m cgan.faithfulness train --out cgan/assets/shapes_reader.safetensors [--steps N]
    python -m cgan.faithfulness --model DIR [--num 500] [--seed 0] [--truncation 1.0] [--json]
    python -m cgan.faithfulness --model DIR --data FOLDER [--num 500] [--steps 1000] [--json]

Objects are canonicalised: the truth's order (`objects[0] <relation> objects[1]`) is arbitrary
w.r.t. position, so slot 0 is the left object (horizontal relations) or the top one (vertical)
and the relation is "left of" or "above" ("none" for one-object scenes).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import safe_open, save_file

from cgan.core.images import image_to_tensor
from cgan.data import ShapesDataset
from cgan.data import shapes as shapes_lib
from cgan.nets.export import ExportedModel
from cgan.nets.sampling import generate

NONE = "none"
HEADS: dict[str, tuple[str, ...]] = {
    "shape0": (*shapes_lib.SHAPES, NONE), "color0": (*shapes_lib.COLORS, NONE),
    "shape1": (*shapes_lib.SHAPES, NONE), "color1": (*shapes_lib.COLORS, NONE),
    "relation": ("left of", "above", NONE), "style": shapes_lib.STYLES,
    "background": tuple(shapes_lib.BACKGROUNDS), "count": ("1", "2"),
}
FIELDS = ("shape", "color", "relation", "style", "background", "count")
READER_SIZE = 64
DEFAULT_READER = Path(__file__).resolve().parent.parent / "assets" / "shapes_reader.safetensors"
TRAIN_DATA_SEED, CEILING_DATA_SEED, EVAL_DATA_SEED = 100, 101, 7
GenerateFn = Callable[[list[str], list[dict[str, Any]], list[int]], torch.Tensor]


def canonical_labels(truth: Mapping[str, Any], style: str, background: str) -> dict[str, int]:
    """One scene's truth -> class index per head, objects in canonical (left/top first) order."""
    objects, relation = list(truth["objects"]), truth["relation"]
    if relation in ("right of", "below"):  # objects[0] right of objects[1] == objects[1] left of objects[0]
        objects, relation = objects[::-1], {"right of": "left of", "below": "above"}[relation]
    second = objects[1] if len(objects) > 1 else {"shape": NONE, "color": NONE}
    names = {"shape0": objects[0]["shape"], "color0": objects[0]["color"], "shape1": second["shape"],
             "color1": second["color"], "relation": relation or NONE, "style": style, "background": background,
             "count": str(len(objects))}
    return {head: HEADS[head].index(value) for head, value in names.items()}


def to_input(images: torch.Tensor, size: int = READER_SIZE) -> torch.Tensor:
    """(B, 3, R, R) uint8 or float in [-1, 1] -> float (B, 3, size, size) in [-1, 1] (bilinear, antialiased)."""
    images = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float().clamp(-1, 1)
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images


def _conv(cin: int, cout: int, stride: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 if kernel % 2 else 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesReader(nn.Module):
    """Small CNN: image (B, 3, S, S) -> {head: logits (B, classes)}. One linear layer serves all heads.

    64 -> 32 (4x4 stride-2 stem) -> 16 -> 8 -> a 4x4 grid of 32 features, flattened so that
    positions (which object is left or on top) survive.
    """

    def __init__(self, heads: Mapping[str, int], width: int = 32):
        super().__init__()
        w = width
        self.heads = dict(heads)
        self.trunk = nn.Sequential(_conv(3, w // 2, 2, 4), _conv(w // 2, w, 1), _conv(w, 3 * w // 2, 2),
                                   _conv(3 * w // 2, 2 * w, 1), _conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w, 1),
                                   nn.Conv2d(3 * w, 32, 1), nn.AdaptiveAvgPool2d(4))
        self.hidden = nn.Sequential(nn.Linear(32 * 16, 128), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.out = nn.Linear(128, sum(self.heads.values()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> (B, 128): what the heads read."""
        return self.hidden(rearrange(self.trunk(images), "b c h w -> b (c h w)"))  # (B, 32 * 4 * 4) -> (B, 128)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.out(self.features(images))  # (B, sum of class counts)
        return dict(zip(self.heads, logits.split(list(self.heads.values()), dim=1)))


def _load_net(path: Path) -> tuple[ShapesReader, dict[str, Any], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    config = json.loads(metadata["config"])
    net = ShapesReader({h: len(c) for h, c in config["heads"].items()}, config["width"])
    net.load_state_dict(state)
    return net.eval(), config, {k: json.loads(v) for k, v in metadata.items() if k != "config"}


class FaithfulnessReader:
    """The trained shapes reader: images -> canonical class indices per head."""

    def __init__(self, net: ShapesReader, config: dict[str, Any], info: dict[str, Any], path: Path | None = None):
        self.net, self.config, self.info, self.path = net.eval(), config, info, path
        self.ceiling: dict[str, Any] = info.get("ceiling", {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> "FaithfulnessReader":
        """The reader at `path`, by default the one shipped in the package."""
        path = Path(path) if path is not None else DEFAULT_READER
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shapes reader not found; train one with "
                                    "`python -m cgan.faithfulness train --out PATH`")
        return cls(*_load_net(path), path=path)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """(B, 3, R, R) in [-1, 1] (or uint8) -> {head: (B,) long}, decoded consistently: one object
        -> slot 1 and relation are "none"; two objects -> they are not."""
        parts = [self.net(to_input(chunk.cpu(), self.config["size"])) for chunk in images.split(batch_size)]
        logits = {head: torch.cat([p[head] for p in parts]) for head in self.net.heads}
        two = logits["count"].argmax(1) == 1
        pred = {head: value.argmax(1) for head, value in logits.items()}
        for head in ("shape0", "color0"):
            pred[head] = logits[head][:, :-1].argmax(1)  # slot 0 is never empty
        for head in ("shape1", "color1", "relation"):
            pred[head] = torch.where(two, logits[head][:, :-1].argmax(1), len(HEADS[head]) - 1)
        return pred


def score(pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Per-field accuracy and all-correct rates (canonical predictions vs canonical truth).

    shape/color: over all objects of the truth; relation: over two-object scenes; all-correct,
    one object: count, shape, colour and style; two objects: count, both objects and relation."""
    ok = {head: pred[head].cpu() == target[head].cpu() for head in HEADS}
    two = target["count"].cpu() == 1
    one, n_two = ~two, int(two.sum())

    def rate(mask: torch.Tensor) -> float | None:
        return round(float(mask.float().mean()), 4) if mask.numel() else None

    accuracy = {f: rate(torch.cat([ok[f + "0"], ok[f + "1"][two]])) for f in ("shape", "color")}
    accuracy.update(relation=rate(ok["relation"][two]), style=rate(ok["style"]),
                    background=rate(ok["background"]), count=rate(ok["count"]))
    all_one = ok["count"] & ok["shape0"] & ok["color0"] & ok["style"]
    all_two = ok["count"] & ok["shape0"] & ok["color0"] & ok["shape1"] & ok["color1"] & ok["relation"]
    # two objects that differ in the field: both values drawn, but each at the other object's place
    # (a binding error), over the scenes where a swap can be seen
    p, t = ({h: v.cpu() for h, v in d.items()} for d in (pred, target))
    swapped = {f: rate(((p[f + "0"] == t[f + "1"]) & (p[f + "1"] == t[f + "0"]))[two & (t[f + "0"] != t[f + "1"])])
               for f in ("shape", "color")}
    return {"num": len(two), "num_one": len(two) - n_two, "num_two": n_two, "accuracy": accuracy,
            "all_correct_one": rate(all_one[one]), "all_correct_two": rate(all_two[two]),
            "swapped_two": swapped, "confusion": {f: confusion(p, t, f, two) for f in ("shape", "color")}}


def confusion(pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], field: str,
              two: torch.Tensor) -> list[list[int]]:
    """Counts [truth][prediction] over every object of the truth, classes as in HEADS[field + "0"]."""
    truth = torch.cat([target[field + "0"], target[field + "1"][two]])
    guess = torch.cat([pred[field + "0"], pred[field + "1"][two]])
    size = len(HEADS[field + "0"])
    return torch.bincount(truth * size + guess, minlength=size * size).view(size, size).tolist()


def _render_one(job: tuple[int, int, str, int]) -> tuple[np.ndarray, dict[str, int]]:
    seed, index, split, resolution = job
    scene = shapes_lib.scene_at(seed, index, split)
    image = np.asarray(shapes_lib.render(scene, resolution), dtype=np.uint8)  # (R, R, 3)
    return image, canonical_labels(scene.truth(), scene.style, scene.background)


def render_set(num: int, split: str, seed: int, workers: int = 1, resolutions: tuple[int, ...] = (READER_SIZE,)
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`num` real shapes images of a split -> uint8 (N, 3, 64, 64) and canonical labels {head: (N,)}.
    Image i is drawn at resolutions[i % len(resolutions)], then resized to 64 as the reader does
    (so a 32 px entry looks like a 32 px model's image as the reader sees it)."""
    jobs = [(seed, i, split, resolutions[i % len(resolutions)]) for i in range(num)]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_render_one, jobs, chunksize=256)
    else:
        results = [_render_one(job) for job in jobs]
    images = torch.empty(num, 3, READER_SIZE, READER_SIZE, dtype=torch.uint8)
    for resolution in set(resolutions):
        idx = [i for i, job in enumerate(jobs) if job[3] == resolution]
        batch = rearrange(torch.from_numpy(np.stack([results[i][0] for i in idx])), "n h w c -> n c h w")
        images[idx] = ((to_input(batch) + 1) * 127.5).round().to(torch.uint8)  # (n, 3, 64, 64)
    return images, {head: torch.tensor([r[1][head] for r in results]) for head in HEADS}


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Robustness to generated images: some images at 32 px upsampled back (as a 32 px model's
    output is), pixel noise and a small per-channel colour offset. No flips: they change relations."""
    batch, _, size, _ = images.shape
    low = F.interpolate(F.avg_pool2d(images, 2), size=(size, size), mode="bilinear", align_corners=False)
    use_low = (torch.rand(batch, 1, 1, 1, generator=gen) < 0.3).float()
    images = use_low * low + (1 - use_low) * images
    noise = torch.randn(images.shape, generator=gen) * torch.rand(batch, 1, 1, 1, generator=gen) * 0.04
    offset = torch.randn(batch, 3, 1, 1, generator=gen) * 0.03
    return (images + noise + offset).clamp(-1, 1)


def train_steps(net: nn.Module, batch_loss: Callable[[torch.Generator], torch.Tensor], steps: int, seed: int,
                lr: float, log: Callable[[str], None] | None = None, name: str = "step") -> None:
    """AdamW with a one-cycle schedule for `steps` steps; batch_loss(gen) draws a batch with `gen`
    (seeded with `seed`) and returns its loss. Leaves `net` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 2), pct_start=0.15)
    start = time.time()
    for step in range(1, steps + 1):
        loss = batch_loss(gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log and (step % 100 == 0 or step == steps):
            log(f"{name} {step}/{steps}  loss {loss.item():.4f}  {time.time() - start:.0f}s")
    net.eval()


def fit(net: nn.Module, images: torch.Tensor, targets: Mapping[str, torch.Tensor], steps: int, batch_size: int,
        seed: int, size: int, masks: Mapping[str, torch.Tensor] | None = None, log: Callable[[str], None] | None = None,
        lr: float = 3e-3) -> None:
    """Train `net` on uint8 images (N, 3, R, R) with cross-entropy summed over heads (entries where
    masks[head] is False are ignored). Dropout draws from the global RNG: callers fork it."""

    def batch_loss(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = augment(to_input(images[idx], size), gen).contiguous(memory_format=torch.channels_last)
        logits = net(x)
        return sum(F.cross_entropy(logits[h], targets[h][idx], reduction="none")[masks[h][idx] if masks else ...]
                   .sum() / batch_size for h in logits)

    train_steps(net, batch_loss, steps, seed, lr, log)


def train_reader(out: str | Path, steps: int = 3000, batch_size: int = 64, num_images: int = 20_000,
                 num_ceiling: int = 2000, workers: int = 2, log: Callable[[str], None] = print,
                 command: str | None = None) -> dict[str, Any]:
    """Train the shapes reader on real split=all images (data seed 100; a third drawn at 32 px), measure
    its ceiling on real split=heldout images (data seed 101; at 64 px, and at 32 px) and save it (safetensors; config, ceiling and training
    details in the file's metadata). Weights are stored in float16 (the file stays ~0.5 MB)."""
    start = time.time()
    images, targets = render_set(num_images, "all", TRAIN_DATA_SEED, workers, resolutions=(64, 64, 32))
    log(f"rendered {num_images} training images in {time.time() - start:.0f}s")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ShapesReader({h: len(c) for h, c in HEADS.items()}).to(memory_format=torch.channels_last)
        fit(net, images, targets, steps, batch_size, seed=0, size=READER_SIZE, log=log)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
    net.load_state_dict(state)  # measure exactly what is shipped: the float16 weights
    config = {"format": "cgan-shapes-reader/1", "size": READER_SIZE, "width": 32, "heads": HEADS}
    reader = FaithfulnessReader(net, config, {})
    real, truth = render_set(num_ceiling, "heldout", CEILING_DATA_SEED, workers)
    ceiling = {**score(reader.predict(real), truth), "split": "heldout", "data_seed": CEILING_DATA_SEED}
    real_32, _ = render_set(num_ceiling, "heldout", CEILING_DATA_SEED, workers, resolutions=(32,))
    ceiling_32 = {**score(reader.predict(real_32), truth), "resolution": 32}
    training = {"steps": steps, "batch_size": batch_size, "num_images": num_images, "split": "all",
                "data_seed": TRAIN_DATA_SEED, "seconds": round(time.time() - start, 1),
                "threads": torch.get_num_threads(),
                "command": command or f"python -m cgan.faithfulness train --out {out} --steps {steps}"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"config": json.dumps(config), "ceiling": json.dumps(ceiling),
                                         "ceiling_32px": json.dumps(ceiling_32), "training": json.dumps(training)})
    tmp.chmod(0o644)  # safetensors writes 0600; a shipped asset must be readable by all
    tmp.replace(out)  # atomic: a reader never sees a half-written file
    log(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB) in {training['seconds']:.0f}s; ceiling on real "
        f"held-out images: {json.dumps(ceiling)}")
    return {"ceiling": ceiling, "training": training}


def as_exported_model(model: Any, device: str | torch.device):
    return model if isinstance(model, ExportedModel) else ExportedModel.from_pretrained(model, device=device)


def pipeline_generate_fn(pipe, truncation: float = 1.0, batch_size: int = 50) -> GenerateFn:
    """(prompts, attribute dicts, seeds) -> images in [-1, 1], in batches, from a CGANPipeline."""
    def run(prompts: list[str], attributes: list[dict[str, Any]], seeds: list[int]) -> torch.Tensor:
        attributes = [pipe.fill_unset(p, pipe.schema.validate({k: v for k, v in a.items() if k in pipe.schema.by_name}),
                                      s) for p, a, s in zip(prompts, attributes, seeds)]
        return torch.cat([generate(pipe.G, pipe.text_cache, pipe.schema, prompts[s:s + batch_size],
                                   attributes[s:s + batch_size], seeds[s:s + batch_size], truncation,
                                   pipe.device).float().cpu() for s in range(0, len(prompts), batch_size)])
    return run


def record_conditions(records: list[dict[str, Any]], tag: str) -> tuple[list[str], list[dict[str, Any]]]:
    """One caption per record (a seeded random paraphrase) and its attributes."""
    prompts = [random.Random(f"faithfulness/{tag}/{i}").choice(r["captions"]) for i, r in enumerate(records)]
    return prompts, [dict(r["attributes"]) for r in records]


def evaluate_shapes(generate_fn: GenerateFn, reader: FaithfulnessReader | None = None, num: int = 500,
                    seed: int = 0, data_seed: int = EVAL_DATA_SEED, resolution: int | None = None) -> dict[str, Any]:
    """Faithfulness on `num` seen (split=train) and `num` held-out (split=heldout) shapes records.
    With `resolution` (the model's), the same records' real images, rendered at that resolution
    (at most 64), are read too: the reference under "real". Usable during training: pass a
    generate_fn built on G_ema."""
    reader = reader or FaithfulnessReader.load()
    result: dict[str, Any] = {}
    for name, split, offset in (("seen", "train", 0), ("heldout", "heldout", 1_000_000)):
        dataset = ShapesDataset(num_images=num, split=split, seed=data_seed)
        records = [dataset.record(i) for i in range(num)]
        prompts, attributes = record_conditions(records, f"{seed}/{split}")
        images = generate_fn(prompts, attributes, [seed + offset + i for i in range(num)])
        truth = [canonical_labels(r["truth"], r["attributes"]["style"], r["attributes"]["background"])
                 for r in records]
        targets = {h: torch.tensor([t[h] for t in truth]) for h in HEADS}
        result[name] = score(reader.predict(images), targets)
        if resolution:
            real = torch.stack([image_to_tensor(shapes_lib.render(dataset.scene(i), min(resolution, READER_SIZE)))
                                for i in range(num)])
            result[name]["real"] = score(reader.predict(real), targets)
    return result


def evaluate_faithfulness(model: Any, num: int = 500, seed: int = 0, truncation: float = 1.0,
                          data_seed: int = EVAL_DATA_SEED, batch_size: int = 50, device: str = "cpu",
                          reader: FaithfulnessReader | str | Path | None = None) -> dict[str, Any]:
    """Shapes faithfulness of an exported model (a folder or a CGANPipeline) -> JSON-ready dict."""
    pipe = as_exported_model(model, device)
    reader = reader if isinstance(reader, FaithfulnessReader) else FaithfulnessReader.load(reader)
    start = time.time()
    result = evaluate_shapes(pipeline_generate_fn(pipe, truncation, batch_size), reader, num, seed, data_seed,
                             pipe.resolution)
    return {"kind": "shapes", "model": str(model) if not hasattr(model, "G") else None,
            "step": pipe.meta.get("step"), "resolution": pipe.resolution, "num": num, "seed": seed,
            "truncation": truncation, "data_seed": data_seed, **result,
            "reader": {"path": str(reader.path), "ceiling": reader.ceiling}, "seconds": round(time.time() - start, 1)}


def format_table(result: dict[str, Any], confusions: bool = False) -> str:
    """A human table of an evaluate_faithfulness / evaluate_custom result (shapes: with `confusions`,
    the shape and colour confusion matrices too)."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    head = (f"faithfulness of {result.get('model')} (step {result.get('step')}), seed {result['seed']}, "
            f"truncation {result['truncation']}")
    if result["kind"] == "custom":
        lines = [head + f", {result['num']} records of {result['data']} that the classifier was not trained on "
                 "(held out of the classifier, not of the generator's training data)",
                 f"{'attribute / caption':<24}{'ceiling (real)':>16}{'generated':>11}{'majority':>10}"]
        if result["ceiling"].get("caption_r_precision") is not None:
            lines[0] += ("; caption_r_precision: its own caption ranked first among up to 99 others by a "
                         "matcher trained on the folder (majority column: chance)")
        edges = result.get("bin_edges", {})
        if edges:
            lines[0] += "; " + ", ".join(f"{n}: {len(e) + 1} bins cut at {', '.join(f'{x:.3g}' for x in e)}"
                                         for n, e in edges.items())
        lines += [f"{n:<24}{fmt(result['ceiling'][n]):>16}{fmt(v):>11}{fmt(result['majority'][n]):>10}"
                  for n, v in result["accuracy"].items()]
        return "\n".join(lines)
    seen, held = result["seen"], result["heldout"]
    columns = [result["reader"]["ceiling"], seen.get("real", {}), seen, held.get("real", {}), held]
    lines = [head + f", {seen['num']} seen + {held['num']} held-out compositions",
             "reader ceiling: real held-out images at 64 px (from the reader file); real: the same records' "
             f"real images at {min(result['resolution'], READER_SIZE)} px",
             f"{'field':<24}{'ceiling':>9}{'seen real':>11}{'seen':>7}{'held-out real':>15}{'held-out':>10}"]
    rows = [(f, lambda r, f=f: r.get("accuracy", {}).get(f)) for f in FIELDS]
    rows += [("all-correct, 1 object", lambda r: r.get("all_correct_one")),
             ("all-correct, 2 objects", lambda r: r.get("all_correct_two"))]
    rows += [(f"{f}s swapped (2 obj)", lambda r, f=f: r.get("swapped_two", {}).get(f)) for f in ("shape", "color")]
    lines += [f"{name:<24}" + "".join(f"{fmt(get(c)):>{w}}" for c, w in zip(columns, (9, 11, 7, 15, 10)))
              for name, get in rows]
    if confusions:
        for part in ("seen", "heldout"):
            for f, matrix in held["confusion"].items() if part == "heldout" else seen["confusion"].items():
                names = HEADS[f + "0"]
                lines += [f"\n{part} {f}: rows = asked for, columns = read in the generated image",
                          " " * 10 + "".join(f"{n[:8]:>9}" for n in names)]
                lines += [f"{n[:9]:>10}" + "".join(f"{v:>9}" for v in row) for n, row in zip(names, matrix) if sum(row)]
    return "\n".join(lines)

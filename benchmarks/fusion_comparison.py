"""Cross-attention fusion vs the concat baseline: faithfulness per field, FID and diversity.

    python benchmarks/fusion_comparison.py --model cross_attention=runs/shapes64-cross_attention/model \
        --model concat=runs/shapes64-concat/model --num 500 --fid-num 1000 --out docs/fusion_comparison

Prints a table and writes OUT.json (every number) and OUT.png (the figure: per-field accuracy
bars, then the same prompts and seeds from each model side by side).

Faithfulness: cgan's shapes reader on `num` seen and `num` held-out compositions
(`cgan.eval.faithfulness.evaluate_faithfulness`). FID: `cgan.eval.fid_data.fid_model_vs_data` against
shapes/heldout. Diversity (mode collapse check): for one-object prompts, 16 seeds each, the
spread across seeds of the object's centroid (pixels) and of its area (relative), beside the
same spread over real one-object images.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from cgan.core.images import describe_condition, image_grid, image_to_tensor, tensor_to_images
from cgan.data import ShapesDataset
from cgan.data import shapes as shapes_lib
from cgan.eval.faithfulness import evaluate_faithfulness
from cgan.eval.fid_data import fid_model_vs_data
from cgan.pipeline import CGANPipeline

FIGURE_PROMPTS = [
    ("a red circle", {"style": "flat", "background": "light"}),
    ("a blue square", {"style": "outline", "background": "dark"}),
    ("a green triangle left of a yellow diamond", {"style": "flat", "background": "light"}),
    ("a purple circle above an orange square", {"style": "shaded", "background": "light"}),
    ("a red triangle", {"style": "flat", "background": "light"}),  # held-out composition
    ("a blue circle right of a green diamond", {"style": "flat", "background": "dark"}),  # both held out
]
DIVERSITY_PROMPTS = ["a red circle", "a blue square", "a green triangle", "a purple diamond", "an orange circle",
                     "a yellow square"]


def object_layout(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, R, R) in [-1, 1] -> foreground centroids (B, 2) in pixels and areas (B,) as a
    fraction of the image; foreground = pixels far from the corner (background) colour."""
    background = images[:, :, :2, :2].mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
    mask = ((images - background).abs().amax(dim=1) > 0.35).float()  # (B, R, R)
    size = images.shape[-1]
    coords = torch.arange(size, dtype=torch.float32)
    area = mask.sum(dim=(1, 2)).clamp(min=1)
    cy = (mask.sum(dim=2) * coords).sum(dim=1) / area
    cx = (mask.sum(dim=1) * coords).sum(dim=1) / area
    return torch.stack([cx, cy], dim=1), mask.mean(dim=(1, 2))


def spread(images: torch.Tensor) -> dict[str, float]:
    centroids, areas = object_layout(images)
    return {"centroid_std_px": float(centroids.std(dim=0).mean()),
            "area_cv": float(areas.std() / areas.mean().clamp(min=1e-6))}


def diversity(pipe: CGANPipeline, seeds: int = 16) -> dict[str, float]:
    per_prompt = [spread(pipe.generate_tensor(p, {"style": "flat", "background": "light"}, seeds, seed=100))
                  for p in DIVERSITY_PROMPTS]
    return {key: statistics.mean(d[key] for d in per_prompt) for key in per_prompt[0]}


def real_diversity(resolution: int, num: int = 200) -> dict[str, float]:
    dataset = ShapesDataset(num_images=4 * num, split="train", seed=7)
    one = [s for s in (dataset.scene(i) for i in range(4 * num)) if len(s.objects) == 1][:num]
    images = torch.stack([image_to_tensor(shapes_lib.render(s, resolution)) for s in one])
    return spread(images)


def field_value(entry: dict, part: str, key: str) -> float | None:
    """A per-field accuracy (shape, color, ...) or an all-correct rate of one set (seen / heldout)."""
    scores = entry["faithfulness"][part]
    return scores["accuracy"][key] if key in scores["accuracy"] else scores.get(key)


def bar_chart(results: dict[str, dict], fields: list[tuple[str, str, str]], width: int = 900) -> Image.Image:
    """Grouped bars: one group per (part, key) field, one bar per model, values in [0, 1]."""
    colours = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123)]
    font = ImageFont.load_default()
    height, top, bottom, left = 260, 30, 60, 40
    chart = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(chart)
    names = list(results)
    group_w = (width - left - 10) / len(fields)
    bar_w = group_w * 0.8 / len(names)
    plot_h = height - top - bottom
    for tick in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        draw.line([(left, y), (width - 10, y)], fill=(220, 220, 220))
        draw.text((4, y - 6), f"{tick:.1f}", fill=(0, 0, 0), font=font)
    for g, (label, part, key) in enumerate(fields):
        x0 = left + g * group_w + group_w * 0.1
        for m, name in enumerate(names):
            value = field_value(results[name], part, key)
            if value is None:
                continue
            x = x0 + m * bar_w
            draw.rectangle([x, top + plot_h * (1 - value), x + bar_w - 2, top + plot_h], fill=colours[m % 4])
            draw.text((x, top + plot_h * (1 - value) - 12), f"{value:.2f}", fill=(0, 0, 0), font=font)
        draw.text((x0, top + plot_h + 6), label, fill=(0, 0, 0), font=font)
    for m, name in enumerate(names):
        draw.rectangle([left + m * 200, 8, left + m * 200 + 12, 20], fill=colours[m % 4])
        draw.text((left + m * 200 + 18, 8), name, fill=(0, 0, 0), font=font)
    return chart


def samples_panel(pipes: dict[str, CGANPipeline], seeds: int = 4) -> Image.Image:
    """For each figure prompt, a row per model: the same seeds."""
    rows, labels = [], []
    for prompt, attrs in FIGURE_PROMPTS:
        for name, pipe in pipes.items():
            rows += tensor_to_images(pipe.generate_tensor(prompt, attrs, seeds, seed=0))
            labels.append(f"[{name}] {describe_condition(prompt, attrs)}")
    return image_grid(rows, seeds, labels, label_width=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeat for each model)")
    parser.add_argument("--num", type=int, default=500, help="faithfulness records per set (seen, held-out)")
    parser.add_argument("--fid-num", type=int, default=1000, help="images for FID (0 = skip)")
    parser.add_argument("--out", default="docs/fusion_comparison", help="writes OUT.json and OUT.png")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a model's numbers from an earlier OUT.json when model, step and N match")
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.model)
    pipes = {name: CGANPipeline.from_pretrained(path) for name, path in models.items()}
    out = Path(args.out)
    earlier = json.loads(out.with_suffix(".json").read_text())["models"] if args.reuse else {}
    results: dict[str, dict] = {}
    for name, path in models.items():
        old = earlier.get(name, {})
        if (old.get("model"), old.get("step"), old.get("faithfulness", {}).get("num"), old.get("fid", {}).get("num")) \
                == (path, pipes[name].meta.get("step"), args.num, args.fid_num or None):
            print(f"{name}: reusing the numbers in {out.with_suffix('.json')}")
            results[name] = old
            continue
        start = time.time()
        entry = {"model": path, "step": pipes[name].meta.get("step"), "images_seen": pipes[name].meta.get("images_seen")}
        entry["faithfulness"] = evaluate_faithfulness(pipes[name], num=args.num)
        entry["diversity"] = diversity(pipes[name])
        if args.fid_num:
            fid = fid_model_vs_data(path, "shapes", split="heldout", num=args.fid_num)
            entry["fid"] = {"value": fid.fid, "num": args.fid_num, "split": "heldout"}
        entry["seconds"] = round(time.time() - start, 1)
        results[name] = entry
    resolution = next(iter(pipes.values())).resolution
    results_real = {"diversity": real_diversity(resolution)}

    fields = [("shape", "seen", "shape"), ("colour", "seen", "color"), ("style", "seen", "style"),
              ("background", "seen", "background"), ("relation", "seen", "relation"),
              ("1 obj all", "seen", "all_correct_one"), ("2 obj all", "seen", "all_correct_two"),
              ("held-out 1", "heldout", "all_correct_one"), ("held-out 2", "heldout", "all_correct_two")]
    header = f"{'field':<22}" + "".join(f"{n:>18}" for n in results)
    print(header)
    for label, part, key in fields:
        cells = []
        for name in results:
            value = field_value(results[name], part, key)
            cells.append(f"{value:>18.3f}" if value is not None else f"{'-':>18}")
        print(f"{label + ' (' + part + ')':<22}" + "".join(cells))
    if args.fid_num:
        print(f"{'FID heldout N=' + str(args.fid_num):<22}" + "".join(f"{r['fid']['value']:>18.1f}" for r in results.values()))
    for key in ("centroid_std_px", "area_cv"):
        print(f"{key + ' (real ' + format(results_real['diversity'][key], '.2f') + ')':<22}"
              + "".join(f"{r['diversity'][key]:>18.2f}" for r in results.values()))

    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".json")).write_text(json.dumps({"models": results, "real": results_real}, indent=2))
    chart, panel = bar_chart(results, fields), samples_panel(pipes)
    figure = Image.new("RGB", (max(chart.width, panel.width), chart.height + panel.height), (255, 255, 255))
    figure.paste(chart, (0, 0))
    figure.paste(panel, (0, chart.height))
    figure.save(out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

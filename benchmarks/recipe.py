"""Recipe study (issue 12): train recipes for a fixed image budget; compare faithfulness against images seen.

    python benchmarks/recipe.py --recipe "baseline:" --recipe "contrastive: loss.contrastive=1" \\
        [--base configs/quickstart.yaml] [--set OVERRIDE ...] [--kimg 32] [--eval-kimg 8] [--seeds 0 1] [--parallel 2] \\
        [--threads 1] [--fid-num 500] [--out runs/recipe] [--report-only]

A recipe is `NAME: override override ...` (config overrides, separated by spaces). Each (recipe,
seed) trains in OUT/NAME-sSEED with `train.py --resume latest`: a finished run is reused, a stopped
one continued, so a study can be stopped and run again. The in-training evaluation
(`eval.faithfulness_every`, shapes reader, 200 seen + 200 held-out records) gives the curve points;
`--fid-num N` adds FID at the last step (N images against shapes/heldout).

Prints, per metric, one row per recipe and seed with the value at each point (kimg = thousands of
images seen), the training minutes to the budget (evaluation excluded) and the median img/s; writes
OUT/curves.json (every point) and OUT/curves.png (the main curves, mean over seeds).

On a folder (`--base configs/custom.yaml data.path=...` given as the recipe's overrides, or a base
config with a folder), the in-training evaluation gives caption and attribute accuracy and the
per-request diversity ratio instead; the table and plot show those. Beside faithfulness every point
also carries what the evaluation logged of diversity (metric/diversity/*, metric/coverage/*,
metric/precision, metric/recall).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]

from cgan.core.config import load_config  # noqa: E402

PREFIX = "metric/faithfulness/"
DIVERSITY_PREFIXES = ("metric/diversity/", "metric/coverage/")  # kept with their last part: diversity/ratio
TABLE_METRICS = ["seen/all_correct_one", "heldout/all_correct_one", "seen/all_correct_two", "seen/shape",
                 "seen/color", "seen/relation", "seen/style", "seen/background", "seen/count"]
CURVE_METRICS = TABLE_METRICS[:3]
PLOT_METRICS = TABLE_METRICS[:6]
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise SystemExit(f"--recipe {text!r}: expected NAME: override ..., NAME of letters, digits, _ . + -")
    return name, overrides.split()


def run_command(args, name: str, seed: int, overrides: list[str]) -> tuple[list[str], Path]:
    overrides = list(args.set) + overrides  # the study's common overrides first: a recipe's own win
    base = load_config(args.base, overrides)  # fails here, before any training, on a bad override
    batch = base.train.batch_size * base.train.grad_accum
    steps, every = round(args.kimg * 1000 / batch), round(args.eval_kimg * 1000 / batch)
    run = Path(args.out) / f"{name}-s{seed}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(args.base), "--out", str(run), "--resume", "latest",
           f"train.total_steps={steps}", f"train.seed={seed}", f"eval.faithfulness_every={every}",
           "data.num_workers=0", f"data.cache_dir={Path(args.out) / '.cache'}", f"train.checkpoint_every={every}"]
    if args.fid_num:
        cmd += [f"eval.fid_every={steps}", f"eval.fid_num={args.fid_num}"]
    return cmd + overrides, run


def train_one(cmd: list[str], run: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(str(run) + ".log", "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code:
        raise SystemExit(f"{run}: training failed (exit {code}); see {run}.log")
    return time.time() - start


def read_curve(run: Path) -> dict:
    """metrics.jsonl -> {"points": [{kimg, train_min, metric: value}], "img_s": median, "fid": ...}."""
    rows: dict[int, dict] = {}
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {"points": [], "img_s": None}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)  # after a resume a step may repeat: the last one wins
    points, seconds, last_images, speeds = [], 0.0, 0, []
    for step in sorted(rows):
        row = rows[step]
        if "speed/images_per_s" in row:  # training time of the window (evaluation not counted)
            seconds += (row["images_seen"] - last_images) / max(row["speed/images_per_s"], 1e-9)
            last_images = row["images_seen"]
            speeds.append(row["speed/images_per_s"])
        metrics = {k[len(PREFIX):]: v for k, v in row.items() if k.startswith(PREFIX)}
        metrics.update({k[len("metric/"):]: v for k, v in row.items() if k.startswith(DIVERSITY_PREFIXES)})
        for key in ("fid", "precision", "recall"):
            if f"metric/{key}" in row:
                metrics[key] = row[f"metric/{key}"]
        if metrics:
            points.append({"step": step, "kimg": row["images_seen"] / 1000, "train_min": seconds / 60, **metrics})
    return {"points": points, "img_s": median(speeds) if speeds else None}


def metric_lists(curves: dict[str, dict]) -> tuple[list[str], list[str], list[str]]:
    """(curve, table, plot) metrics: the shapes reader's where the runs have them, else a folder's (caption
    and attribute accuracy from the judges, and the per-request diversity ratio)."""
    keys = {k for c in curves.values() for p in c["points"] for k in p} - {"step", "kimg", "train_min"}
    if not keys or "seen/all_correct_one" in keys:
        extra = sorted(k for k in keys if k.startswith("coverage/"))
        return CURVE_METRICS + extra, TABLE_METRICS + extra, PLOT_METRICS
    accuracy = sorted(k for k in keys if "/" not in k and k not in ("fid", "precision", "recall"))
    diversity = [k for k in ("diversity/ratio", "diversity/caption_ratio") if k in keys]
    return accuracy + diversity, accuracy + diversity, (accuracy + diversity)[:6]


def cell(value) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def report(curves: dict[str, dict], curve_metrics: list[str], final_metrics: list[str]) -> str:
    """Curves of `curve_metrics` against kimg, then every final metric at each run's last point."""
    kimgs = sorted({round(p["kimg"], 1) for c in curves.values() for p in c["points"]})
    lines = []
    for metric in curve_metrics:
        lines.append(f"\n{metric}, against thousands of images seen")
        lines.append(f"{'run':<26}" + "".join(f"{k:>7g}" for k in kimgs))
        for run, curve in curves.items():
            at = {round(p["kimg"], 1): p.get(metric) for p in curve["points"]}
            lines.append(f"{run:<26}" + "".join(f"{cell(at.get(k)):>7}" for k in kimgs))
    names = [m.replace("all_correct_", "all") for m in final_metrics] + ["fid", "precision", "recall", "kimg",
                                                                         "train min", "img/s"]
    lines.append("\nat each run's last point (allone/alltwo: all-correct, 1 / 2 objects)")
    lines.append(f"{'run':<26}" + "".join(f"{n:>{max(len(n) + 2, 8)}}" for n in names))
    for run, curve in curves.items():
        last = curve["points"][-1] if curve["points"] else {}
        values = [last.get(m) for m in final_metrics] + [last.get(k) for k in ("fid", "precision", "recall", "kimg",
                                                                             "train_min")] + [curve["img_s"]]
        lines.append(f"{run:<26}" + "".join(f"{cell(v):>{max(len(n) + 2, 8)}}" for n, v in zip(names, values)))
    return "\n".join(lines)


def mean_curves(curves: dict[str, dict]) -> dict[str, list[tuple[float, dict]]]:
    """{recipe: [(kimg, {metric: mean over its seeds})]}"""
    grouped: dict[str, dict[float, list[dict]]] = {}
    for run, curve in curves.items():
        recipe = run.rsplit("-s", 1)[0]
        for p in curve["points"]:
            grouped.setdefault(recipe, {}).setdefault(round(p["kimg"], 1), []).append(p)
    out = {}
    for recipe, by_kimg in grouped.items():
        out[recipe] = []
        for kimg in sorted(by_kimg):
            points = by_kimg[kimg]
            keys = {k for p in points for k in p}
            out[recipe].append((kimg, {k: sum(p[k] for p in points if k in p) / sum(k in p for p in points)
                                       for k in keys}))
    return out


def plot(curves: dict[str, dict], metrics: list[str], path: Path, panel: tuple[int, int] = (300, 220)) -> None:
    """A grid of line charts (metric against kimg, one line per recipe, mean over seeds), drawn with Pillow."""
    means = mean_curves(curves)
    cols = 3
    rows = (len(metrics) + cols - 1) // cols
    legend_h = 18 * ((len(means) + 2) // 3) + 10
    width, height = panel
    image = Image.new("RGB", (cols * width, rows * height + legend_h), "white")
    draw = ImageDraw.Draw(image)
    max_kimg = max((k for series in means.values() for k, _ in series), default=1) or 1
    for i, metric in enumerate(metrics):
        ox, oy = (i % cols) * width, (i // cols) * height
        left, top, right, bottom = ox + 40, oy + 24, ox + width - 12, oy + height - 28
        draw.text((ox + 40, oy + 6), metric, fill="black")
        draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
        for frac in (0.25, 0.5, 0.75, 1.0):  # y grid: accuracies in [0, 1]
            y = bottom - frac * (bottom - top)
            draw.line([left, y, right, y], fill=(230, 230, 230))
            draw.text((ox + 8, y - 6), f"{frac:.2f}", fill=(90, 90, 90))
        draw.text((left, bottom + 6), "0", fill=(90, 90, 90))
        draw.text((right - 40, bottom + 6), f"{max_kimg:g} kimg", fill=(90, 90, 90))
        for r, (recipe, series) in enumerate(means.items()):
            xy = [(left + k / max_kimg * (right - left), bottom - min(max(v[metric], 0), 1) * (bottom - top))
                  for k, v in series if metric in v]
            colour = COLOURS[r % len(COLOURS)]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    for r, recipe in enumerate(means):
        x, y = 10 + (r % 3) * (cols * width // 3), rows * height + 6 + 18 * (r // 3)
        draw.rectangle([x, y + 3, x + 14, y + 10], fill=COLOURS[r % len(COLOURS)])
        draw.text((x + 20, y), recipe, fill="black")
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def cpu_features() -> str:
    try:
        flags = set(re.findall(r"\w+", Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]))
    except (OSError, IndexError):
        return "unknown"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none of avx2+"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", required=True, help='"NAME: override override ..."')
    parser.add_argument("--base", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", nargs="+", default=[], metavar="OVERRIDE",
                        help="overrides for every recipe, e.g. data.path=data/fashion data.resolution=32")
    parser.add_argument("--kimg", type=float, default=32, help="image budget, thousands of images")
    parser.add_argument("--eval-kimg", type=float, default=8, help="thousands of images between curve points")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--parallel", type=int, default=2, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--fid-num", type=int, default=0, help="FID at the last step with N images (0 = off)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "recipe"))
    parser.add_argument("--report-only", action="store_true", help="read the runs as they are; train nothing")
    args = parser.parse_args()
    recipes = dict(parse_recipe(r) for r in args.recipe)
    jobs = [run_command(args, name, seed, overrides) for name, overrides in recipes.items() for seed in args.seeds]
    print(f"CPU features: {cpu_features()}; {args.parallel} run(s) at once, {args.threads} thread(s) each")
    if not args.report_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            for (cmd, run), seconds in zip(jobs, pool.map(lambda job: train_one(*job, args.threads), jobs)):
                print(f"{run.name}: {seconds / 60:.1f} min (with evaluation)")
    curves = {run.name: read_curve(run) for _, run in jobs}
    curve_metrics, table_metrics, plot_metrics = metric_lists(curves)
    print(report(curves, curve_metrics, table_metrics))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"base": str(args.base), "kimg": args.kimg, "recipes": recipes, "cpu": cpu_features(), "runs": curves}
    (out / "curves.json.tmp").write_text(json.dumps(summary, indent=1))
    (out / "curves.json.tmp").replace(out / "curves.json")
    plot(curves, plot_metrics, out / "curves.png")
    print(f"\nwrote {out / 'curves.json'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()

"""Data commands.

    python -m cgan.data export shapes --out DIR --num N [--split train|heldout|all] [--size 64]
    python -m cgan.data prepare emoji --out data/emoji --size 64 [--limit N]
    python -m cgan.data check DIR [--resolution 64]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from cgan.data import ShapesDataset
from cgan.data import shapes as shapes_lib
from cgan.data.folder import SCHEMA_FILE, format_problems, validate_folder
from cgan.core.errors import run_cli
from cgan.core.files import check_writable_folder
from cgan.data.emoji import prepare_emoji


def export_shapes(out: str | Path, num: int, split: str = "train", resolution: int = 64, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Write `num` shapes images as a custom-format folder (atomically: temp folder, then rename)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    check_writable_folder(out.parent, "--out")  # before any image is drawn
    dataset = ShapesDataset(num_images=num, resolution=resolution, split=split, seed=seed)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    with (tmp / "metadata.jsonl").open("w") as handle:
        for index in range(num):
            scene = dataset.scene(index)
            file_name = f"images/{index:06d}.png"
            shapes_lib.render(scene, resolution).save(tmp / file_name)
            row = {"file_name": file_name, "text": scene.captions, **scene.attributes, "truth": scene.truth()}
            handle.write(json.dumps(row) + "\n")
    (tmp / SCHEMA_FILE).write_text(json.dumps(shapes_lib.SCHEMA, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cgan.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a built-in data set as a custom-format folder")
    export.add_argument("name", choices=["shapes"])
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--num", type=int, required=True, help="number of images")
    export.add_argument("--split", default="train", choices=shapes_lib.SPLITS)
    export.add_argument("--size", type=int, default=64, help="resolution in pixels")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--overwrite", action="store_true")
    prepare = sub.add_parser("prepare", help="build a real data set from Debian packages")
    prepare.add_argument("name", choices=["emoji"])
    prepare.add_argument("--out", required=True, help="output folder")
    prepare.add_argument("--size", type=int, default=64, help="resolution in pixels")
    prepare.add_argument("--limit", type=int, default=None, help="use only the first N emoji names")
    prepare.add_argument("--overwrite", action="store_true")
    check = sub.add_parser("check", help="validate a custom-format folder and summarise it")
    check.add_argument("folder")
    check.add_argument("--resolution", type=int, default=64, help="the model resolution images must reach")
    check.add_argument("--attributes", help="comma-separated columns to use as attributes (data.attributes)")
    check.add_argument("--ignore", help="comma-separated columns that are not attributes (data.ignore)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(parser, args))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "export":
        if args.num < 1:
            parser.error("--num: expected a positive number of images")
        path = export_shapes(args.out, args.num, args.split, args.size, args.seed, args.overwrite)
        print(f"wrote {args.num} shapes images ({args.split} split, {args.size} px) to {path}")
        return 0
    if args.command == "prepare":
        counts = prepare_emoji(args.out, size=args.size, limit=args.limit, overwrite=args.overwrite)
        print(f"wrote the emoji data set to {args.out}")
        for attribute, values in counts.items():
            print(f"  {attribute}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        return 0
    columns = [c.strip() for c in args.attributes.split(",") if c.strip()] if args.attributes else None
    ignore = [c.strip() for c in args.ignore.split(",") if c.strip()] if args.ignore else []
    report = validate_folder(args.folder, args.resolution, columns, ignore=ignore)
    print(report.summary())
    if report.problems:
        print(f"{len(report.problems)} problem(s):\n{format_problems(report)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

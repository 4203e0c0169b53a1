"""Command lines of train.py and sample.py (also installed as cgan-train and cgan-sample)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from cgan.attributes import InvalidAttributeError
from cgan.checkpoint import CheckpointError, atomic_save
from cgan.config import ConfigError, load_config
from cgan.data.folder import DataValidationError

USER_ERRORS = (ConfigError, CheckpointError, DataValidationError, InvalidAttributeError, ValueError, FileExistsError)


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a text-and-attribute conditioned GAN.")
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to anything it leaves out")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, exported model, samples, logs")
    parser.add_argument("--resume", help="'latest' (newest complete checkpoint in --out) or a checkpoint folder")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in this invocation")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate the config and data, then stop")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr_g=2e-4 data.resolution=32")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.dry_run:
            from cgan.config import config_json
            from cgan.data import build_dataset

            dataset = build_dataset(config.data)
            print(config_json(config))
            print(f"data: {len(dataset)} records; attributes:\n{dataset.schema.describe()}")
            return 0
        from cgan.training import train

        train(config, args.out, resume=args.resume, max_steps=args.max_steps)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def parse_attr(items: list[str]) -> dict[str, str]:
    attributes = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--attr {item!r}: expected name=value, e.g. --attr style=outline")
        name, value = item.split("=", 1)
        attributes[name.strip()] = value.strip()
    return attributes


def sample_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate images from a prompt and style attributes.")
    parser.add_argument("--model", required=True, help="exported model folder (e.g. runs/NAME/model)")
    parser.add_argument("--prompt", default=None, help="text prompt")
    parser.add_argument("--attr", action="append", default=[], help="attribute as name=value (repeatable)")
    parser.add_argument("--num", type=int, default=16, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--truncation", type=float, default=1.0, help="psi in (0, 1]: lower = closer to typical")
    parser.add_argument("--out", default="samples.png", help="grid image to write")
    parser.add_argument("--out-dir", help="write one PNG per image into this folder instead of a grid")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--list-attributes", action="store_true", help="print the model's attributes and exit")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the text encoder's own code to run (off by default)")
    args = parser.parse_args(argv)
    try:
        from cgan.pipeline import CGANPipeline, image_grid

        pipe = CGANPipeline.from_pretrained(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
        if args.list_attributes:
            print(pipe.schema.describe())
            return 0
        if args.prompt is None:
            raise ValueError("--prompt: required (use --prompt \"\" for none if the model allows it)")
        images = pipe(args.prompt, parse_attr(args.attr), num_images=args.num, seed=args.seed,
                      truncation=args.truncation)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            atomic_save(out_dir / f"seed{args.seed + k:06d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
        print(f"wrote {len(images)} images to {out_dir}")
    else:
        grid = image_grid(images, num_columns=math.ceil(math.sqrt(len(images))))
        atomic_save(Path(args.out), lambda tmp: grid.save(tmp, format="PNG"))
        print(f"wrote a grid of {len(images)} images to {args.out}")
    return 0


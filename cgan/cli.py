"""Command lines of train.py and sample.py (also installed as cgan-train and cgan-sample)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgan.batch import format_seeds
from cgan.condition.attributes import InvalidAttributeError
from cgan.core.config import load_config
from cgan.core.errors import USER_ERRORS
from cgan.core.images import save_image


def train_main(argv: list[str] | None = None) -> int:
    from cgan.core.errors import plain_warnings

    plain_warnings()
    parser = argparse.ArgumentParser(description="Train a text-and-attribute conditioned GAN.")
    parser.add_argument("--config", help="YAML config (see configs/); defaults apply to anything it leaves out")
    parser.add_argument("--out", help="run folder: checkpoints, exported model, samples, logs (required to train)")
    parser.add_argument("--resume", help="'latest' (newest complete checkpoint in --out) or a checkpoint folder")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in this invocation")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate the config and data, then stop")
    parser.add_argument("--print-config", action="store_true",
                        help="list every setting with its value (defaults, --config, overrides) and a line of help")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr_g=2e-4 data.resolution=32")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            from cgan.core.config_help import describe_settings

            print(describe_settings(config))
            return 0
        if not args.out:
            raise ValueError("--out: required, the run folder (e.g. --out runs/mine)")
        if args.dry_run:
            from cgan.core.config import config_json
            from cgan.core.files import check_writable_folder
            from cgan.data import build_dataset
            from cgan.train.build import check_run_settings

            check_run_settings(config)
            check_writable_folder(Path(args.out), "--out")  # what the run's first write would find
            dataset = build_dataset(config.data)
            print(config_json(config))
            print(f"data: {len(dataset)} records; attributes:\n{dataset.schema.describe()}")
            return 0
        from cgan.train.recovery import TrainingDiverged
        from cgan.train.loop import train

        try:
            train(config, args.out, resume=args.resume, max_steps=args.max_steps)
        except TrainingDiverged as err:  # not bad input: the message says what to change before resuming
            print(f"error: {err}", file=sys.stderr)
            return 3
        except KeyboardInterrupt:  # a second Ctrl-C: checkpoints written so far are complete
            print(f"\ninterrupted: the newest complete checkpoint in {Path(args.out) / 'checkpoints'} is kept; "
                  "continue with --resume latest", file=sys.stderr)
            return 130
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


def parse_sweep(spec: str, schema) -> tuple[str, list]:
    """'size=0:1:8' -> 8 values from 0 to 1; 'style' -> every value; 'style=flat,outline' -> those."""
    name, _, values = spec.partition("=")
    name = name.strip()
    if name not in schema.by_name:
        raise InvalidAttributeError(f"--sweep {spec!r}: unknown attribute '{name}'; this model's attributes are:\n"
                                    f"{schema.describe()}")
    attr = schema.by_name[name]
    if attr.kind == "continuous":
        parts = values.split(":") if values else []
        if len(parts) != 3:
            raise ValueError(f"--sweep {spec!r}: a continuous attribute takes name=low:high:count, e.g. {name}=0:1:8")
        try:
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"--sweep {spec!r}: low and high must be numbers and count an integer") from None
        if count < 2:
            raise ValueError(f"--sweep {spec!r}: count must be at least 2")
        return name, [low + (high - low) * k / (count - 1) for k in range(count)]
    return name, [v.strip() for v in values.split(",")] if values else list(attr.values)


def grid_row_labels(condition: str, seeds: list[int], num_columns: int) -> list[str]:
    """A grid row's label: its condition and every seed in it ('... | seeds 0-7', '... | seeds 40,42')."""
    return [f"{condition} | seeds {format_seeds(seeds[start:start + num_columns])}"
            for start in range(0, len(seeds), num_columns)]


def check_sample_args(args) -> list[int] | None:
    """Every check of sample.py's arguments that needs no model, before it is loaded; returns the
    --seeds list (None without --seeds)."""
    import torch

    from cgan.batch import check_seed_range, parse_seeds
    from cgan.core.files import check_writable_file, check_writable_folder
    from cgan.core.images import image_format

    if args.interpolate and args.sweep:
        raise ValueError("--interpolate and --sweep: choose one")
    if args.attention_maps and (args.interpolate or args.sweep):
        raise ValueError("--attention-maps works with a single --prompt, not with --interpolate or --sweep")
    if args.prompts and (args.prompt is not None or args.interpolate or args.sweep or args.attention_maps):
        raise ValueError("--prompts: generates every row of the file; leave out --prompt, --interpolate, --sweep "
                         "and --attention-maps")
    if args.prompts and not args.out_dir:
        raise ValueError("--prompts: needs --out-dir, the folder the images and metadata.jsonl go to")
    if not 0.0 < args.truncation <= 1.0:
        raise ValueError(f"--truncation: expected a number in (0, 1], got {args.truncation}")
    if args.num < 1:
        raise ValueError(f"--num: expected at least 1, got {args.num}")
    if args.prompt is None and not (args.interpolate or args.list_attributes or args.prompts):
        raise ValueError("--prompt: required (use --prompt \"\" for none if the model allows it)")
    seeds = None
    if args.seeds is not None:
        if args.interpolate or args.sweep or args.attention_maps:
            raise ValueError("--seeds works with --prompt or --prompts; with --interpolate, --sweep and "
                             "--attention-maps use --seed and --num")
        seeds = parse_seeds(args.seeds)
    else:
        check_seed_range(args.seed, args.num)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: no CUDA GPU is available here (torch.cuda.is_available() is "
                         "False); use --device cpu")
    if args.dtype == "float16" and not args.device.startswith("cuda"):
        raise ValueError("--dtype float16: needs a GPU; on the CPU use bfloat16 or float32")
    if not args.list_attributes:
        if args.out_dir:
            check_writable_folder(Path(args.out_dir), "--out-dir")
            if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
                raise ValueError(f"--out-dir {args.out_dir!r}: is a file; expected a folder")
        else:
            check_writable_file(Path(args.out), "--out")
            image_format(Path(args.out))
    return seeds


def sample_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate images from a prompt and style attributes.")
    parser.add_argument("--model", default="shapes64",
                        help="exported model folder (e.g. runs/NAME/model) or a shipped model name (default: shapes64)")
    parser.add_argument("--prompt", default=None, help="text prompt")
    parser.add_argument("--attr", action="append", default=[], help="attribute as name=value (repeatable)")
    parser.add_argument("--num", type=int, default=16,
                        help="number of images (with --interpolate / --sweep: number of seeds, one row each)")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed + k")
    parser.add_argument("--seeds", help="the seeds, as numbers and ranges, e.g. 0-35,40,42 (instead of --seed/--num)")
    parser.add_argument("--prompts", metavar="FILE",
                        help="a .txt (a prompt a line), .jsonl or .csv (text plus a column per attribute) file: "
                             "--num images per row into --out-dir, with a metadata.jsonl training can read")
    parser.add_argument("--truncation", "--trunc", type=float, default=1.0,
                        help="psi in (0, 1]: lower = closer to typical (--trunc, as StyleGAN's generate.py names it)")
    parser.add_argument("--interpolate", nargs=2, metavar=("PROMPT_A", "PROMPT_B"),
                        help="a row per seed moving from PROMPT_A to PROMPT_B (same z); see --steps")
    parser.add_argument("--steps", type=int, default=8, help="images per interpolation row")
    parser.add_argument("--sweep", metavar="NAME[=LOW:HIGH:COUNT | =V1,V2]",
                        help="a column per value of one attribute, e.g. size=0:1:8 or style")
    parser.add_argument("--attention-maps", action="store_true",
                        help="also write, beside each image, where each word and attribute was attended to")
    parser.add_argument("--out", default="samples.png", help="grid image to write (.png, .jpg or .webp)")
    parser.add_argument("--out-dir", help="write one PNG per image into this folder instead of a grid")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="compute precision of the generator (bfloat16/float16 under autocast; float16 on a GPU)")
    parser.add_argument("--unset", choices=["sample", "null"], default="sample",
                        help="an attribute left out: drawn per image as the training data has it (sample, the "
                             "default; models without a stored distribution use the null token) or the null token")
    parser.add_argument("--list-attributes", action="store_true", help="print the model's attributes and exit")
    parser.add_argument("--strict", action="store_true",
                        help="a prompt with a word the model never saw in its training captions is an error, "
                             "not a warning")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the text encoder's own code to run (off by default)")
    return parser


def sample_main(argv: list[str] | None = None) -> int:
    from cgan.core.errors import plain_warnings

    plain_warnings()
    args = sample_parser().parse_args(argv)
    try:
        seeds = check_sample_args(args)
        import torch

        from cgan.pipeline import CGANPipeline

        pipe = CGANPipeline.from_pretrained(args.model, device=args.device, trust_remote_code=args.trust_remote_code,
                                            dtype=getattr(torch, args.dtype), strict=args.strict)
        pipe.unset_attributes = args.unset
        if args.list_attributes:
            print(pipe.schema.describe())
            return 0
        if args.prompts:
            from cgan.batch import read_prompts, write_generated_set

            rows = read_prompts(args.prompts, pipe.schema)
            seeds = seeds or [args.seed + k for k in range(args.num)]
            count = write_generated_set(pipe, rows, seeds, Path(args.out_dir), args.truncation, str(args.model),
                                        progress=sys.stderr.isatty())
            print(f"wrote {count} images ({len(rows)} prompts x {len(seeds)} seeds) and metadata.jsonl to "
                  f"{args.out_dir}")
            return 0
        attributes = pipe.schema.validate(parse_attr(args.attr), source="--attr")
        drawn = draw(args, pipe, attributes, seeds)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_drawn(args, drawn, attributes)
    return 0


@dataclass
class Drawn:
    """What sample.py drew: images (B, 3, R, R) in [-1, 1], their grid's layout and labels, the attention maps."""

    tensor: Any
    num_columns: int
    row_labels: list[str]
    column_labels: list[str] | None = None
    maps: list | None = None
    seeds: list[int] | None = None


def draw(args, pipe, attributes: dict[str, Any], seeds: list[int] | None) -> Drawn:
    """--interpolate, --sweep, --attention-maps, or plain images of --prompt."""
    from cgan.core.images import describe_condition

    if args.interpolate:
        prompt_a, prompt_b = args.interpolate
        tensor = pipe.interpolate(prompt_a, prompt_b, attributes, steps=args.steps, num_seeds=args.num,
                                  seed=args.seed, truncation=args.truncation)
        return Drawn(tensor, args.steps, [f"seed {args.seed + s}: {describe_condition(prompt_a, attributes)} -> "
                                          f"{prompt_b}" for s in range(args.num)])
    if args.sweep:
        name, values = parse_sweep(args.sweep, pipe.schema)
        tensor = pipe.sweep(args.prompt, attributes, name, values, num_seeds=args.num, seed=args.seed,
                            truncation=args.truncation)
        return Drawn(tensor, len(values), [f"seed {args.seed + s}: {describe_condition(args.prompt, attributes)}"
                                           for s in range(args.num)],
                     [f"{name}={v:.2g}" if isinstance(v, float) else f"{name}={v}" for v in values])
    maps = None
    if args.attention_maps:
        tensor, maps = pipe.attention_maps(args.prompt, attributes, num_images=args.num, seed=args.seed,
                                           truncation=args.truncation)
    else:
        seeds = seeds or [args.seed + k for k in range(args.num)]
        tensor = pipe.generate_batch([args.prompt] * len(seeds), [attributes] * len(seeds), seeds, args.truncation)
    num_columns = min(len(tensor), 8)
    row_labels = grid_row_labels(describe_condition(args.prompt, attributes),
                                 seeds or [args.seed + k for k in range(len(tensor))], num_columns)
    return Drawn(tensor, num_columns, row_labels, maps=maps, seeds=seeds)


def write_drawn(args, drawn: Drawn, attributes: dict[str, Any]) -> None:
    """One PNG per image into --out-dir, or a grid into --out; the attention figures beside them."""
    from cgan.core.images import describe_condition, image_grid, tensor_to_images
    from cgan.nets.attention_maps import attention_figure

    images, seeds = tensor_to_images(drawn.tensor), drawn.seeds
    if args.out_dir:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            save_image(out_dir / f"{k:04d}.png" if (args.interpolate or args.sweep) else
                       out_dir / f"seed{seeds[k] if seeds else args.seed + k:06d}.png", image)
        print(f"wrote {len(images)} images to {out_dir}")
    else:
        out_dir = Path(args.out).parent
        save_image(Path(args.out), image_grid(images, drawn.num_columns, drawn.row_labels,
                                              column_labels=drawn.column_labels))
        print(f"wrote a grid of {len(images)} images to {args.out}")
    if drawn.maps is not None:
        stem = Path(args.out).stem if not args.out_dir else "seed"
        for k, token_maps in enumerate(drawn.maps):
            title = f"{describe_condition(args.prompt, attributes)} | seed {args.seed + k}"
            path = out_dir / (f"seed{args.seed + k:06d}_attention.png" if args.out_dir
                              else f"{stem}_attention_seed{args.seed + k:06d}.png")
            save_image(path, attention_figure(drawn.tensor[k], token_maps, title))
        print(f"wrote {len(drawn.maps)} attention figures to {out_dir}")

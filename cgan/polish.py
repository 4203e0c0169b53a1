"""`python -m cgan.polish`: fine-tune an exported model's G alone toward an image prior (flat regions
flat), anchored to the model as it came (cgan/train/polish.py says how).

    python -m cgan.polish --model shapes64 --out runs/shapes64-polished [--steps 1500] [--anchor 2]
    python -m cgan.polish --model runs/mine/model --out runs/mine/polished --data data/mine

The conditions come from the data the model was trained on (its config.json names it: `shapes`, or a
folder), or from --data. A D.safetensors in the model folder is carried over unchanged, so training can
go on from the polished model with `train.init_from`. Measure before and after with `python -m cgan.fid`
and `python -m cgan.faithfulness`: for data with flat regions and hard edges only.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from cgan.core.config import config_from_dict
from cgan.core.errors import USER_ERRORS, plain_warnings
from cgan.core.files import load_weights
from cgan.data import build_dataset
from cgan.nets.export import resolve_model_dir
from cgan.pipeline import CGANPipeline
from cgan.train.polish import PRIORS, TARGETS, add_refiner, PolishConfig, polish, polish_card_section, polish_settings


def open_conditions(data: str | None, meta: dict, model_dir: Path, resolution: int, schema_dict: dict):
    """The data set whose captions and attributes condition the polish -> (data set, its name): the
    training data its config.json names (build_dataset, as training opened it), or --data ('shapes': the
    train split, so the held-out compositions stay unseen; or a folder)."""
    data_config = config_from_dict(meta.get("config", {}), f"{model_dir}/config.json").data
    if data is not None:
        if str(data) == "shapes":
            data_config = dataclasses.replace(data_config, name="shapes", split="train")
        elif Path(data).is_dir():
            data_config = dataclasses.replace(data_config, name="folder", path=str(data))
        else:
            raise ValueError(f"--data {data}: expected 'shapes' or a data folder (with metadata.jsonl or metadata.csv)")
    # the model's own attribute schema: a folder's records must fit what G was trained to read
    data_config = dataclasses.replace(data_config, resolution=resolution, attributes=schema_dict)
    name = f"shapes ({data_config.split} split)" if data_config.name == "shapes" else str(data_config.path)
    return build_dataset(data_config), name


def run(args: argparse.Namespace) -> Path:
    config = PolishConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, prior=args.prior,
                          anchor=args.anchor, cap=args.cap, exponent=args.exponent, seed=args.seed,
                          drop_prompt=args.drop_prompt, only_refiner=args.only_refiner, target=args.target,
                          pool=args.pool, image_steps=args.image_steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out}: already exists; choose another folder or pass --overwrite")
    model_dir = resolve_model_dir(args.model)
    pipe = CGANPipeline.from_pretrained(args.model, device=args.device)
    D = load_weights(model_dir / "D.safetensors") if (model_dir / "D.safetensors").is_file() else None
    if args.refine_layers:
        add_refiner(pipe, args.refine_layers, args.refine_channels)
    dataset, data_name = open_conditions(args.data, pipe.meta, model_dir, pipe.resolution, pipe.schema.to_dict())
    print(f"polishing {args.model} for {config.steps} steps of {config.batch_size} on {data_name} "
          f"(prior {config.prior}, anchor {config.anchor})" + (f"; first each of {config.pool} images optimised "
                                                               "alone" if config.target == "per_image" else ""),
          flush=True)
    start = time.perf_counter()
    polish(pipe, dataset, config, log=lambda row: print(
        f"step {row['step']:>6}  prior {row['prior']:.5f}  distance to the start {row['distance']:.3f} / 255"
        + (f"  to the optima {row['to_target']:.3f} / 255" if "to_target" in row else ""), flush=True))
    seconds = time.perf_counter() - start
    refiner = ({"refine_layers": args.refine_layers, "refine_channels": args.refine_channels}
               if args.refine_layers else {})
    if pipe.model_card:
        pipe.model_card += polish_card_section(args.model, data_name, config, seconds, refiner)
    earlier = {"before": pipe.meta["polish"]} if "polish" in pipe.meta else {}  # a model polished twice keeps both
    pipe.meta = {**pipe.meta, "polish": {"from": str(args.model), "data": data_name, "seconds": round(seconds, 1),
                                         **polish_settings(config), **refiner, **earlier}}
    pipe.save_pretrained(out, D=D)
    print(f"wrote {out} ({seconds / 60:.1f} min{'; D carried over' if D is not None else ''})")
    return out


def main(argv: list[str] | None = None) -> int:
    plain_warnings()
    parser = argparse.ArgumentParser(prog="python -m cgan.polish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PolishConfig()
    parser.add_argument("--model", required=True, help="an exported model folder or a shipped name (shapes64)")
    parser.add_argument("--out", required=True, help="the polished model folder to write")
    parser.add_argument("--data", help="'shapes' or a data folder for the conditions (default: the model's own data)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--anchor", type=float, default=defaults.anchor,
                        help=f"weight of the distance to the starting model (default {defaults.anchor})")
    parser.add_argument("--prior", choices=PRIORS, default=defaults.prior,
                        help=f"capped (flattens) or sparse (flattens and sharpens) (default {defaults.prior})")
    parser.add_argument("--cap", type=float, default=defaults.cap,
                        help=f"capped: the largest difference pulled to zero, in [-1, 1] units "
                             f"(default {defaults.cap})")
    parser.add_argument("--exponent", type=float, default=defaults.exponent,
                        help=f"sparse: the exponent, in (0, 1] (default {defaults.exponent})")
    parser.add_argument("--refine-layers", type=int, default=0,
                        help="first give G a refiner of this many 3 x 3 convolutions at the output resolution, "
                             "for hard edges (its images unchanged at the start; default 0: none)")
    parser.add_argument("--refine-channels", type=int, default=32, help="the refiner's width (default 32)")
    parser.add_argument("--target", choices=TARGETS, default=defaults.target,
                        help="loss: fit G to the prior and anchor directly; per_image: optimise each of --pool "
                             f"images alone on them, then fit G to those images (default {defaults.target})")
    parser.add_argument("--pool", type=int, default=defaults.pool,
                        help=f"per_image: how many images are optimised (default {defaults.pool})")
    parser.add_argument("--image-steps", type=int, default=defaults.image_steps,
                        help=f"per_image: Adam steps on each image's pixels (default {defaults.image_steps})")
    parser.add_argument("--only-refiner", action="store_true",
                        help="train the refiner alone, the rest of G frozen (its shapes and colours stay)")
    parser.add_argument("--drop-prompt", type=float, default=defaults.drop_prompt)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m cgan.faithfulness`: does the image show the prompt? The command line of cgan/eval/faithfulness.py
(shapes, with the shipped reader) and cgan/eval/custom_faithfulness.py (`--data FOLDER`)."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from cgan.core.errors import USER_ERRORS, plain_warnings
from cgan.eval import faithfulness
from cgan.eval.custom_faithfulness import evaluate_custom
from cgan.eval.faithfulness import DEFAULT_READER, EVAL_DATA_SEED, evaluate_faithfulness, format_table, train_reader


def main(argv: list[str] | None = None) -> int:
    plain_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        parser = argparse.ArgumentParser(prog="python -m cgan.faithfulness train", description="train the shapes reader")
        parser.add_argument("--out", default=str(DEFAULT_READER))
        parser.add_argument("--steps", type=int, default=3000)
        parser.add_argument("--num-images", type=int, default=20_000)
        parser.add_argument("--workers", type=int, default=2, help="processes that render the training images")
        parser.add_argument("--threads", type=int, help="torch threads (on a busy machine 1 is often fastest)")
        args = parser.parse_args(argv[1:])
        if args.threads:
            torch.set_num_threads(args.threads)
        train_reader(args.out, args.steps, num_images=args.num_images, workers=args.workers,
                     command="python -m cgan.faithfulness " + " ".join(argv))
        return 0
    parser = argparse.ArgumentParser(prog="python -m cgan.faithfulness", description=faithfulness.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported model folder")
    parser.add_argument("--data", help="a custom-format folder: check its attributes and captions instead of shapes")
    parser.add_argument("--num", type=int, default=500, help="images per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation", type=float, default=1.0)
    parser.add_argument("--data-seed", type=int, default=EVAL_DATA_SEED, help="shapes records' seed")
    parser.add_argument("--steps", type=int, default=1000,
                        help="custom data: classifier training steps (batch 64; ~20 s on 2 CPU cores)")
    parser.add_argument("--reader", help="shapes reader file (default: the one shipped in the package)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print a JSON record after the table")
    parser.add_argument("--confusion", action="store_true",
                        help="shapes: print the shape and colour confusion matrices (asked for vs read)")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num: expected at least 1")
    try:
        if args.data:
            result = evaluate_custom(args.model, args.data, args.num, args.seed, args.truncation, args.steps,
                                     args.batch_size, args.device)
        else:
            result = evaluate_faithfulness(args.model, args.num, args.seed, args.truncation, args.data_seed,
                                           args.batch_size, args.device, args.reader)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result, args.confusion))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

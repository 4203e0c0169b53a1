"""`python -m cgan.diversity`: does the model draw what the data looks like, not only what was asked?
The command line of cgan/eval/diversity.py.

    python -m cgan.diversity --model shapes64 [--num 500] [--unset null]
    python -m cgan.diversity --model DIR --data FOLDER [--requests 50] [--per-request 6] [--by caption|caption-attributes]

shapes: prompts asked without style, background or size; the shapes reader's distribution of style and
background against the data's (total-variation distance, 0 = as the data), and the spread of one
object's place and size against real images'. A folder: per-request diversity, the mean pairwise
distance of the folder judges' features among the seeds of one request over the same among real
images of that request (1.0 = as varied as the data); `--by caption` takes the caption alone as the
request, asked without attributes, against that caption's real images (a folder where every caption
and attribute set appears once, such as the emoji set); `--by caption-attributes` asks each seed with
the attributes of one of the caption's real images (a model that follows the request scores 1). Precision and recall: `python -m cgan.fid`.
"""
from __future__ import annotations

import argparse
import json
import sys

from cgan.core.errors import USER_ERRORS, plain_warnings
from cgan.data import FolderDataset
from cgan.eval.custom_faithfulness import train_attribute_classifier
from cgan.eval.diversity import BY, format_coverage, request_diversity, shapes_coverage
from cgan.eval.faithfulness import pipeline_generate_fn
from cgan.pipeline import CGANPipeline


def measure(args: argparse.Namespace) -> tuple[dict, str]:
    pipe = CGANPipeline.from_pretrained(args.model, device=args.device)
    pipe.unset_attributes = args.unset
    generate_fn = pipeline_generate_fn(pipe, args.truncation)
    if not args.data:
        result = shapes_coverage(generate_fn, num=args.num, seed=args.seed)
        return result, format_coverage(result)
    dataset = FolderDataset(args.data, resolution=pipe.resolution, attributes=pipe.schema.to_dict())
    classifier = train_attribute_classifier(dataset, text_cache=pipe.text_cache)
    result = request_diversity(generate_fn, dataset, classifier, args.requests, args.per_request, args.seed,
                               by=args.by, one_latent=args.by != "caption")
    what = {"request": "per-request", "caption": "per-caption (attributes unset)",
            "caption-attributes": "per-caption (each seed asked with one real image's attributes)"}[args.by]
    text = (f"{what} diversity: {result['generated']:.4f} generated vs {result['real']:.4f} real "
            f"(mean pairwise judge-feature distance, {result['requests']} requests x {result['per_request']} "
            f"seeds), ratio {result['ratio']:.3f} (1.0 = as varied as the data)")
    if "one_latent_ratio" in result:
        text += (f"\n  with one latent for a request's images: ratio {result['one_latent_ratio']:.3f} (the spread of "
                 "the attributes asked alone: a continuous one differs within its bin, as the real images' does)")
    return result, text


def main(argv: list[str] | None = None) -> int:
    plain_warnings()
    parser = argparse.ArgumentParser(prog="python -m cgan.diversity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported model folder or a shipped name (shapes64)")
    parser.add_argument("--data", help="a custom data folder (default: the shapes coverage of open choices)")
    parser.add_argument("--num", type=int, default=500, help="shapes: captions asked (default 500)")
    parser.add_argument("--requests", type=int, default=50, help="folder: requests measured (default 50)")
    parser.add_argument("--per-request", type=int, default=6, help="folder: seeds per request (default 6)")
    parser.add_argument("--by", choices=BY, default="request",
                        help="folder: a request is a record's caption and attributes (default); or its caption alone, "
                             "asked without attributes (caption) or with each real image's attributes "
                             "(caption-attributes)")
    parser.add_argument("--unset", choices=("sample", "null"), default="sample",
                        help="unset attributes: drawn as the training data has them (default) or the null token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the full JSON record")
    args = parser.parse_args(argv)
    try:
        result, text = measure(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What would a generator that draws real images score on `python -m cgan.diversity --data FOLDER`?
(issue 22's per-request diversity bar of 0.8)

    python benchmarks/diversity_oracle.py --data FOLDER [--per-request 3] [--requests 100]

For `--by caption` (the caption alone, attributes unset, against that caption's real images; the emoji
set's measure). The oracle answers every request of the measure with a real image of the folder: for each seed, the
attributes left unset are drawn from the data's distribution exactly as the pipeline draws them
(cgan/condition/attribute_prior.py::fill_unset, from the seed), and the oracle returns a real image of
that caption whose attributes match the drawn ones best (ties broken by the seed). It has the data's
own spread wherever the data repeats a request, and none where it does not (as a model that followed
every attribute and ignored its latent would). So its ratio is what a model perfect at following the
request scores: the ceiling of the measure's protocol, which a model can pass only by adding spread
the data does not show at that request. (By request, seed j asks for real image j's own attributes,
and the oracle would return the reference images themselves: 1.0 by construction.)
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_utils import cpu_flags, set_threads  # noqa: E402
from cgan.condition.attribute_prior import dataset_prior, fill_unset  # noqa: E402
from cgan.core.images import image_to_tensor  # noqa: E402
from cgan.data import FolderDataset  # noqa: E402
from cgan.eval.custom_faithfulness import train_attribute_classifier  # noqa: E402
from cgan.eval.diversity import request_diversity  # noqa: E402


def _match(record: dict, wanted: dict) -> float:
    """How well a record's attributes match the wanted ones: 1 per equal category, 1 - |difference| per
    continuous value."""
    score = 0.0
    for name, value in wanted.items():
        have = record["attributes"].get(name)
        if have is None or value is None:
            continue
        score += 1.0 - abs(float(have) - float(value)) if isinstance(value, float) else float(have == value)
    return score


def real_image_oracle(dataset: FolderDataset):
    """-> a generate_fn (prompts, attributes, seeds) -> (N, 3, R, R) real images, as described above."""
    prior = dataset_prior(dataset)
    by_caption: dict[str, list[int]] = defaultdict(list)
    for i in range(dataset.num_records()):
        by_caption[dataset.record(i)["captions"][0]].append(i)

    def generate(prompts, attributes, seeds):
        images = []
        for prompt, asked, seed in zip(prompts, attributes, seeds):
            wanted = fill_unset(prior, prompt, asked, seed)
            members = by_caption[prompt]
            scores = [_match(dataset.record(i), wanted) for i in members]
            best = [i for i, s in zip(members, scores) if s == max(scores)]
            images.append(image_to_tensor(dataset.image(random.Random(f"oracle/{seed}").choice(best))))
        return torch.stack(images)  # (N, 3, R, R)

    return generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data folder")
    parser.add_argument("--resolution", type=int, default=32, help="as the measured models (default 32)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--per-request", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(f"CPU: {cpu_flags()}")
    dataset = FolderDataset(args.data, resolution=args.resolution)
    classifier = train_attribute_classifier(dataset)
    result = request_diversity(real_image_oracle(dataset), dataset, classifier, args.requests, args.per_request,
                               by="caption")
    print(f"real-image oracle, per caption (attributes unset): ratio {result['ratio']:.3f} "
          f"({result['generated']:.4f} vs {result['real']:.4f} real, {result['requests']} captions x "
          f"{result['per_request']} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

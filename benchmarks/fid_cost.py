"""What one FID evaluation costs on this machine, and FID between two halves of real shapes.

    python benchmarks/fid_cost.py [--model DIR | --config configs/shapes.yaml] [--num 1000] [--device cpu]
                                  [--skip-real-vs-real]

1. An exported model against shapes/heldout (N generated vs N real) with the real Inception:
   once with an empty reference cache (the real images' statistics are computed and stored),
   then again with them cached, which is what each evaluation during training costs.
   Without --model, a randomly initialised model is built from --config: the cost of FID
   does not depend on what the weights have learned.
2. FID and KID of real vs real: two disjoint sets of N held-out shapes (different scene seeds),
   the floor a perfect model would reach at this N.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from cgan.eval import fid, fid_data
from cgan.data import ShapesDataset


def random_model(config_path: str, out: Path) -> Path:
    """Export a randomly initialised generator with the model and resolution of a training config."""
    from cgan.nets.export import export_model
    from cgan.core.config import load_config
    from cgan.condition.text_encoder import FrozenTextEncoder
    from cgan.nets.factory import build_generator, generator_kwargs
    from cgan.condition.attributes import AttributeSchema
    from cgan.data.shapes import SCHEMA

    config = load_config(config_path, ["model.generator.color=rgb"])  # the shapes data is in colour
    encoder = FrozenTextEncoder(config.text.encoder, max_length=config.text.max_length)
    schema = AttributeSchema.from_dict(SCHEMA)
    sizes = dict(text_dim=encoder.dim, resolution=config.data.resolution)
    torch.manual_seed(0)
    return export_model(out, G_ema=build_generator(config.model, schema=schema, **sizes).eval(),
                        generator_kwargs=generator_kwargs(config.model, **sizes),
                        schema_dict=schema.to_dict(), text_encoder={"name": config.text.encoder,
                                                                    "max_length": config.text.max_length},
                        config_dict=config.to_dict(), step=0, images_seen=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported model folder (default: a random one from --config)")
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-real-vs-real", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*only \\d+ images")
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, N = {args.num}")
    with tempfile.TemporaryDirectory(prefix="cgan-fid-bench-") as scratch:
        tmp = Path(scratch)
        start = time.perf_counter()
        network = fid.load_feature_network(device=args.device)
        print(f"feature network: {network.name} sha256:{network.sha256} (found and loaded in "
              f"{time.perf_counter() - start:.1f} s)")
        model = args.model or str(random_model(args.config, tmp / "model"))
        for label in ("empty reference cache", "cached reference"):
            result = fid_data.fid_model_vs_data(model, "shapes", num=args.num, kid=True, device=args.device,
                                           cache_dir=tmp / "cache")
            print(f"model vs shapes/heldout at {result.resolution} px, {label} ({result.reference_cache}): "
                  f"{result.seconds:.1f} s  [{result.summary()}]")
        if args.skip_real_vs_real:
            return
        halves = []
        for name, seed in (("a", 101), ("b", 202)):  # two scene seeds: two disjoint random draws of heldout scenes
            data = ShapesDataset(num_images=args.num, resolution=result.resolution or 64, split="heldout", seed=seed)
            folder = tmp / name
            folder.mkdir()
            for i in range(args.num):
                data.image(i).save(folder / f"{i:06d}.png")
            halves.append(folder)
        real = fid.compute_fid(*halves, kid=True, device=args.device)
        print(f"real vs real (shapes/heldout, 2 x {args.num} at {result.resolution} px, scene seeds 101 / 202): "
              f"{real.seconds:.1f} s  [{real.summary()}]")


if __name__ == "__main__":
    main()

"""Drawing images from a generator: one latent per seed, prompts and attribute dicts to G's condition.

What the pipeline, the progress grids of training and the evaluation share.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from cgan.condition.attributes import AttributeSchema
from cgan.condition.fusion import ConditionInput
from cgan.condition.text_encoder import TextEmbeddingCache
from cgan.nets.generator import Generator


def make_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """One z per seed (B, z_dim), each from its own CPU generator: image k of seed s is the same
    whatever the batch size or device."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


# On the CPU, a batch above ~16 images runs slower per image than 16 (its activations no longer fit
# the caches): 208 vs 279 img/s at 64 px (benchmarks/sample_speed.py), so generate() splits it.
CPU_MAX_BATCH = 16


@torch.no_grad()
def generate(G: Generator, text_cache: TextEmbeddingCache, schema: AttributeSchema, prompts: list[str],
             attributes: list[Mapping[str, Any]], seeds: list[int], truncation: float = 1.0,
             device: torch.device | str = "cpu", return_attention: bool = False, max_batch: int | None = None):
    """Images (B, 3, R, R) in [-1, 1] for per-image prompts, attribute dicts and seeds.

    At most max_batch images go through G at once (default: CPU_MAX_BATCH on the CPU, all of them
    elsewhere). Each image has its own z, so the split changes nothing but float rounding.
    """
    device = torch.device(device)
    if max_batch is None:
        max_batch = CPU_MAX_BATCH if device.type == "cpu" else len(seeds)
    if len(seeds) > max_batch and not return_attention:
        return torch.cat([generate(G, text_cache, schema, prompts[start:start + max_batch],
                                   attributes[start:start + max_batch], seeds[start:start + max_batch],
                                   truncation, device, max_batch=max_batch)
                          for start in range(0, len(seeds), max_batch)])
    z = make_latents(seeds, G.z_dim).to(device)
    return G(z, condition_input(text_cache, schema, prompts, attributes, device), truncation=truncation,
             return_attention=return_attention)


def condition_input(text_cache: TextEmbeddingCache, schema: AttributeSchema, prompts: list[str],
                    attributes: list[Mapping[str, Any]], device: torch.device | str) -> ConditionInput:
    """Prompts (an empty one means none) and valid attribute dicts -> the ConditionInput of G."""
    attr_index, attr_value, attr_present = (t.to(device) for t in schema.encode(list(attributes)))
    return ConditionInput(text_cache(prompts, device=device),
                          torch.tensor([bool(p.strip()) for p in prompts], device=device),
                          attr_index, attr_value, attr_present)

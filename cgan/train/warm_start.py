"""`train.init_from`: start a new run from another run's weights, e.g. grow a 32 px run to 64 px.

It names a training state, a run folder (its newest state), or an exported model folder or shipped
model name (`shapes64`): a model's G_ema starts both G and G_ema, and its D.safetensors D, when it
holds one (`train.export_d`); otherwise D starts fresh (`train.d_warmup_steps` trains it alone for a
while, so that G's first gradients come from a D that has learned something).

The generator's blocks are indexed from 4 px up, so a 32 px G's blocks are the first blocks of a
64 px G with the same channel_base and channel_max; the 64 px block is new, and its to_rgb starts
at zero so that the first images are the 32 px images upsampled. The discriminator's blocks are
indexed from the input down, so block k of a 32 px D is block k + 1 of a 64 px D (its from_rgb
and its first block are new). Every tensor whose (re-indexed) name and shape match is copied; the
rest keep their fresh initialisation, and the log says which.

A tensor that has grown (e.g. `model.g_channel_min` widens G's top blocks) is copied into its leading
slice: new outputs (dimension 0) keep their fresh initialisation, and new inputs (the other dimensions)
start at zero, so every old channel computes what it did and the images are unchanged (exactly so for
convolutions and linear layers; a GroupNorm over widened channels, as in an attention block, is not).
Optimizer moments, the step count and the learning-rate schedule start fresh: this is a new run, not
a resume.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from cgan.core.errors import CheckpointError
from cgan.core.files import load_weights
from cgan.nets.export import resolve_model_dir
from cgan.train.checkpoint import list_checkpoints


def is_model_dir(path: Path) -> bool:
    """An exported model (config.json + G_ema.safetensors), not a training state."""
    return (path / "G_ema.safetensors").is_file() and (path / "config.json").is_file()


def resolve_init_from(path: str | Path) -> Path:
    """A training-state folder, a run folder (its newest complete state), or a model folder (or shipped name)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    model_dir = resolve_model_dir(path)
    if is_model_dir(model_dir):
        return model_dir
    states = list_checkpoints(path)
    if not states:
        raise CheckpointError(f"train.init_from {str(path)!r}: not a training state folder (state.json), a run "
                              "folder with checkpoints, nor a model folder (config.json + G_ema.safetensors)")
    return states[-1]


def _shift_blocks(key: str, shift: int) -> str:
    return re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) + shift}.", key)


def widened(fresh: torch.Tensor, old: torch.Tensor, fan_in_gain: bool) -> torch.Tensor:
    """`old` inside a grown tensor: its leading slice; new inputs (dims 1..) zero, new outputs (dim 0) `fresh`.
    fan_in_gain: the layer multiplies its weight by 1 / sqrt(fan-in) (equalised learning rate, `weight_gain`),
    so the old weights are scaled up by the growth of the fan-in to compute what they did."""
    out = fresh.clone()
    if old.dim() > 1:
        out[: old.shape[0]] = 0  # old outputs read nothing from the new inputs
    scale = math.sqrt(fresh[0].numel() / old[0].numel()) if fan_in_gain and old.dim() > 1 else 1.0
    out[tuple(slice(0, n) for n in old.shape)] = old * scale
    return out


def _has_fan_in_gain(module: torch.nn.Module, key: str) -> bool:
    owner, _, name = key.rpartition(".")
    return name == "weight" and hasattr(module.get_submodule(owner), "weight_gain")


def fits(own: torch.Tensor, old: torch.Tensor) -> bool:
    """`old` can be copied into `own`: the same number of dimensions, none of them smaller."""
    return own.dim() == old.dim() and all(a >= b for a, b in zip(own.shape, old.shape))


def transfer(module: torch.nn.Module, source: dict[str, torch.Tensor], shift: int = 0) -> list[str]:
    """Copy the tensors of `source` (keys re-indexed by `shift` blocks) whose name matches into `module`:
    whole where the shape matches, widened where every dimension has grown or stayed (`widened`);
    -> the names of `module`'s tensors not copied whole (fresh or widened)."""
    own = module.state_dict()
    renamed = {_shift_blocks(k, shift): v for k, v in source.items()}
    matched = {k: v for k, v in renamed.items() if k in own and own[k].shape == v.shape}
    grown = {k: widened(own[k], v, _has_fan_in_gain(module, k)) for k, v in renamed.items()
             if k in own and k not in matched and fits(own[k], v)}
    module.load_state_dict({**matched, **grown}, strict=False)
    return [k for k in own if k not in matched]


def _read_state(path: str | Path) -> tuple[Path, bool, dict[str, dict[str, torch.Tensor]]]:
    """-> (the state or model folder, whether it is a model, its G, G_ema and D tensors: a model's G_ema is
    both Gs, and its D is empty when it holds none)."""
    state = resolve_init_from(path)
    from_model = is_model_dir(state)
    if from_model:
        generator = load_weights(state / "G_ema.safetensors")
        discriminator = load_weights(state / "D.safetensors") if (state / "D.safetensors").is_file() else {}
        return state, True, {"G": generator, "G_ema": generator, "D": discriminator}
    return state, False, {name: load_weights(state / f"{name}.safetensors") for name in ("G", "G_ema", "D")}


def _old_blocks(state: Path, generator: dict[str, torch.Tensor], G: torch.nn.Module) -> int:
    """The number of blocks of the stored G; checks that it fits into G (the same or a larger resolution,
    every tensor with a place)."""
    block_indices = [int(m.group(1)) for k in generator if (m := re.match(r"blocks\.(\d+)\.", k))]
    if not block_indices:
        raise CheckpointError(f"train.init_from {state}: G.safetensors holds no generator weights")
    old_blocks = 1 + max(block_indices)
    old_resolution = 2 ** (old_blocks + 1)
    if old_resolution > G.resolution:
        raise CheckpointError(f"train.init_from {state}: a {old_resolution} px run cannot start a "
                              f"{G.resolution} px one (only growing is supported)")
    own_G = G.state_dict()
    unused = [k for k, v in generator.items() if k not in own_G or not fits(own_G[k], v)]
    if unused:
        raise CheckpointError(f"train.init_from {state}: this config's generator has no place for {len(unused)} of its "
                              f"tensors ({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}); set the model.* "
                              "settings it was trained with (its config.yaml, or config.json for a model)")
    return old_blocks


def _silence_new_blocks(G: torch.nn.Module, old_blocks: int) -> None:
    """A new top block adds nothing to the image until it has learned something."""
    with torch.no_grad():
        for index in range(old_blocks, len(G.blocks)):
            G.blocks[index].to_rgb.weight.zero_()


def load_anchor(path: str | Path, G_anchor: torch.nn.Module) -> str:
    """loss.anchor's frozen generator: train.init_from's G_ema, loaded into G_anchor (built like G) as
    `warm_start` loads G_ema, so that it draws what the run's G_ema drew at step 0. -> a line for the log."""
    state = resolve_init_from(path)
    generator = load_weights(state / "G_ema.safetensors")  # a model and a training state both hold it
    old_blocks = _old_blocks(state, generator, G_anchor)
    transfer(G_anchor, generator)
    _silence_new_blocks(G_anchor, old_blocks)
    G_anchor.eval().requires_grad_(False)
    return f"loss.anchor: G's images are held near those of {state}'s G_ema (frozen)"


def warm_start(path: str | Path, G: torch.nn.Module, G_ema: torch.nn.Module, D: torch.nn.Module) -> str:
    """Load another run's G, G_ema and D (a model folder: its G_ema into both Gs, its D if it holds one)
    into these (possibly larger) models; -> a line for the log."""
    state, from_model, sources = _read_state(path)
    old_blocks = _old_blocks(state, sources["G"], G)
    old_resolution = 2 ** (old_blocks + 1)
    shift = int(math.log2(G.resolution // old_resolution))
    fresh_G = transfer(G, sources["G"])
    transfer(G_ema, sources["G_ema"])
    fresh_D = transfer(D, sources["D"], shift=shift)
    for model in (G, G_ema):
        _silence_new_blocks(model, old_blocks)
    prefixes = lambda keys: sorted({".".join(k.split(".")[:2]) for k in keys})  # noqa: E731
    loaded = lambda module, fresh: (f"{len(module.state_dict()) - len(fresh)}/{len(module.state_dict())} "  # noqa: E731
                                    f"loaded whole, new or widened: {', '.join(prefixes(fresh)) or 'none'}")
    d_line = "D fresh (the model holds none: train.export_d)" if not sources["D"] else f"D {loaded(D, fresh_D)}"
    source = f"model {state}, its G_ema as G and G_ema" if from_model else str(state)
    return (f"init_from {source} ({old_resolution} px -> {G.resolution} px): G tensors {loaded(G, fresh_G)}; "
            f"{d_line}")

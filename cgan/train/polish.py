"""Polish: a G-only fine-tune of an exported model toward an image prior for flat regions, anchored to
the model it starts from. For data drawn in flat regions with hard edges (the built-in shapes, icons,
glyphs); leave it alone on photographs and textures.

The loss of one image x, drawn for the same latent and condition as the frozen starting G's x0:

    prior(x) + anchor * mean |x - x0|

- prior "capped" (the default): loss.flat's mean over neighbouring pixels of min(|difference|, cap). A
  difference under the cap (pixel noise, a ripple along the border, a faint halo) is pulled to zero; an
  edge costs a constant and is left alone. With the L1 anchor this is a capped form of TV-L1 denoising:
  what is smaller than about 1 / anchor goes, what G draws stays.
- prior "sparse": the mean of (|difference| + eps) ** exponent. Below exponent 1 it is concave, so one
  hard edge costs less than a ramp of the same height (the hyper-Laplacian prior of natural-image
  deblurring, Krishnan & Fergus 2009): it sharpens as well as flattens. On shapes64 it did worse than
  "capped" (recipe study, part 18): G's 16 channels at 64 px cannot draw the sharper edges it asks for.

The anchor keeps G's shapes, colours and places, and so its faithfulness and coverage. No discriminator
takes part; a D exported with the model is carried over unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cgan.nets.sampling import condition_input
from cgan.train.terms.flat import capped_differences, neighbour_differences


PRIORS = ("capped", "sparse")
TARGETS = ("loss", "per_image")


@dataclass
class PolishConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 5e-4
    prior: str = "capped"  # "capped": loss.flat's min(|difference|, cap); "sparse": (|difference| + eps) ** exponent
    anchor: float = 0.1  # weight of the mean |x - x0| (in [-1, 1] units) against the prior
    cap: float = 0.03  # capped: differences above it (edges) cost a constant and are left alone
    exponent: float = 0.5  # sparse: p < 1 is concave and sharpens; p = 1 is total variation
    eps: float = 1e-3  # sparse: keeps the gradient finite at a zero difference
    drop_prompt: float = 0.1  # share of conditions asked without a prompt (the model must support it)
    drop_attr: float = 0.15  # each attribute left unset with this probability
    only_refiner: bool = False  # train G's refiner alone (cgan/nets/generator.py), the rest of G frozen
    # what G is fitted to: "loss" (the loss above, on G's images directly) or "per_image" (each of `pool`
    # images of the starting G optimised alone on that loss, image_steps of Adam at image_lr, and G fitted to
    # those optima by mean absolute difference: a fixed target that G cannot meet by lowering its contrast)
    target: str = "loss"
    pool: int = 8192
    image_steps: int = 300
    image_lr: float = 0.005
    seed: int = 0
    log_every: int = 100

    def __post_init__(self) -> None:
        checks = {"steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
                  "prior": self.prior in PRIORS, "cap": self.cap > 0,
                  "anchor": self.anchor >= 0, "exponent": 0 < self.exponent <= 1, "eps": self.eps > 0,
                  "drop_prompt": 0 <= self.drop_prompt < 1, "drop_attr": 0 <= self.drop_attr <= 1,
                  "log_every": self.log_every >= 1, "target": self.target in TARGETS, "pool": self.pool >= 1,
                  "image_steps": self.image_steps >= 1, "image_lr": self.image_lr > 0}
        expected = {"steps": "an integer >= 1", "batch_size": "an integer >= 1", "lr": "a number > 0",
                    "prior": " or ".join(PRIORS), "cap": "a number > 0",
                    "anchor": "a number >= 0", "exponent": "a number in (0, 1]", "eps": "a number > 0",
                    "drop_prompt": "a probability in [0, 1)", "drop_attr": "a probability in [0, 1]",
                    "log_every": "an integer >= 1", "target": " or ".join(TARGETS), "pool": "an integer >= 1",
                    "image_steps": "an integer >= 1", "image_lr": "a number > 0"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"polish {name}: expected {expected[name]}, got {getattr(self, name)!r}")


def sparse_gradient_prior(images: torch.Tensor, exponent: float, eps: float) -> torch.Tensor:
    """(B, C, R, R) -> (B,) mean over neighbouring pixels (across and down, every channel) of
    (|difference| + eps) ** exponent."""
    across, down = neighbour_differences(images)  # (B, C, R, R - 1), (B, C, R - 1, R)
    return ((across + eps) ** exponent).mean(dim=(1, 2, 3)) + ((down + eps) ** exponent).mean(dim=(1, 2, 3))


def image_prior(images: torch.Tensor, config: PolishConfig) -> torch.Tensor:
    """(B, C, R, R) -> (B,) the configured prior of each image."""
    if config.prior == "capped":
        return capped_differences(images, config.cap)
    return sparse_gradient_prior(images, config.exponent, config.eps)


def sample_conditions(dataset: Any, schema: Any, batch_size: int, drop_prompt: float, drop_attr: float,
                      rng: random.Random) -> tuple[list[str], list[dict[str, Any]]]:
    """batch_size (prompt, attributes) pairs of random records of the data set, one paraphrase each, with
    prompts and attributes dropped as in training."""
    prompts, attributes = [], []
    for _ in range(batch_size):
        record = dataset.record(rng.randrange(len(dataset)))
        prompts.append("" if rng.random() < drop_prompt else rng.choice(record["captions"]))
        kept = {k: v for k, v in record["attributes"].items() if rng.random() >= drop_attr}
        attributes.append(schema.validate(kept, source="polish condition"))
    return prompts, attributes


def add_refiner(pipe: Any, layers: int, channels: int) -> None:
    """Give pipe.G (which has none) a refiner of `layers` convolutions of `channels` (cgan/nets/generator.py),
    its images unchanged (the refiner's last layer starts at zero); the model's config follows."""
    from cgan.nets.generator import Generator

    if pipe.G.refine is not None:
        raise ValueError("--refine-layers: this model already has a refiner; polish it without --refine-layers")
    kwargs = {**pipe.meta["generator"], "refine_layers": layers, "refine_channels": channels}
    G = Generator(schema=pipe.schema, **kwargs).to(pipe.device)
    missing, unexpected = G.load_state_dict(pipe.G.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("refine.") for key in missing), (missing, unexpected)
    pipe.G = G
    config = pipe.meta.get("config", {}).get("model", {}).get("generator")
    if isinstance(config, dict):  # the training config: a run from this model with it as --config builds the same G
        config.update(refine_layers=layers, refine_channels=channels)
    pipe.meta = {**pipe.meta, "generator": kwargs}


def per_image_optimum(images: torch.Tensor, config: PolishConfig) -> torch.Tensor:
    """(B, C, R, R) -> the same images each optimised alone on prior(x) + anchor * mean |x - x0|
    (config.image_steps of Adam at config.image_lr on the pixels), inside (-1, 1)."""
    x = images.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=config.image_lr)
    for _ in range(config.image_steps):  # the images are independent: one summed loss optimises each alone
        loss = (image_prior(x, config) + config.anchor * (x - images).abs().mean(dim=(1, 2, 3))).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return x.detach().clamp(-0.999, 0.999)


@dataclass
class Draws:
    """What G is asked for (latents (N, z_dim), prompts, attributes), what the starting G drew (N, 3, R, R) and,
    for target "per_image", each image's own optimum (N, 3, R, R); a pool's images kept in float16."""

    z: torch.Tensor
    prompts: list[str]
    attributes: list[dict[str, Any]]
    start_images: torch.Tensor
    targets: torch.Tensor | None = None
    # only_refiner: what the frozen rest of G hands the refiner, (rgb (N, 3, R, R), features (N, C, R, R)) in
    # float32, computed once (Generator.finish turns them into images), so a step runs the refiner alone
    refiner_inputs: tuple[torch.Tensor, torch.Tensor] | None = None


def draw(pipe: Any, start: torch.nn.Module, dataset: Any, config: PolishConfig, count: int, rng: random.Random,
         generator: torch.Generator, optimise: bool) -> Draws:
    """`count` conditions as in training, latents, the starting G's images and (optimise) their optima."""
    prompts, attributes = sample_conditions(dataset, pipe.schema, count, config.drop_prompt, config.drop_attr, rng)
    z = torch.randn(count, start.z_dim, generator=generator)  # (N, z_dim)
    images, targets, refiner_inputs = [], [], []
    hook = (start.refine.register_forward_hook(lambda module, inputs, output: refiner_inputs.append(inputs))
            if optimise and config.only_refiner else None)
    for lo in range(0, count, config.batch_size):
        hi = min(count, lo + config.batch_size)
        condition = condition_input(pipe.text_cache, pipe.schema, prompts[lo:hi], attributes[lo:hi], pipe.device)
        with torch.no_grad():
            images.append(start(z[lo:hi].to(pipe.device), condition))  # (b, 3, R, R)
        if optimise:
            targets.append(per_image_optimum(images[-1], config).half())  # (b, 3, R, R)
    if hook is not None:
        hook.remove()
    start_images = torch.cat(images)  # (N, 3, R, R)
    cached = tuple(torch.cat(parts) for parts in zip(*refiner_inputs)) if refiner_inputs else None
    return Draws(z, prompts, attributes, start_images.half() if optimise else start_images,
                 torch.cat(targets) if optimise else None, cached)  # type: ignore[arg-type]


def polish(pipe: Any, dataset: Any, config: PolishConfig,
           log: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Fine-tune pipe.G in place (a CGANPipeline or ExportedModel, float32) -> the logged rows
    {step, prior, distance (mean |x - x0| in 0..255 levels)[, to_target (the same to the optima)]}.
    Deterministic for a seed on one machine."""
    if config.drop_prompt > 0 and pipe.prompt_dropout <= 0:
        raise ValueError("polish drop_prompt: this model was trained without prompt dropout, so it cannot draw "
                         "without a prompt; polish it with drop_prompt 0 (--drop-prompt 0)")
    if config.only_refiner and pipe.G.refine is None:
        raise ValueError("polish only_refiner: this model has no refiner; add one with --refine-layers")
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    G = pipe.G.train().requires_grad_(not config.only_refiner)
    trained = G.refine.requires_grad_(True) if config.only_refiner else G
    start = copy.deepcopy(G).eval().requires_grad_(False)  # x0: the model as it came
    per_image = config.target == "per_image"
    pool = draw(pipe, start, dataset, config, config.pool, rng, generator, optimise=True) if per_image else None
    # a fixed target (per_image) is a regression: momentum and a cosine decay help it settle
    optimizer = torch.optim.Adam(trained.parameters(), lr=config.lr, betas=(0.9 if per_image else 0.0, 0.99))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps) if per_image else None
    rows: list[dict[str, float]] = []
    for step in range(config.steps):
        if pool is not None:  # a batch of the pool's optima
            index = torch.randint(len(pool.z), (config.batch_size,), generator=generator).tolist()
            batch = Draws(pool.z[index], [pool.prompts[i] for i in index], [pool.attributes[i] for i in index],
                          pool.start_images[index], pool.targets[index])
        else:
            batch = draw(pipe, start, dataset, config, config.batch_size, rng, generator, optimise=False)
        if pool is not None and pool.refiner_inputs is not None:  # the frozen rest of G, computed once
            images = G.finish(*(cached[index] for cached in pool.refiner_inputs))  # (B, 3, R, R)
        else:
            condition = condition_input(pipe.text_cache, pipe.schema, batch.prompts, batch.attributes, pipe.device)
            images = G(batch.z.to(pipe.device), condition)  # (B, 3, R, R)
        prior = image_prior(images, config)  # (B,)
        distance = (images - batch.start_images.float()).abs().mean(dim=(1, 2, 3))  # (B,)
        if batch.targets is not None:
            to_target = (images - batch.targets.float()).abs().mean(dim=(1, 2, 3))  # (B,)
            loss = to_target.mean()
        else:
            loss = (prior + config.anchor * distance).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            row = {"step": step, "prior": float(prior.detach().mean()),
                   "distance": float(distance.detach().mean()) * 127.5}
            if batch.targets is not None:
                row["to_target"] = float(to_target.detach().mean()) * 127.5
            rows.append(row)
            if log is not None:
                log(row)
    pipe.G = G.eval().requires_grad_(False)
    return rows


def polish_settings(config: PolishConfig) -> dict[str, Any]:
    """The settings that shaped the polish (those of the prior not chosen, and log_every, left out)."""
    unused = {"log_every", *(("exponent", "eps") if config.prior == "capped" else ("cap",)),
              *(("pool", "image_steps", "image_lr") if config.target == "loss" else ())}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in unused}


def polish_card_section(model: str, data: str, config: PolishConfig, seconds: float,
                        refiner: dict[str, int] | None = None) -> str:
    """The model card lines that say how the model was polished (and the refiner it was given first)."""
    settings = ", ".join(f"{name}={value}" for name, value in {**(refiner or {}), **polish_settings(config)}.items())
    return (f"\n\n## Polish\n\nG was then fine-tuned alone toward an image prior for flat regions, anchored to {model} "
            f"(`python -m cgan.polish`, cgan/train/polish.py), on conditions from {data}: {settings}; "
            f"{seconds / 60:.1f} min.\n")

"""What was made before still loads and draws the same: the shipped shapes64 (its config.json holds the
flat `model` keys of earlier configs), and every committed config, whose G and D built by the model factory
match those the code before built (tests/data/model_references.json says which code wrote the references;
compared with a tolerance, since other CPUs round differently). Rewrite them only for a deliberate change:
`python tests/test_model_compat.py`."""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from cgan.condition.fusion import ConditionInput
from cgan.core.config import config_from_dict, load_config
from cgan.nets.export import read_exported, resolve_model_dir
from cgan.nets.factory import generator_kwargs
from cgan.nets.generator import Generator
from cgan.pipeline import CGANPipeline
from cgan.train.build import build_models
from conftest import ROOT, fake_text

REFERENCES = ROOT / "tests" / "data" / "model_references"
CASES = json.loads((REFERENCES.with_suffix(".json")).read_text())
TOLERANCE = dict(atol=1e-4, rtol=1e-4)  # other CPUs' kernels round differently (an Intel with AMX: ~1e-6)


@functools.cache
def references() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(REFERENCES.with_suffix(".safetensors")))


def reference(key: str) -> torch.Tensor:
    return references()[key]


@contextmanager
def one_thread():
    """The references were drawn with one thread; more threads may split a reduction otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def shapes64_images() -> dict[str, torch.Tensor]:
    pipe = CGANPipeline.from_pretrained("shapes64")
    pipe.unset_attributes = "null"  # the references leave unset attributes to the null token, as the code then did
    with one_thread():
        return {f"shapes64/{i}": pipe.generate_tensor(case["prompt"], case["attributes"], num_images=2,
                                                      seed=case["seed"], truncation=0.8)
                for i, case in enumerate(CASES["shapes64"])}


def config_outputs(name: str, schema) -> dict[str, torch.Tensor]:
    path = ROOT / "configs" / name
    config = load_config(path, ["data.path=x"] if "name: folder" in path.read_text() else [])
    if config.model.generator.color == "auto":
        config.model.generator.color = "rgb"
    with one_thread():
        torch.manual_seed(0)
        G, D, _ = build_models(config, schema, 384)
        z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1))
        cond = ConditionInput(fake_text(2), torch.tensor([True, False]),
                              *schema.encode([{"style": "flat"}, {"size": 0.3}]))
        with torch.no_grad():
            images = G.eval()(z, cond)
            logits = D.eval()(images, cond).scores()
    return {f"configs/{name}/G": images, f"configs/{name}/D": logits}


def test_shapes64_draws_the_same_images():
    for key, images in shapes64_images().items():
        assert images.shape == (2, 3, 64, 64)
        torch.testing.assert_close(images, reference(key), **TOLERANCE, msg=lambda m: f"{key}: {m}")


def test_shapes64_flat_config_builds_its_own_generator():
    """A config.json with the flat `model` section (shapes64's until stop 40, kept in tests/data), translated,
    gives the factory exactly the generator stored beside it; today's shipped shapes64 reads the same."""
    meta = json.loads((Path(__file__).parent / "data" / "shapes64_config_flat.json").read_text())
    assert "g_channel_base" in meta["config"]["model"]  # written before the nested section
    shipped, _, _ = read_exported(resolve_model_dir("shapes64"))
    assert shipped["generator"] == {**meta["generator"], **{k: v for k, v in shipped["generator"].items()
                                                            if k not in meta["generator"]}}
    config = config_from_dict(meta["config"], "shapes64_config_flat.json")
    assert config.model.generator.channel_base == meta["generator"]["channel_base"]
    rebuilt = generator_kwargs(config.model, text_dim=meta["generator"]["text_dim"],
                               resolution=config.data.resolution)
    rebuilt = json.loads(json.dumps(rebuilt))
    defaults = {k: p.default for k, p in inspect.signature(Generator).parameters.items()}
    newer = {k: v for k, v in rebuilt.items() if k not in meta["generator"]}  # settings added after the export
    assert newer == {"channel_min": 0, "refine_layers": 0, "refine_channels": 32}  # each at its default: no refiner
    assert all(defaults[k] == v for k, v in newer.items())
    assert {k: v for k, v in rebuilt.items() if k in meta["generator"]} == meta["generator"]


@pytest.mark.parametrize("name", CASES["configs"])
def test_committed_configs_build_the_same_models(name, shapes_schema):
    for key, value in config_outputs(name, shapes_schema).items():
        torch.testing.assert_close(value, reference(key), **TOLERANCE, msg=lambda m: f"{key}: {m}")


if __name__ == "__main__":  # rewrite the references: only for a deliberate change (say which in the commit)
    from safetensors.torch import save_file

    from cgan.condition.attributes import AttributeSchema
    from cgan.data.shapes import SCHEMA

    outputs = shapes64_images()
    for config_name in CASES["configs"]:
        outputs.update(config_outputs(config_name, AttributeSchema.from_dict(SCHEMA)))
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(REFERENCES.with_suffix(".safetensors")))
    print("\n".join(f"{k} sha256 {hashlib.sha256(v.numpy().tobytes()).hexdigest()}" for k, v in outputs.items()))

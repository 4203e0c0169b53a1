"""Shared fixtures: the offline MiniLM encoder, the shapes schema, tiny configs and models."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Training in the tests runs on the CPU also where a GPU is present: they assert the CPU's bitwise behaviour
# (resume, the image cache, roll-backs), which CUDA's kernels do not give; benchmarks/device_check.py checks the
# GPU's (on an H200, 4 training tests failed on that alone).
os.environ.setdefault("ACCELERATE_USE_CPU", "true")

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """@pytest.mark.needs("module", ...): a test of an optional package (the `test` extra installs them all)
    is skipped, with the install line, where the package is missing, as on a machine with its own stack;
    in CI (CI=true), where `pip install -e ".[test]"` ran, a missing package fails instead."""
    for item in items:
        for mark in item.iter_markers("needs"):
            missing = [name for name in mark.args if importlib.util.find_spec(name) is None]
            if missing and os.environ.get("CI") != "true":
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)}: pip install -e \".[test]\""))


def two_process_command(run: Path, *args: str) -> list[str]:
    """train.py on the tiny config in 2 CPU processes (run with ACCELERATE_USE_CPU=true)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"), "--out", str(run), *args]


@pytest.fixture(scope="session")
def minilm():
    from cgan.condition.text_encoder import FrozenTextEncoder

    return FrozenTextEncoder("minilm", max_length=16)


@pytest.fixture(scope="session")
def shapes_schema():
    from cgan.condition.attributes import AttributeSchema
    from cgan.data.shapes import SCHEMA

    return AttributeSchema.from_dict(SCHEMA)


@pytest.fixture
def tiny_config(tmp_path):
    from cgan.core.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml", [f"data.cache_dir={tmp_path / 'cache'}"])


def tiny_model_kwargs(**overrides):
    kwargs = dict(text_dim=384, resolution=32, z_dim=16, w_dim=32, cond_dim=32, mapping_layers=2, channel_base=256,
                  channel_max=32, attn_resolutions=(8,), attn_heads=2, num_cond_queries=4, fusion_layers=1,
                  fusion_heads=2)
    kwargs.update(overrides)
    return kwargs


def tiny_d_kwargs(**overrides):
    """tiny_model_kwargs without G's own settings (z, w, mapping): what a tiny Discriminator takes."""
    return {k: v for k, v in tiny_model_kwargs(**overrides).items() if k not in ("z_dim", "w_dim", "mapping_layers")}


def export_tiny_model(folder: Path, schema, step: int = 0, seed: int = 0) -> Path:
    """A randomly initialised tiny generator exported as a model folder (configs/tiny.yaml's settings)."""
    from cgan.nets.export import export_model
    from cgan.core.config import load_config
    from cgan.nets.generator import Generator

    torch.manual_seed(seed)
    kwargs = tiny_model_kwargs()
    G = Generator(schema=schema, **kwargs)
    return export_model(folder, G_ema=G, generator_kwargs=kwargs, schema_dict=schema.to_dict(),
                        text_encoder={"name": "minilm", "max_length": 16},
                        config_dict=load_config(ROOT / "configs" / "tiny.yaml").to_dict(), step=step,
                        images_seen=8 * step, vocabulary=shapes_vocabulary())


def shapes_vocabulary() -> list[str]:
    """The words of every shapes caption, as a run on shapes exports them."""
    from cgan.condition.vocabulary import build_vocabulary
    from cgan.data.shapes import all_captions

    return build_vocabulary(all_captions("all"))


def fake_text(batch: int, tokens: int = 8, dim: int = 384, seed: int = 0):
    from cgan.condition.text_encoder import TextEncoding

    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[:, tokens // 2:] = False
    return TextEncoding(torch.randn(batch, tokens, dim, generator=gen), mask, torch.randn(batch, dim, generator=gen))


TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One caption cache for the module: encoding the data set's captions is most of a tiny run's time."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def config(cache_dir):
    """configs/tiny.yaml on 64 shapes records, with the module's caption cache."""
    from cgan.core.config import load_config

    return load_config(TINY, [f"data.cache_dir={cache_dir}", "data.num_images=64"])  # fewer captions to encode

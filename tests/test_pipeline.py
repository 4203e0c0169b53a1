"""Exported models: deterministic generation, export/load round trip, sample.py and its errors."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cgan.attributes import InvalidAttributeError
from cgan.checkpoint import CheckpointError, export_model
from cgan.cli import sample_main
from cgan.generator import Generator
from cgan.pipeline import CGANPipeline
from conftest import tiny_model_kwargs


@pytest.fixture
def model_dir(tmp_path, shapes_schema, tiny_config):
    torch.manual_seed(0)
    kwargs = tiny_model_kwargs()
    G = Generator(schema=shapes_schema, **kwargs)
    return export_model(tmp_path / "model", G_ema=G, generator_kwargs=kwargs, schema_dict=shapes_schema.to_dict(),
                        text_encoder={"name": "minilm", "max_length": 16}, config_dict=tiny_config.to_dict(),
                        step=0, images_seen=0)


def test_same_seed_same_images_and_round_trip(model_dir, shapes_schema):
    pipe = CGANPipeline.from_pretrained(model_dir)
    a = pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, num_images=3, seed=5)
    b = pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, num_images=3, seed=5)
    c = pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, num_images=3, seed=6)
    assert a.shape == (3, 3, 32, 32)
    assert torch.equal(a, b)
    assert torch.equal(a[1:], c[:2])  # image k uses seed + k, whatever the batch
    assert not torch.equal(a[0], c[0])
    images = pipe("a red circle", {"style": "outline"}, num_images=2, seed=0)
    assert [im.size for im in images] == [(32, 32)] * 2
    # export -> load -> the same images as the in-memory generator
    weights = load_file(str(model_dir / "G_ema.safetensors"))
    G = Generator(schema=shapes_schema, **tiny_model_kwargs())
    G.load_state_dict(weights)
    pipe.G = G.eval()
    assert torch.equal(pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, 3, 5), a)


def test_bad_inputs_get_clear_errors(model_dir):
    pipe = CGANPipeline.from_pretrained(model_dir)
    with pytest.raises(InvalidAttributeError, match="(?s)unknown attribute 'colour'.*style: one of flat, outline, shaded"):
        pipe("a red circle", {"colour": "red"})
    with pytest.raises(InvalidAttributeError, match=r"'size' = 2.0 is outside its range \[0, 1\]"):
        pipe("a red circle", {"size": 2.0})
    with pytest.raises(ValueError, match="num_images: expected at least 1"):
        pipe("a red circle", num_images=0)
    pipe.prompt_dropout = 0.0
    with pytest.raises(ValueError, match="trained without prompt dropout"):
        pipe("", {})
    pipe.prompt_dropout = 0.1
    assert len(pipe("", {"style": "flat"})) == 1
    with pytest.warns(UserWarning, match="truncated"):
        pipe("a red circle " * 20)


def test_sample_cli_grid_files_and_list(model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle left of a blue square", "--attr",
                        "style=outline", "--attr", "size=0.7", "--num", "4", "--seed", "0", "--truncation", "0.7",
                        "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size == (64, 64)
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--num", "3",
                        "--out-dir", str(tmp_path / "many")]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["seed000000.png", "seed000001.png",
                                                                     "seed000002.png"]
    assert sample_main(["--model", str(model_dir), "--list-attributes"]) == 0
    assert "style: one of flat, outline, shaded" in capsys.readouterr().out
    assert sample_main(["--model", str(model_dir), "--prompt", "x", "--attr", "style"]) == 2
    assert "expected name=value" in capsys.readouterr().err
    assert sample_main(["--model", str(model_dir), "--prompt", "x", "--num", "0"]) == 2
    assert "num_images: expected at least 1" in capsys.readouterr().err


def test_broken_model_folders(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        CGANPipeline.from_pretrained(tmp_path / "nope")
    weights = model_dir / "G_ema.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        CGANPipeline.from_pretrained(model_dir)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing G_ema.safetensors"):
        CGANPipeline.from_pretrained(model_dir)
    weights.write_bytes(data)
    meta = json.loads((model_dir / "config.json").read_text())
    meta["format_version"] = 99
    (model_dir / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model format 99"):
        CGANPipeline.from_pretrained(model_dir)

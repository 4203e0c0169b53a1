"""`python -m cgan.polish`: the prior's shape, the written model, D carried over, determinism, errors."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from cgan.polish import main as polish_main
from cgan.train.polish import PolishConfig, image_prior, per_image_optimum, sparse_gradient_prior
from conftest import export_tiny_model

TINY = ["--steps", "3", "--batch-size", "4", "--threads", "1"]


def test_prior_prefers_one_hard_edge_to_a_ramp_and_flat_to_noise():
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0  # one edge of height 1
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8).clone()  # the same height in 7 small steps
    flat = torch.zeros(1, 1, 8, 8)
    noisy = flat + 0.01 * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    prior = lambda x: float(sparse_gradient_prior(x, exponent=0.5, eps=1e-3))  # noqa: E731
    assert prior(step) < prior(ramp)
    assert prior(flat) < prior(noisy)
    # at exponent 1 (total variation) the ramp and the edge cost the same: only p < 1 sharpens
    tv = lambda x: float(sparse_gradient_prior(x, exponent=1.0, eps=1e-3))  # noqa: E731
    assert tv(step) == pytest.approx(tv(ramp), rel=1e-5)


@pytest.fixture
def tiny_model(tmp_path, shapes_schema):
    folder = export_tiny_model(tmp_path / "start", shapes_schema)
    save_file({"block.weight": torch.arange(6.0).reshape(2, 3)}, str(folder / "D.safetensors"))
    return folder


def test_polish_writes_a_moved_model_with_its_d_and_is_deterministic(tmp_path, tiny_model, capsys):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert polish_main(["--model", str(tiny_model), "--out", str(out), *TINY]) == 0
    assert "D carried over" in capsys.readouterr().out
    start = load_file(str(tiny_model / "G_ema.safetensors"))
    a, b = (load_file(str(out / "G_ema.safetensors")) for out in outs)
    assert a.keys() == start.keys()
    assert any(not torch.equal(a[k], start[k]) for k in a), "three steps left G where it was"
    assert all(torch.equal(a[k], b[k]) for k in a), "one seed gave two models"
    carried, given = (load_file(str(folder / "D.safetensors")) for folder in (outs[0], tiny_model))
    assert carried.keys() == given.keys() and all(torch.equal(carried[k], given[k]) for k in given)
    mask = os.umask(0)
    os.umask(mask)
    assert {oct((outs[0] / name).stat().st_mode & 0o777) for name in ("G_ema.safetensors", "D.safetensors",
                                                                      "config.json")} == {oct(0o666 & ~mask)}
    meta = json.loads((outs[0] / "config.json").read_text())
    assert meta["polish"]["steps"] == 3 and meta["polish"]["data"] == "shapes (train split)"
    assert meta["generator"] == json.loads((tiny_model / "config.json").read_text())["generator"]


def test_polished_model_generates(tmp_path, tiny_model):
    from cgan.pipeline import CGANPipeline

    out = tmp_path / "polished"
    assert polish_main(["--model", str(tiny_model), "--out", str(out), *TINY]) == 0
    images = CGANPipeline.from_pretrained(out)("a red circle", {"style": "flat"}, num_images=2, seed=0)
    assert [im.size for im in images] == [(32, 32), (32, 32)]


@pytest.mark.parametrize("extra, message", [
    (["--data", "no/such/folder"], "--data no/such/folder: expected 'shapes' or a data folder"),
    (["--prior", "sparse", "--exponent", "1.5"], "polish exponent: expected a number in (0, 1], got 1.5"),
    (["--steps", "0"], "polish steps: expected an integer >= 1"),
    (["--target", "per_image", "--pool", "0"], "polish pool: expected an integer >= 1, got 0"),
    (["--only-refiner"], "polish only_refiner: this model has no refiner; add one with --refine-layers"),
])
def test_bad_input_is_named(tmp_path, tiny_model, capsys, extra, message):
    assert polish_main(["--model", str(tiny_model), "--out", str(tmp_path / "out"), *TINY, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_existing_out_folder_is_kept(tmp_path, tiny_model, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert polish_main(["--model", str(tiny_model), "--out", str(out), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user data"


def test_conditions_can_come_from_a_data_folder(tmp_path, tiny_model, capsys):
    from cgan.data.__main__ import main as data_main

    folder = tmp_path / "folder"
    assert data_main(["export", "shapes", "--out", str(folder), "--num", "12", "--size", "32"]) == 0
    out = tmp_path / "polished"
    assert polish_main(["--model", str(tiny_model), "--out", str(out), "--data", str(folder), *TINY]) == 0
    assert f"on {folder} " in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["polish"]["data"] == str(folder)


def test_a_refiner_keeps_the_images_then_learns_and_is_written(tmp_path, tiny_model, capsys):
    from cgan.pipeline import CGANPipeline
    from cgan.train.polish import add_refiner

    pipe = CGANPipeline.from_pretrained(tiny_model)
    before = pipe("a red circle", {"style": "flat"}, num_images=2, seed=0, output_type="pt").images
    add_refiner(pipe, layers=2, channels=8)
    after = pipe("a red circle", {"style": "flat"}, num_images=2, seed=0, output_type="pt").images
    assert torch.allclose(before, after, atol=1e-5), "adding the refiner changed the images"
    out = tmp_path / "refined"
    args = ["--model", str(tiny_model), "--out", str(out), *TINY, "--refine-layers", "2", "--refine-channels", "8"]
    assert polish_main(args) == 0
    meta = json.loads((out / "config.json").read_text())
    assert (meta["generator"]["refine_layers"], meta["generator"]["refine_channels"]) == (2, 8)
    weights = load_file(str(out / "G_ema.safetensors"))
    assert any(torch.count_nonzero(v) for k, v in weights.items() if k.startswith("refine.out")), "it did not learn"
    assert [im.size for im in CGANPipeline.from_pretrained(out)("a red circle", num_images=1, seed=0)] == [(32, 32)]
    again = ["--model", str(out), "--out", str(tmp_path / "twice"), *TINY, "--refine-layers", "2"]
    assert polish_main(again) == 2
    assert "already has a refiner" in capsys.readouterr().err


def test_each_image_optimum_sharpens_a_ramp_and_keeps_its_level():
    ramp = torch.linspace(-0.5, 0.5, 16).expand(2, 3, 16, 16).clone()  # a soft edge across each image
    config = PolishConfig(prior="sparse", anchor=0.3, image_steps=200)
    optimum = per_image_optimum(ramp, config)
    assert float(image_prior(optimum, config).mean()) < float(image_prior(ramp, config).mean())
    assert (optimum - ramp).abs().mean() < 0.1, "the anchor let the image wander"
    assert torch.allclose(per_image_optimum(ramp[:1], config), optimum[:1], atol=1e-6), "it depends on the batch"


def test_a_refiner_fitted_to_each_image_optimum(tmp_path, tiny_model, capsys):
    (tiny_model / "MODEL_CARD.md").write_text("# tiny\n\nA model card the polish adds to.\n")
    out = tmp_path / "distilled"
    args = ["--model", str(tiny_model), "--out", str(out), *TINY, "--refine-layers", "2", "--refine-channels", "8",
            "--only-refiner", "--target", "per_image", "--pool", "8", "--image-steps", "5", "--prior", "sparse"]
    assert polish_main(args) == 0
    assert "to the optima" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["polish"]["target"] == "per_image" and meta["polish"]["pool"] == 8
    assert meta["polish"]["only_refiner"] is True and meta["polish"]["refine_layers"] == 2
    card = (out / "MODEL_CARD.md").read_text()
    assert "A model card the polish adds to." in card and "## Polish" in card and "refine_layers=2" in card
    start, polished = (load_file(str(folder / "G_ema.safetensors")) for folder in (tiny_model, out))
    assert all(torch.equal(polished[k], start[k]) for k in start), "only the refiner may move"


def test_only_refiner_fits_on_the_rest_of_g_computed_once(tiny_model):
    """--only-refiner --target per_image runs the frozen rest of G once per pool image: what it caches, through
    Generator.finish, is what G draws for those latents and conditions."""
    import random

    from cgan.data import ShapesDataset
    from cgan.nets.sampling import condition_input
    from cgan.pipeline import CGANPipeline
    from cgan.train.polish import add_refiner, draw

    pipe = CGANPipeline.from_pretrained(tiny_model)
    add_refiner(pipe, layers=2, channels=8)
    torch.nn.init.normal_(pipe.G.refine.out.weight, std=0.1)  # a refiner that changes the images
    config = PolishConfig(only_refiner=True, target="per_image", pool=6, image_steps=1, batch_size=4)
    dataset = ShapesDataset(num_images=16, resolution=pipe.resolution, split="train", seed=0)
    pool = draw(pipe, pipe.G, dataset, config, 6, random.Random(0), torch.Generator().manual_seed(0), optimise=True)
    rgb, features = pool.refiner_inputs
    assert rgb.shape == (6, 3, pipe.resolution, pipe.resolution) and features.shape[0] == 6
    with torch.no_grad():
        drawn = pipe.G(pool.z, condition_input(pipe.text_cache, pipe.schema, pool.prompts, pool.attributes, "cpu"))
        torch.testing.assert_close(pipe.G.finish(rgb, features), drawn, rtol=0, atol=1e-5)  # batch rounding
    assert draw(pipe, pipe.G, dataset, PolishConfig(target="per_image", pool=6, image_steps=1), 6, random.Random(0),
                torch.Generator().manual_seed(0), optimise=True).refiner_inputs is None  # all of G trains: no cache

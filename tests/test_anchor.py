"""loss.anchor: a continuation holds G's images near those of the generator it started from."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cgan.core.config import ConfigError, load_config
from cgan.train.checkpoint import list_checkpoints
from cgan.train.loop import train

BASE = ["train.total_steps=3", "train.tracker=none", "train.log_every=1"]


def test_anchor_needs_a_generator_to_start_from():
    with pytest.raises(ConfigError, match="loss.anchor: .*train.init_from"):
        load_config("configs/tiny.yaml", ["loss.anchor=10"])
    with pytest.raises(ConfigError, match="loss.anchor"):
        load_config("configs/tiny.yaml", ["loss.anchor=-1", "train.init_from=shapes64"])


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_anchor_starts_at_zero_grows_as_g_moves_and_holds_the_same_generator_at_resume(tmp_path, capsys):
    start = train(load_config("configs/tiny.yaml", BASE), tmp_path / "start", max_steps=1)
    anchored = BASE + [f"train.init_from={start}", "loss.anchor=10"]
    train(load_config("configs/tiny.yaml", anchored), tmp_path / "run", max_steps=2)
    assert "loss.anchor: G's images are held near those of" in capsys.readouterr().out
    first, second = metrics(tmp_path / "run")
    assert first["loss/G_anchor"] == 0.0  # step 1's G is the starting G: the same images, bit for bit
    assert second["loss/G_anchor"] > 0  # one G step later it has moved
    # the anchor is rebuilt from train.init_from at resume, so the resumed run equals one straight through
    train(load_config("configs/tiny.yaml", anchored), tmp_path / "run", resume="latest")
    train(load_config("configs/tiny.yaml", anchored), tmp_path / "straight")
    split, straight = (load_file(str(tmp_path / name / "model" / "G_ema.safetensors")) for name in ("run", "straight"))
    for key in straight:
        torch.testing.assert_close(split[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)
    last_split, last_straight = metrics(tmp_path / "run")[-1], metrics(tmp_path / "straight")[-1]
    assert last_split["loss/G_anchor"] == pytest.approx(last_straight["loss/G_anchor"], rel=1e-4)


def test_a_heavier_anchor_keeps_g_nearer_its_start(tmp_path):
    start = train(load_config("configs/tiny.yaml", BASE), tmp_path / "start", max_steps=1)
    moved = {}
    for weight in (0.001, 1000):
        cfg = load_config("configs/tiny.yaml", BASE + [f"train.init_from={start}", f"loss.anchor={weight}",
                                                       "train.total_steps=6", "train.lr_g=0.01"])
        train(cfg, tmp_path / f"w{weight}")
        moved[weight] = metrics(tmp_path / f"w{weight}")[-1]["loss/G_anchor"]
    assert moved[1000] < moved[0.001]


def test_g_params_refiner_trains_the_refiner_alone_and_stays_so_at_resume(tmp_path):
    with pytest.raises(ConfigError, match="train.g_params=refiner: G has no refiner"):
        load_config("configs/tiny.yaml", ["train.g_params=refiner"])
    with pytest.raises(ConfigError, match="train.g_params"):
        load_config("configs/tiny.yaml", ["train.g_params=top"])
    refined = BASE + ["model.generator.refine_layers=1"]
    start = train(load_config("configs/tiny.yaml", refined), tmp_path / "start", max_steps=1)
    only = refined + [f"train.init_from={start}", "train.g_params=refiner", "train.lr_g=0.01"]
    train(load_config("configs/tiny.yaml", only), tmp_path / "run")
    before = load_file(str(start / "G_ema.safetensors"))  # a model starts both G and G_ema with its G_ema
    after = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "G.safetensors"))
    moved = {key for key in after if not torch.equal(before[key], after[key])}
    assert moved and all(key.startswith("refine.") for key in moved)  # the refiner learned; the rest is as it came
    with pytest.raises(ConfigError, match="train.g_params='refiner' \\(now 'all'\\)"):
        train(load_config("configs/tiny.yaml", refined + [f"train.init_from={start}"]), tmp_path / "run",
              resume="latest")

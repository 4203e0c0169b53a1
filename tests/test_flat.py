"""loss.flat: noise in flat regions is pulled out of G's images, edges are left alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cgan.core.config import ConfigError, load_config
from cgan.train.terms.flat import capped_differences


def test_flat_term_pulls_small_differences_to_zero_and_leaves_edges_alone():
    flat = torch.zeros(2, 3, 8, 8)
    assert torch.equal(capped_differences(flat, 0.03), torch.zeros(2))
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0  # a hard edge down the middle: far above the cap
    image[..., 0, 0] = 0.01  # one pixel of noise in the flat region, under the cap
    image.requires_grad_(True)
    capped_differences(image, 0.03).sum().backward()
    grad = image.grad[0, 0]
    assert float(grad[0, 0]) > 0  # the noisy pixel is pushed back toward its neighbours
    assert float(grad[4, 3].abs()) == 0 and float(grad[4, 4].abs()) == 0  # the edge's two sides: no gradient
    # the term grows with noise under the cap and stops growing above it
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    small, large, huge = (float(capped_differences(noise * s, 0.03)) for s in (0.001, 0.005, 10.0))
    assert 0 < small < large < huge <= 0.03


def test_flat_cap_is_checked():
    with pytest.raises(ConfigError, match="loss.flat_cap"):
        load_config("configs/tiny.yaml", ["loss.flat_cap=0"])
    with pytest.raises(ConfigError, match="loss.flat"):
        load_config("configs/tiny.yaml", ["loss.flat=-1"])


def test_training_with_the_flat_term_logs_it_and_may_turn_it_on_at_resume(tmp_path):
    from cgan.train.loop import train

    base = ["train.total_steps=2", "train.tracker=none", "train.log_every=1"]
    train(load_config("configs/tiny.yaml", base), tmp_path / "run", max_steps=1)
    # the term has no D head, so a run may take it up (or drop it) when resumed
    train(load_config("configs/tiny.yaml", base + ["loss.flat=5", "loss.flat_from_kimg=0"]), tmp_path / "run", resume="latest")
    first, last = (json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert "loss/G_flat" not in first
    assert last["step"] == 2 and np.isfinite(last["loss/G_flat"]) and last["loss/G_flat"] > 0

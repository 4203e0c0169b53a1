"""Diversity measures (cgan.diversity) and unset attributes drawn from the data (cgan.attribute_prior)."""
from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from cgan.condition.attribute_prior import build_prior, fill_unset
from cgan.condition.attributes import AttributeSchema
from cgan.core.images import image_to_tensor
from cgan.data import shapes as shapes_lib
from cgan.eval.diversity import object_extent, precision_recall, total_variation
from cgan.train.build import build_dataset
from cgan.train.terms.diversity import LATENT_DISTANCE, data_tau


def test_precision_recall_tells_fidelity_from_coverage():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = rng.normal(size=(300, 8)) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # a collapsed model: every sample near one real point is faithful but covers almost nothing
    collapsed = real[:1] + 0.01 * rng.normal(size=(300, 8))
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05
    with pytest.raises(ValueError, match="more than 3 rows"):
        precision_recall(real[:3], real)


def test_total_variation():
    assert total_variation(Counter(a=5, b=5), Counter(a=1, b=1)) == 0.0
    assert total_variation(Counter(a=10), Counter(b=3)) == 1.0
    assert total_variation(Counter(a=3, b=1), Counter(a=1, b=1)) == 0.25


def test_object_extent_reads_place_and_size_of_rendered_shapes():
    for seed in range(5):
        scene = shapes_lib.sample_scene(random.Random(seed))
        if len(scene.objects) != 1:
            continue
        extent = object_extent(image_to_tensor(shapes_lib.render(scene, 64))[None])[0]
        obj = scene.objects[0]
        assert abs(float(extent[0]) - obj["x"]) < 0.05 and abs(float(extent[1]) - obj["y"]) < 0.05
    blank = torch.zeros(1, 3, 32, 32)
    assert object_extent(blank).isnan().all()  # nothing differs from the background


SCHEMA = AttributeSchema.from_dict({"tone": ["warm", "cold"], "kind": ["a", "b"], "level": {"type": "continuous"}})


def _records(n: int = 400) -> list[dict]:
    rng = np.random.default_rng(1)
    records = []
    for i in range(n):
        caption = f"thing {i % 4}"
        records.append({"captions": [caption], "attributes": {
            "tone": "warm" if rng.random() < 0.5 else "cold",  # independent of the caption
            "kind": "a" if i % 4 < 2 else "b",  # a function of the caption
            "level": float(rng.random())}})
    return records


def test_prior_draws_independent_attributes_from_the_data_and_dependent_ones_by_caption():
    prior = build_prior(_records(), SCHEMA)
    assert "by_caption" not in prior["attributes"]["tone"]
    assert "by_caption" in prior["attributes"]["kind"]
    draws = [fill_unset(prior, "thing 3", {}, seed) for seed in range(200)]
    assert {d["kind"] for d in draws} == {"b"}  # the records of that caption are all "b"
    assert 0.35 < sum(d["tone"] == "warm" for d in draws) / len(draws) < 0.65
    assert all(0.0 <= d["level"] <= 1.0 for d in draws)
    # deterministic in the seed; a given value is kept; an unknown caption leaves the dependent one unset
    assert fill_unset(prior, "thing 3", {}, 7) == fill_unset(prior, "thing 3", {}, 7)
    assert fill_unset(prior, "thing 3", {"tone": "cold"}, 7)["tone"] == "cold"
    assert "kind" not in fill_unset(prior, "something new", {}, 0)
    assert fill_unset(None, "thing 3", {}, 0) == {}


def test_shipped_model_draws_unset_attributes_as_the_data_has_them():
    from cgan.pipeline import CGANPipeline

    pipe = CGANPipeline.from_pretrained("shapes64")
    assert set(pipe.meta["attribute_prior"]["attributes"]) == {"style", "background", "size"}
    drawn = [pipe.fill_unset("a red circle", {}, seed) for seed in range(60)]
    assert {d["background"] for d in drawn} == {"light", "dark"}
    assert {d["style"] for d in drawn} == {"flat", "outline", "shaded"}
    images = pipe.generate_batch(["a red circle"] * 2, [{}, {}], [3, 3])
    assert torch.allclose(images[0], images[1], atol=1e-4)  # the draw follows the seed
    pipe.unset_attributes = "null"
    try:
        null = pipe.generate_batch(["a red circle"], [{"style": "flat"}], [3])
        assert pipe.fill_unset("a red circle", {"style": "flat"}, 3) == {"style": "flat"}
    finally:
        pipe.unset_attributes = "sample"
    full = {"style": "flat", "background": "light", "size": 0.5}
    assert torch.equal(pipe.generate_batch(["a red circle"], [full], [3]),
                       pipe.generate_batch(["a red circle"], [full], [3]))  # nothing drawn when all are given
    assert null.shape == images[:1].shape


def test_diversity_term_is_zero_for_varied_images_and_tau_for_identical_ones():
    from cgan.train.terms.diversity import diversity_loss

    z_a, z_b = torch.zeros(4, 8), torch.ones(4, 8)  # latent distance 1 per row
    same = torch.zeros(4, 3, 8, 8)
    assert float(diversity_loss(same, same, z_a, z_b, tau=0.5)) == pytest.approx(0.5)
    apart = torch.ones(4, 3, 8, 8)  # image distance 1 > tau: nothing to push
    assert float(diversity_loss(same, apart, z_a, z_b, tau=0.5)) == 0.0


def test_the_bound_from_the_data_is_the_distance_of_two_real_images_of_one_caption(tmp_path):
    from PIL import Image

    from cgan.data import FolderDataset

    (tmp_path / "images").mkdir()
    rows = [("black.png", 0, "a square"), ("white.png", 255, "a square"), ("grey.png", 128, "a circle")]
    for name, level, _ in rows:
        Image.new("RGB", (16, 16), (level,) * 3).save(tmp_path / "images" / name)
    (tmp_path / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"images/{name}", "text": caption}) + "\n" for name, _, caption in rows))
    tau, distance = data_tau(FolderDataset(tmp_path, resolution=16))
    assert distance == pytest.approx(2.0) and tau == pytest.approx(2.0 / LATENT_DISTANCE)  # black vs white only
    (tmp_path / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"images/{name}", "text": name}) + "\n" for name, _, _ in rows))
    with pytest.raises(ValueError, match="no caption has two images.*give loss.diversity_tau a number"):
        data_tau(FolderDataset(tmp_path, resolution=16))
    from cgan.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="loss.diversity_tau: expected a number > 0, 'data'.*'levels'.*'auto'"):
        load_config("configs/tiny.yaml", ["loss.diversity_tau=auto"])
    z = torch.randn(200_000, 4)
    assert float((z[:100_000] - z[100_000:]).abs().mean()) == pytest.approx(LATENT_DISTANCE, rel=0.01)


def _folder(root, rows) -> None:
    """A folder of flat grey images: rows of (file name, grey level, caption, style)."""
    from PIL import Image

    (root / "images").mkdir(exist_ok=True)
    for name, level, _, _ in rows:
        Image.new("RGB", (16, 16), (level,) * 3).save(root / "images" / name)
    (root / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"images/{name}", "text": caption, "style": style}) + "\n"
        for name, _, caption, style in rows))


def test_the_bounds_by_level_are_the_spread_of_real_images_that_ask_for_the_same_thing(tmp_path):
    from cgan.data import FolderDataset
    from cgan.train.terms.diversity import level_taus, row_levels

    black_grey = (128 / 127.5 - 1) - (-1.0)  # the pixel distance of a black and a grey image
    _folder(tmp_path, [("black.png", 0, "a square", "x"), ("grey.png", 128, "a square", "x"),
                       ("white.png", 255, "a square", "y")])
    taus = level_taus(FolderDataset(tmp_path, resolution=16))
    assert len(taus) == 4  # nothing / prompt / style / prompt and style given
    assert taus[3] == pytest.approx(black_grey / LATENT_DISTANCE, abs=1e-4)  # "a square" in style x: one pair
    assert taus[2] == taus[3]  # style x alone: the same two images
    assert taus[1] > taus[3] and taus[0] > taus[3]  # the caption alone, or nothing: white joins them
    _folder(tmp_path, [("black.png", 0, "a square", "x"), ("grey.png", 128, "a circle", "x"),
                       ("white.png", 255, "a square", "y")])
    taus = level_taus(FolderDataset(tmp_path, resolution=16))
    assert taus[3] == 0.0 and taus[1] > 0.0  # no full request repeats: nothing to keep apart there
    prompt = torch.tensor([True, False, True])
    attrs = torch.tensor([[True, False], [True, True], [False, False]])
    assert row_levels(prompt, attrs).tolist() == [3, 6, 1]


def test_the_term_rests_on_rows_whose_bound_is_zero():
    from cgan.train.terms.diversity import diversity_loss

    same = torch.zeros(2, 3, 8, 8)
    loss = diversity_loss(same, same, torch.zeros(2, 8), torch.ones(2, 8), tau=torch.tensor([0.0, 0.6]))
    assert float(loss) == pytest.approx(0.3)  # (0 + 0.6) / 2


def test_training_with_bounds_by_level_saves_them_and_checks_them_on_resume(tmp_path):
    from cgan.core.config import ConfigError, load_config
    from cgan.train.loop import train
    from cgan.train.terms.diversity import level_taus

    config = load_config("configs/tiny.yaml", ["loss.diversity=1", "loss.diversity_tau=levels",
                                               "train.total_steps=1", "train.tracker=none"])
    train(config, tmp_path / "run")
    saved = load_config(tmp_path / "run" / "config.yaml").loss.diversity_tau
    assert saved == level_taus(build_dataset(config.data))  # 16 numbers: prompt, style, background, size
    wrong = load_config("configs/tiny.yaml", ["loss.diversity=1", "loss.diversity_tau=[0.1, 0.2]",
                                              "train.total_steps=1", "train.tracker=none"])
    with pytest.raises(ConfigError, match="a list of 2 bounds, but .* make 16 levels"):
        train(wrong, tmp_path / "wrong")


def test_minibatch_stddev_adds_one_map_per_group():
    from cgan.nets.discriminator import minibatch_stddev

    x = torch.zeros(6, 5, 4, 4)
    x[3:] = torch.arange(3.0)[:, None, None, None]  # the second group of 3 varies, the first does not
    out = minibatch_stddev(x, group=4)  # 6 rows: groups of 3, the largest divisor of 6 up to 4
    assert out.shape == (6, 6, 4, 4)
    assert float(out[:3, -1].max()) < 1e-3 and float(out[3:, -1].min()) > 0.5


def test_training_with_the_diversity_term_and_mbstd(tmp_path):
    from cgan.core.config import load_config
    from cgan.train.loop import train

    config = load_config("configs/tiny.yaml", ["loss.diversity=1", "model.discriminator.mbstd_group=4",
                                               "train.total_steps=2", "train.tracker=none", "loss.diversity_tau=data"])
    train(config, tmp_path / "run")
    # the bound measured from the data is the number the run saved (a resume uses it as it is)
    saved = load_config(tmp_path / "run" / "config.yaml").loss.diversity_tau
    assert isinstance(saved, float) and saved == round(data_tau(build_dataset(config.data))[0], 4)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss/G_diversity" in last and np.isfinite(last["loss/G_diversity"])
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert set(meta["attribute_prior"]["attributes"]) == {"style", "background", "size"}


def test_diversity_command_prints_coverage_with_its_reference(capsys):
    from cgan.diversity import main

    assert main(["--model", "shapes64", "--num", "24"]) == 0
    out = capsys.readouterr().out
    assert "| background |" in out and "reader on real (floor)" in out and "place spread" in out
    assert main(["--model", "shapes64", "--num", "24", "--unset", "null", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fields"]["background"]["generated"]["dark"] == 1.0  # the null token's one mode
    assert main(["--model", "no/such/model"]) == 2


def test_training_with_the_twin_attribute_term(tmp_path):
    from cgan.core.config import ConfigError, load_config
    from cgan.train.loop import train

    config = load_config("configs/tiny.yaml", ["loss.attributes_twin=1", "train.total_steps=2", "train.tracker=none"])
    train(config, tmp_path / "run")
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(last["loss/D_twin"]) and last["loss/D_twin"] > 0
    assert last["loss/G_twin"] < 0  # G plays against the twin: its part is minus the twin's loss
    from safetensors.torch import load_file
    weights = load_file(str(next((tmp_path / "run" / "checkpoints").iterdir()) / "D.safetensors"))
    assert weights["term_heads.attributes_twin.weight"].shape[0] == 3 + 2 + 1  # style, background, size
    with pytest.raises(ConfigError, match="loss.attributes_twin: is the twin of the attribute term, which is off"):
        load_config("configs/tiny.yaml", ["loss.attributes_twin=1", "loss.attributes=0"])


class _Records:
    """A folder-like data set: record(i) and image(i) (PIL, 4 x 4), caption by index."""

    def __init__(self, captions, shades):
        self.captions, self.shades = captions, shades

    def __len__(self):
        return len(self.captions)

    def record(self, i):
        return {"captions": [self.captions[i]], "attributes": {}}

    def image(self, i):
        from PIL import Image
        return Image.new("RGB", (4, 4), (self.shades[i],) * 3)


def _three_styles(captions):
    """The emoji set in small: each caption drawn in three styles, one image each (shades 0, 120, 240)."""
    records = _Records([c for c in captions for _ in range(3)], [0, 120, 240] * len(captions))
    records.record = lambda i: {"captions": [records.captions[i]],
                                "attributes": {"style": ("noto", "line", "flat")[i % 3]}}
    return records


class _Judges:
    net, bin_edges = object(), {}

    @staticmethod
    def features(images):
        return images.flatten(1)  # (K, 48)


def test_request_diversity_compares_seeds_of_one_request_with_its_real_images():
    from cgan.eval.diversity import request_diversity

    data = _Records(["a coat"] * 6 + ["a bag"] * 6, [0, 50, 100, 150, 200, 250] * 2)
    collapsed = lambda prompts, attributes, seeds: torch.zeros(len(seeds), 3, 4, 4)  # noqa: E731
    assert request_diversity(collapsed, data, _Judges(), per_request=6)["ratio"] == 0.0

    def as_varied_as_the_data(prompts, attributes, seeds):  # the real images' shades, in another order
        shades = torch.tensor([250, 0, 200, 50, 150, 100], dtype=torch.float32)[:len(seeds)] / 127.5 - 1
        return shades[:, None, None, None].expand(-1, 3, 4, 4)

    result = request_diversity(as_varied_as_the_data, data, _Judges(), per_request=6)
    assert result["requests"] == 2 and result["ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"the most any has is 6\); lower --per-request to 6 or less"):
        request_diversity(collapsed, data, _Judges(), per_request=7)
    once = _Records([f"emoji {k}" for k in range(5)], [0] * 5)  # the emoji set: one image per request
    with pytest.raises(ValueError, match="every request .* appears once among the 5 of this folder.*--by caption"):
        request_diversity(collapsed, once, _Judges())
    # --by caption: a caption's images in several styles are the reference; the model is asked without attributes
    styled = _three_styles(["a face", "a cat"])
    asked = []

    def record_asks(prompts, attributes, seeds):
        asked.extend(attributes)
        return collapsed(prompts, attributes, seeds)

    result = request_diversity(record_asks, styled, _Judges(), per_request=3, by="caption")
    assert result["requests"] == 2 and result["by"] == "caption" and asked == [{}] * 6
    asked.clear()  # caption-attributes: seed j asks for real image j's style
    result = request_diversity(record_asks, styled, _Judges(), per_request=3, by="caption-attributes")
    assert result["requests"] == 2 and asked[:3] == [{"style": "noto"}, {"style": "line"}, {"style": "flat"}]
    with pytest.raises(ValueError, match="every request"):
        request_diversity(collapsed, styled, _Judges(), per_request=3)  # by request: each (caption, style) once
    # a continuous attribute: a request is its bin, and each seed asks for the value of one real image in it
    inked = _Records(["a coat"] * 4, [0, 60, 120, 180])
    inks = [0.1, 0.2, 0.3, 0.7]  # bins cut at 0.5: the first three share a request
    inked.record = lambda i: {"captions": ["a coat"], "attributes": {"ink": inks[i]}}
    judges = _Judges()
    judges.bin_edges = {"ink": [0.5]}
    asked.clear()
    result = request_diversity(record_asks, inked, judges, per_request=3)
    assert result["requests"] == 1 and asked == [{"ink": 0.1}, {"ink": 0.2}, {"ink": 0.3}]

    def ink_alone(prompts, attributes, seeds):  # follows the ink asked, ignores the latent
        shades = torch.tensor([a["ink"] for a in attributes])
        return shades[:, None, None, None].expand(-1, 3, 4, 4) + 0.01 * torch.tensor(seeds)[:, None, None, None]

    result = request_diversity(ink_alone, inked, judges, per_request=3, one_latent=True)
    assert 0 < result["one_latent_ratio"] < result["ratio"]  # the latent adds its part on top of the ink's


def test_in_training_diversity_falls_back_to_captions_where_no_request_repeats(monkeypatch):
    from cgan.eval import evaluation

    styled = _Records(["a face"] * 6, [0, 50, 100, 150, 200, 250])  # six styles of one caption: the emoji set
    styled.record = lambda i: {"captions": ["a face"], "attributes": {"style": f"style {i}"}}
    collapsed = lambda prompts, attributes, seeds: torch.zeros(len(seeds), 3, 4, 4)  # noqa: E731
    monkeypatch.setattr(evaluation.faithfulness, "pipeline_generate_fn", lambda pipe: collapsed)
    evaluator = evaluation.Evaluator.__new__(evaluation.Evaluator)
    evaluator.dataset, evaluator.custom_classifier = styled, _Judges()
    metrics = evaluator.request_diversity(pipe=None)
    assert metrics["metric/diversity/caption_ratio"] == 0.0 and "metric/diversity/ratio" not in metrics
    evaluator.dataset = _three_styles(["a face", "a cat"])  # three images per caption: 3 seeds each
    assert evaluator.request_diversity(pipe=None)["metric/diversity/caption_ratio"] == 0.0
    evaluator.dataset = _Records([f"emoji {k}" for k in range(6)], [0] * 6)  # no caption repeats either
    assert evaluator.request_diversity(pipe=None) == {}

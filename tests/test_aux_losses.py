"""The auxiliary loss terms (config `loss`): contrastive image-condition matching and attribute prediction."""
import json
import random
import re

import pytest
import torch

from cgan.condition.fusion import ConditionInput
from cgan.core.config import ConfigError, load_config
from cgan.data import ShapesDataset
from cgan.data.shapes import HELDOUT_PAIRS, SHAPES, contradictions, paraphrases, sample_scene
from cgan.nets.discriminator import Discriminator
from cgan.train.losses import same_condition
from cgan.train.terms.attributes import attribute_loss
from cgan.train.terms.contrastive import contrastive_loss
from cgan.train.loop import train
from conftest import TINY, fake_text, tiny_d_kwargs


def test_same_condition_marks_only_identical_requests(shapes_schema):
    captions = ["a red circle", "a red circle", "a blue square", "a red circle", "a red circle"]
    prompt_present = torch.tensor([True, True, True, False, False])
    attrs = [{"style": "flat"}, {"style": "flat"}, {"style": "flat"}, {"style": "flat"}, {"style": "flat"}]
    index, value, present = shapes_schema.encode(attrs)
    same = same_condition(captions, prompt_present, index, value, present)
    assert same.tolist() == [[True, True, False, False, False],
                             [True, True, False, False, False],
                             [False, False, True, False, False],
                             [False, False, False, True, True],  # both without a prompt: the same request
                             [False, False, False, True, True]]
    index2, value2, present2 = shapes_schema.encode([{"style": "flat"}, {"style": "outline"}, {}, {"size": 0.5},
                                                     {"size": 0.25}])
    same = same_condition(["x"] * 5, torch.ones(5, dtype=torch.bool), index2, value2, present2)
    assert same.sum() == 5  # every attribute set differs: only the diagonal


def test_contrastive_loss_rewards_alignment_and_ignores_duplicates():
    torch.manual_seed(0)
    cond = torch.randn(6, 16)
    own = torch.eye(6, dtype=torch.bool)
    aligned = contrastive_loss(cond * 3, cond, own, temperature=0.1)
    shuffled = contrastive_loss(cond.roll(1, dims=0) * 3, cond, own, temperature=0.1)
    assert aligned < 0.1 < shuffled
    # Two samples with the same condition: their (identical) embeddings must not count as negatives.
    dup = cond.clone()
    dup[1] = dup[0]
    same = own.clone()
    same[0, 1] = same[1, 0] = True
    assert contrastive_loss(dup * 3, dup, same, 0.1) < 0.1 < contrastive_loss(dup * 3, dup, own, 0.1)


def test_contrastive_hard_negatives_count_only_where_valid():
    torch.manual_seed(0)
    cond = torch.randn(4, 16)
    own = torch.eye(4, dtype=torch.bool)
    plain = contrastive_loss(cond * 3, cond, own, 0.1)
    none_valid = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(contrastive_loss(cond * 3, cond, own, 0.1, torch.randn(4, 16), none_valid), plain)
    # a contradicting caption that sits as close to the image as its own caption makes the loss grow;
    # one far away changes almost nothing
    all_valid = torch.ones(4, dtype=torch.bool)
    assert contrastive_loss(cond * 3, cond, own, 0.1, cond.clone(), all_valid) > plain + 0.3
    assert contrastive_loss(cond * 3, cond, own, 0.1, -cond, all_valid) < plain + 1e-3
    with pytest.raises(ConfigError, match="loss.contrastive_hard: adds negatives to the contrastive term"):
        load_config(TINY, ["loss.contrastive=0", "loss.contrastive_hard=true"])


def test_attribute_loss_only_counts_given_attributes():
    logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]])
    continuous = torch.tensor([[10.0], [-10.0]])  # sigmoid: ~1 and ~0
    index = torch.tensor([[0, 0], [1, 0]])
    value = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    present = torch.ones(2, 2, dtype=torch.bool)
    assert attribute_loss([logits, continuous], [True, False], index, value, present) < 0.01
    wrong = torch.tensor([[0, 0], [2, 0]])
    assert attribute_loss([logits, continuous], [True, False], wrong, value, present) > 4
    present[1, 0] = False  # the wrong label is on an attribute that was not given: not counted
    assert attribute_loss([logits, continuous], [True, False], wrong, value, present) < 0.01


def test_discriminator_heads_exist_only_when_asked(shapes_schema):
    kwargs = tiny_d_kwargs()
    plain = Discriminator(schema=shapes_schema, **kwargs)
    heads = Discriminator(schema=shapes_schema, contrastive_dim=24, attribute_heads=True, **kwargs)
    images, text = torch.randn(3, 3, 32, 32), fake_text(3)
    cond_args = ConditionInput(text, torch.ones(3, dtype=torch.bool),
                               *shapes_schema.encode([{"style": "flat"}, {}, {"size": 1}]))
    out = heads(images, cond_args)
    logits, features, cond = out.scores(), out.plain, out.cond
    image_embedding, cond_embedding = heads.contrastive_embeddings(features, cond)
    assert logits.shape == (3,) and image_embedding.shape == cond_embedding.shape == (3, 24)
    assert [p.shape for p in heads.attribute_logits(features)] == [(3, 3), (3, 2), (3, 1)]  # style, background, size
    with pytest.raises(RuntimeError, match="loss.contrastive"):
        plain.contrastive_embeddings(features, cond)
    extra = set(heads.state_dict()) - set(plain.state_dict())
    assert {k.split(".")[0] for k in extra} == {"plain", "embed_image", "embed_cond", "attribute_out"}
    # the heads see the image only: the condition cannot leak into them through D's cross-attention
    other = ConditionInput(text, torch.zeros(3, dtype=torch.bool), *shapes_schema.encode([{}, {"style": "shaded"}, {}]))
    assert torch.equal(heads(images, other).plain, features)


def test_config_rejects_negative_weights():
    with pytest.raises(ConfigError, match="loss.contrastive"):
        load_config(TINY, ["loss.contrastive=-1"])
    with pytest.raises(ConfigError, match="loss.contrastive_temperature"):
        load_config(TINY, ["loss.contrastive_temperature=0"])


def test_training_with_both_terms_logs_them_and_resume_refuses_a_toggle(config, tmp_path, minilm):
    for item in ("loss.contrastive=1", "loss.attributes=0.5", "loss.hard_negative=1", "loss.g_hard_negative=1"):
        key, value = item.split("=")
        setattr(config.loss, key.split(".")[1], float(value))
    config.loss.contrastive_hard = True
    run = tmp_path / "run"
    train(config, run, max_steps=2, text_encoder=minilm)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss/D_contrastive", "loss/G_contrastive", "loss/D_attributes", "loss/G_attributes",
                "logits/hard_negative", "loss/G_hard_negative"):
        assert torch.isfinite(torch.tensor(row[key])), key
    assert "g_hard_negative=1" in (run / "model" / "MODEL_CARD.md").read_text()
    config.loss.attributes = 0.0
    with pytest.raises(ConfigError, match="loss.attributes"):
        train(config, run, resume="latest", text_encoder=minilm)
    config.loss.attributes, config.loss.contrastive = 0.25, 2.0  # a weight may change
    train(config, run, resume="latest", max_steps=1, text_encoder=minilm)


def test_shapes_hard_negatives_contradict_the_scene_and_respect_the_split():
    a, b = {"color": "red", "shape": "square"}, {"color": "green", "shape": "circle"}
    two = contradictions([a, b], "left of", "train")
    swapped, exchanged = [b, a], [{"color": "green", "shape": "square"}, {"color": "red", "shape": "circle"}]
    shapes_exchanged = [{"color": "red", "shape": "circle"}, {"color": "green", "shape": "square"}]
    assert two[2] in paraphrases(swapped, "left of") and two[3] in paraphrases(exchanged, "left of")
    assert two[4] in paraphrases(shapes_exchanged, "left of")  # the colours where they were: only shapes tell
    assert len(two) == 5 and two == contradictions([a, b], "left of", "train")  # a function of the scene
    # and of the record (salt): every image of a composition meets its own wrong shapes and colours
    replaced = {contradictions([a], None, "train", salt=k)[0].split()[-1] for k in range(40)}
    assert replaced == {shape for shape in SHAPES if shape != "square" and ("red", shape) not in HELDOUT_PAIRS}
    assert len(replaced) >= 2
    # worded as the true captions are, in every form: the wording alone never tells a negative
    forms = {re.sub(r"(red|green|blue|yellow|purple|orange) (circle|square|triangle|diamond)", "X", caption)
             for scene in (sample_scene(random.Random(k), "train") for k in range(300)) if scene.relation
             for caption in contradictions(scene.objects, scene.relation, "train")}
    assert {"a X left of a X", "a X to the left of a X", "a X right of a X", "a X to the right of a X"} <= forms
    c = {"color": "blue", "shape": "square"}  # swapping colours with a red circle would show a held-out blue circle
    assert "a blue circle above a red square" not in contradictions([{"color": "red", "shape": "circle"}, c],
                                                                     "above", "train")
    # One object: its shape replaced and its colour replaced, never into a held-out pair in train.
    rng = random.Random(0)
    for _ in range(200):
        scene = sample_scene(rng, "train")
        if scene.relation is not None:
            continue
        (obj,) = scene.objects
        shape_changed, colour_changed = contradictions(scene.objects, None, "train")
        colour, shape = shape_changed.split()[-2:]
        assert colour == obj["color"] and shape != obj["shape"] and (colour, shape) not in HELDOUT_PAIRS
        colour, shape = colour_changed.split()[-2:]
        assert shape == obj["shape"] and colour != obj["color"] and (colour, shape) not in HELDOUT_PAIRS
    dataset = ShapesDataset(num_images=64, resolution=32)
    known = set(dataset.all_captions())
    items = [dataset[i] for i in range(64)]
    assert all(item["negative"] in known and item["negative"] != item["text"] for item in items)

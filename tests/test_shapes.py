import json
import re

import numpy as np
import torch

from cgan.data import FolderDataset, ShapesDataset
from cgan.data import shapes as S
from cgan.data.__main__ import export_shapes, main as data_main


def scenes(split="train", n=300, seed=0):
    return [S.scene_at(seed, i, split) for i in range(n)]


def test_same_seed_same_image_and_record():
    a = ShapesDataset(num_images=10, resolution=32, seed=3)
    b = ShapesDataset(num_images=10, resolution=32, seed=3)
    c = ShapesDataset(num_images=10, resolution=32, seed=4)
    assert np.array_equal(np.asarray(a.image(5)), np.asarray(b.image(5)))
    assert a.record(5) == b.record(5)
    assert a.record(5) != c.record(5)
    assert a[5]["image"].shape == (3, 32, 32)
    assert a[5]["image"].min() >= -1 and a[5]["image"].max() <= 1


def test_objects_inside_apart_and_relation_true():
    for scene in scenes():
        for obj in scene.objects:
            r = obj["size"] / 2
            assert S.MARGIN - 1e-9 <= obj["x"] - r and obj["x"] + r <= 1 - S.MARGIN + 1e-9
            assert S.MARGIN - 1e-9 <= obj["y"] - r and obj["y"] + r <= 1 - S.MARGIN + 1e-9
        if len(scene.objects) == 2:
            a, b = scene.objects
            dx, dy = b["x"] - a["x"], b["y"] - a["y"]
            along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[scene.relation]
            across = dy if scene.relation in ("left of", "right of") else dx
            assert along >= a["size"] + S.GAP - 1e-9  # no overlap, clear gap along the relation's axis
            assert abs(across) <= 0.5 * along + 1e-9  # unambiguous: mostly along that axis
        else:
            assert scene.relation is None


def _parse(caption):
    """caption -> canonical (object, relation, object) with the relation normalised to left of / above."""
    words = {"to the left of": "left of", "to the right of": "right of", "on top of": "above", "under": "below"}
    m = re.fullmatch(r"(?:a|one|a single) (\w+ \w+)(?: (left of|right of|above|below|to the left of|"
                     r"to the right of|on top of|under) a (\w+ \w+))?", caption)
    assert m, caption
    a, rel, b = m.group(1), m.group(2), m.group(3)
    if rel is None:
        return (a,)
    rel = words.get(rel, rel)
    if rel == "right of":
        return (b, "left of", a)
    if rel == "below":
        return (b, "above", a)
    return (a, rel, b)


def test_paraphrases_describe_the_same_scene():
    for scene in scenes(n=100):
        parsed = {_parse(c) for c in scene.captions}
        assert len(parsed) == 1, scene.captions
        assert len(scene.captions) >= 3


def test_caption_matches_truth():
    for scene in scenes(n=100):
        parsed = _parse(scene.captions[0])
        first = f"{scene.objects[0]['color']} {scene.objects[0]['shape']}"
        assert parsed[0] == first or parsed[-1] == first


def test_heldout_compositions_split():
    for scene in scenes("train"):
        assert not any((o["color"], o["shape"]) in S.HELDOUT_PAIRS for o in scene.objects)
    for scene in scenes("heldout", n=100):
        assert any((o["color"], o["shape"]) in S.HELDOUT_PAIRS for o in scene.objects)
    train_captions = " | ".join(S.all_captions("train"))
    for color, shape in S.HELDOUT_PAIRS:
        assert f"{color} {shape}" not in train_captions
    heldout_captions = set(S.all_captions("heldout"))
    assert all(c in heldout_captions for s in scenes("heldout", n=50) for c in s.captions)


def test_flat_object_centre_has_its_colour():
    for scene in scenes(n=60):
        if scene.style != "flat":
            continue
        image = np.asarray(S.render(scene, 64)).astype(int)
        for obj in scene.objects:
            y, x = int(obj["y"] * 64), int(obj["x"] * 64)
            assert np.abs(image[y, x] - np.array(S.COLORS[obj["color"]])).max() <= 2


def test_export_then_custom_loader_round_trip(tmp_path):
    out = export_shapes(tmp_path / "shapes", num=12, resolution=32, split="heldout")
    folder = FolderDataset(out, resolution=32)
    shapes = ShapesDataset(num_images=12, resolution=32, split="heldout")
    assert folder.schema == shapes.schema
    assert len(folder) == 12
    for i in range(12):
        assert torch.equal(folder[i]["image"], shapes[i]["image"])
        assert folder.record(i)["captions"] == shapes.record(i)["captions"]
        assert folder.record(i)["truth"] == json.loads(json.dumps(shapes.record(i)["truth"]))
        assert folder[i]["text"] == shapes[i]["text"]  # the same caption drawn for the same visit
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically


def test_export_cli_refuses_to_overwrite(tmp_path, capsys):
    assert data_main(["export", "shapes", "--out", str(tmp_path / "s"), "--num", "3", "--size", "32"]) == 0
    assert data_main(["export", "shapes", "--out", str(tmp_path / "s"), "--num", "3", "--size", "32"]) == 2
    assert "exists and is not empty (pass --overwrite to replace it)" in capsys.readouterr().err
    assert data_main(["check", str(tmp_path / "s"), "--resolution", "32"]) == 0
    assert "3 valid records" in capsys.readouterr().out

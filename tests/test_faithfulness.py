"""Faithfulness: the shipped shapes reader, the evaluation command and the custom-data path."""
import json

import pytest
import torch

from cgan.nets.export import export_model
from cgan.data import ShapesDataset, image_to_tensor
from cgan.data import shapes as shapes_lib
from cgan.data.__main__ import export_shapes
from cgan.eval.faithfulness import (DEFAULT_READER, FIELDS, HEADS, FaithfulnessReader, canonical_labels, evaluate_shapes,
                                    score)
from cgan.faithfulness import main
from cgan.nets.generator import Generator
from conftest import tiny_model_kwargs

NUM = 64


@pytest.fixture(scope="module")
def reader():
    return FaithfulnessReader.load()


def real_generator(resolution: int = 64, shift: int = 0):
    """A stand-in generator that draws the true scene of each evaluated record (shift=1: the scene of
    the next record, i.e. images paired with another record's prompt and truth)."""
    calls = iter([("train", 7), ("heldout", 7)])

    def run(prompts, attributes, seeds):
        split, seed = next(calls)
        dataset = ShapesDataset(num_images=len(prompts), split=split, seed=seed, resolution=resolution)
        images = torch.stack([image_to_tensor(dataset.image(i)) for i in range(len(prompts))])
        return images.roll(shift, dims=0)
    return run


def overall(result):
    return (result["all_correct_one"] * result["num_one"] + result["all_correct_two"] * result["num_two"]) / result["num"]


def test_shipped_reader_is_small_and_documents_its_ceiling(reader):
    assert DEFAULT_READER.stat().st_size < 1_000_000
    ceiling = reader.ceiling
    assert ceiling["split"] == "heldout" and ceiling["num"] >= 1000
    assert set(ceiling["accuracy"]) == set(FIELDS)
    assert min(ceiling["accuracy"].values()) >= 0.9 and ceiling["all_correct_two"] >= 0.85
    assert reader.info["ceiling_32px"]["resolution"] == 32 and reader.info["ceiling_32px"]["all_correct_one"] >= 0.85
    assert "python -m cgan.faithfulness train" in reader.info["training"]["command"]


def test_canonical_order_follows_position():
    a, b = {"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}
    left = canonical_labels({"objects": [a, b], "relation": "left of"}, "flat", "dark")
    right = canonical_labels({"objects": [b, a], "relation": "right of"}, "flat", "dark")  # the same picture
    assert left == right and HEADS["relation"][left["relation"]] == "left of"
    assert HEADS["shape0"][left["shape0"]] == "circle" and HEADS["color1"][left["color1"]] == "blue"
    below = canonical_labels({"objects": [a, b], "relation": "below"}, "flat", "dark")
    assert HEADS["relation"][below["relation"]] == "above" and HEADS["shape0"][below["shape0"]] == "square"
    single = canonical_labels({"objects": [a], "relation": None}, "outline", "light")
    assert [HEADS[h][single[h]] for h in ("shape1", "color1", "relation", "count")] == ["none"] * 3 + ["1"]
    for index in range(200):  # on real scenes, slot 0 is the left (or top) object
        scene = shapes_lib.scene_at(3, index, "all")
        if scene.relation is None:
            continue
        labels = canonical_labels(scene.truth(), scene.style, scene.background)
        first = next(o for o in scene.objects if (HEADS["shape0"][labels["shape0"]], HEADS["color0"][labels["color0"]])
                     == (o["shape"], o["color"]))
        other = next(o for o in scene.objects if o is not first)
        axis = "x" if HEADS["relation"][labels["relation"]] == "left of" else "y"
        assert first[axis] < other[axis], scene


@pytest.mark.parametrize("resolution", [64, 32])
def test_real_images_score_near_ceiling_and_shuffled_pairs_near_chance(reader, resolution):
    matched = evaluate_shapes(real_generator(resolution), reader, num=NUM, seed=0, data_seed=7)
    shuffled = evaluate_shapes(real_generator(resolution, shift=1), reader, num=NUM, seed=0, data_seed=7)
    ceiling = reader.ceiling if resolution == 64 else reader.info["ceiling_32px"]  # 32 px: upsampled to 64
    for name in ("seen", "heldout"):
        assert overall(matched[name]) >= min(0.9, overall(ceiling) - 0.1)
        for field in FIELDS:
            assert matched[name]["accuracy"][field] >= ceiling["accuracy"][field] - 0.1, (name, field)
        assert overall(shuffled[name]) <= 0.15, shuffled[name]
        assert shuffled[name]["all_correct_two"] <= 0.1


def test_score_counts_objects_and_relations():
    target = {h: torch.tensor([0, 0]) for h in HEADS}
    target["count"] = torch.tensor([0, 1])
    pred = {h: v.clone() for h, v in target.items()}
    pred["shape1"] = torch.tensor([0, 3])  # the second scene's second object is wrong
    result = score(pred, target)
    assert result["accuracy"]["shape"] == pytest.approx(2 / 3, abs=1e-3) and result["accuracy"]["relation"] == 1.0
    assert result["all_correct_one"] == 1.0 and result["all_correct_two"] == 0.0
    assert result["confusion"]["shape"][0] == [2, 0, 0, 1, 0]  # three circles asked for: one read as a diamond


def test_swapped_colours_are_counted_as_a_binding_error():
    target = {h: torch.tensor([0, 0]) for h in HEADS}
    target["count"] = torch.tensor([1, 1])
    target["color0"], target["color1"] = torch.tensor([0, 2]), torch.tensor([1, 2])  # red|green, blue|blue
    pred = {h: v.clone() for h, v in target.items()}
    pred["color0"], pred["color1"] = torch.tensor([1, 2]), torch.tensor([0, 2])  # the first scene's colours swap
    result = score(pred, target)
    # over the scenes where a swap can be seen: not blue|blue, nor any scene for shapes (all circles)
    assert result["swapped_two"] == {"shape": None, "color": 1.0} and result["all_correct_two"] == 0.5
    assert result["confusion"]["color"][0][:3] == [0, 1, 0] and result["confusion"]["color"][2][2] == 2


@pytest.fixture
def model_dir(tmp_path, shapes_schema, tiny_config):
    torch.manual_seed(0)
    kwargs = tiny_model_kwargs()  # 32 px: the reader resizes to 64
    G = Generator(schema=shapes_schema, **kwargs)
    return export_model(tmp_path / "model", G_ema=G, generator_kwargs=kwargs, schema_dict=shapes_schema.to_dict(),
                        text_encoder={"name": "minilm", "max_length": 16}, config_dict=tiny_config.to_dict(),
                        step=0, images_seen=0)


def test_evaluation_command_end_to_end(model_dir, capsys):
    assert main(["--model", str(model_dir), "--num", "8", "--seed", "1", "--truncation", "0.7", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "all-correct, 2 objects" in "\n".join(out)
    result = json.loads(out[-1])
    assert result["resolution"] == 32 and result["truncation"] == 0.7 and result["num"] == 8
    for name in ("seen", "heldout"):
        assert result[name]["num"] == 8 and set(result[name]["accuracy"]) == set(FIELDS)
        assert all(v is None or 0 <= v <= 1 for v in result[name]["accuracy"].values())
        assert "all_correct_one" in result[name] and "all_correct_two" in result[name]
        real = result[name]["real"]  # the same records' real images, at the model's 32 px
        assert set(real["accuracy"]) == set(FIELDS) and real["accuracy"]["shape"] >= 0.75
    assert result["reader"]["ceiling"]["accuracy"]["shape"] > 0.9


def test_custom_data_path(model_dir, tmp_path, capsys):
    folder = export_shapes(tmp_path / "folder", 40, "all", resolution=32)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps({**r, "split": ["train", "test"][i % 2]}) + "\n"
                                                   for i, r in enumerate(rows)))  # a column the model lacks
    assert main(["--model", str(model_dir), "--data", str(folder), "--num", "8", "--steps", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["kind"] == "custom" and result["num"] == 8
    for key in ("accuracy", "ceiling", "majority"):
        # the categorical attributes, the continuous size (in bins) and the free-form captions, ranked
        assert set(result[key]) == {"style", "background", "size", "caption_r_precision"}
        assert all(v is None or 0 <= v <= 1 for v in result[key].values())
    # as during training: the run's own dataset object and a classifier trained once, reused
    from cgan.data import FolderDataset
    from cgan.eval.custom_faithfulness import evaluate_custom, train_attribute_classifier

    dataset = FolderDataset(folder, resolution=32)
    classifier = train_attribute_classifier(dataset, steps=5)
    again = evaluate_custom(str(model_dir), dataset, num=4, classifier=classifier)
    assert again["ceiling"] == classifier.ceiling and again["data"] == str(folder) and again["num"] == 4


def test_bad_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--num", "2"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_attribute_classifier_leaves_the_global_rng_alone(tmp_path):
    from cgan.data import FolderDataset
    from cgan.eval.custom_faithfulness import train_attribute_classifier

    dataset = FolderDataset(export_shapes(tmp_path / "folder", 20, "all", resolution=32), resolution=32)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    classifier = train_attribute_classifier(dataset, steps=2, batch_size=4)
    assert torch.equal(torch.rand(3), expected)  # a training run calling it keeps its exact resume
    assert classifier.names == ["style", "background", "size"] and len(classifier.eval_indices) == 4


def test_continuous_attribute_is_judged_in_equal_count_bins(tmp_path):
    from PIL import Image

    from cgan.eval.custom_faithfulness import NUM_BINS, bin_edges, evaluate_attributes, train_attribute_classifier
    from cgan.data import FolderDataset

    folder = tmp_path / "grey"
    folder.mkdir()
    rows = []
    for i in range(60):  # the image's brightness is its attribute `light`; one record lacks it
        light = (i % 20) / 19
        Image.new("RGB", (32, 32), (round(255 * light),) * 3).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": "a grey square",
                                **({"light": light} if i != 7 else {})}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    dataset = FolderDataset(folder, resolution=32)
    edges = bin_edges(dataset, list(range(60)), ["light"])["light"]
    assert len(edges) == NUM_BINS - 1 and 0 < edges[0] < edges[1] < 1
    classifier = train_attribute_classifier(dataset, steps=80, batch_size=16)
    assert classifier.names == ["light"] and classifier.bin_edges["light"] != []
    assert classifier.ceiling["light"] > classifier.majority["light"]
    real = lambda prompts, attributes, seeds: torch.stack([image_to_tensor(dataset.image(s)) for s in seeds])
    assert evaluate_attributes(real, dataset, classifier)["light"] == classifier.ceiling["light"]
    black = lambda prompts, attributes, seeds: -torch.ones(len(prompts), 3, 32, 32)
    assert evaluate_attributes(black, dataset, classifier)["light"] <= classifier.majority["light"] + 0.1


def test_few_captions_are_classes_read_above_the_majority_baseline(tmp_path):
    from PIL import Image, ImageDraw

    from cgan.data import FolderDataset
    from cgan.eval.custom_faithfulness import CAPTION_HEAD, evaluate_attributes, train_attribute_classifier

    folder = tmp_path / "marks"
    folder.mkdir()
    rows, gen = [], torch.Generator().manual_seed(0)
    drawings = {"a red disc": ((220, 30, 30), "ellipse"), "a blue bar": ((30, 60, 220), "rectangle"),
                "a green bar": ((30, 180, 60), "rectangle")}
    for i in range(60):
        caption = list(drawings)[i % 3] if i % 5 else "a red disc"  # the disc is the majority class
        colour, kind = drawings[caption]
        image = Image.new("RGB", (32, 32), (240, 240, 240))
        x, y = (int(v) for v in torch.randint(4, 12, (2,), generator=gen))
        getattr(ImageDraw.Draw(image), kind)((x, y, x + 16, y + (16 if kind == "ellipse" else 8)), fill=colour)
        image.save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    dataset = FolderDataset(folder, resolution=32)  # no attributes at all: the caption is what there is to check
    classifier = train_attribute_classifier(dataset, steps=60, batch_size=16)
    assert classifier.names == [CAPTION_HEAD] and classifier.captions == sorted(drawings)
    assert classifier.ceiling[CAPTION_HEAD] > classifier.majority[CAPTION_HEAD]
    # a "generator" that draws the real image of each record reads at the ceiling; a blank one at most majority
    real = lambda prompts, attributes, seeds: torch.stack([image_to_tensor(dataset.image(s)) for s in seeds])
    assert evaluate_attributes(real, dataset, classifier)[CAPTION_HEAD] == classifier.ceiling[CAPTION_HEAD]
    blank = lambda prompts, attributes, seeds: torch.ones(len(prompts), 3, 32, 32)
    assert evaluate_attributes(blank, dataset, classifier)[CAPTION_HEAD] <= classifier.majority[CAPTION_HEAD]


def test_free_form_captions_are_ranked_above_chance(tmp_path, minilm):
    from PIL import Image, ImageDraw

    from cgan.eval.custom_faithfulness import CAPTION_RANK, evaluate_attributes, train_attribute_classifier
    from cgan.data import FolderDataset
    from cgan.condition.text_encoder import TextEmbeddingCache

    folder = tmp_path / "free"
    folder.mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "black": (20, 20, 20)}
    sizes = {"small": 8, "medium": 14, "big": 22}
    rows, gen = [], torch.Generator().manual_seed(0)
    for i in range(66):  # 24 captions, under 3 records each: too few records per caption to be classes
        colour, kind, size = list(colours)[i % 4], ("disc", "bar")[i // 4 % 2], list(sizes)[i // 8 % 3]
        image = Image.new("RGB", (32, 32), (240, 240, 240))
        x, y = (int(v) for v in torch.randint(1, 32 - sizes[size], (2,), generator=gen))
        box = (x, y, x + sizes[size], y + (sizes[size] if kind == "disc" else sizes[size] // 2))
        getattr(ImageDraw.Draw(image), "ellipse" if kind == "disc" else "rectangle")(box, fill=colours[colour])
        image.save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": [f"a {size} {colour} {kind}"]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    dataset = FolderDataset(folder, resolution=32)
    classifier = train_attribute_classifier(dataset, steps=150, batch_size=24, text_cache=TextEmbeddingCache(minilm))
    assert classifier.names == [] and classifier.ranker is not None and len(classifier.ranker.bank) == 24
    assert classifier.majority[CAPTION_RANK] == round(1 / 24, 4)  # chance: 1 in its caption and 23 others
    assert classifier.ceiling[CAPTION_RANK] > 3 * classifier.majority[CAPTION_RANK]
    # the real image of each record scores the ceiling; one blank image for every caption scores below it
    real = lambda prompts, attributes, seeds: torch.stack([image_to_tensor(dataset.image(s)) for s in seeds])
    assert evaluate_attributes(real, dataset, classifier) == {CAPTION_RANK: classifier.ceiling[CAPTION_RANK]}
    blank = lambda prompts, attributes, seeds: torch.ones(len(prompts), 3, 32, 32)
    assert evaluate_attributes(blank, dataset, classifier)[CAPTION_RANK] < classifier.ceiling[CAPTION_RANK]

"""The custom format: validation reports every problem at once; every image mode becomes RGB."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cgan.data import FolderDataset
from cgan.data.__main__ import main as data_main
from cgan.data.folder import DataValidationError, load_rgb, validate_folder


def write_rows(folder, rows):
    folder.mkdir(exist_ok=True)
    (folder / "metadata.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def good_image(path, size=40, color=(200, 10, 10)):
    Image.new("RGB", (size, size), color).save(path)


@pytest.fixture
def bad_folder(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    good_image(d / "ok.png")
    good_image(d / "ok2.png")
    good_image(d / "small.png", size=16)
    (d / "corrupt.png").write_bytes(b"not an image at all")
    data = (d / "ok.png").read_bytes()
    Image.new("RGB", (40, 40)).save(d / "full.png")
    (d / "truncated.png").write_bytes((d / "full.png").read_bytes()[:60])
    write_rows(d, [
        {"file_name": "ok.png", "text": "a red square", "style": "flat"},          # line 1
        {"file_name": "missing.png", "text": "gone", "style": "flat"},             # line 2
        {"file_name": "corrupt.png", "text": "broken", "style": "flat"},           # line 3
        {"file_name": "truncated.png", "text": "cut", "style": "flat"},            # line 4
        {"file_name": "ok2.png", "text": "  ", "style": "flat"},                   # line 5
        {"file_name": "small.png", "text": "tiny", "style": "flat"},               # line 6
        "{not json",                                                               # line 7
        {"file_name": "ok.png", "text": "mixed", "style": 3},                      # line 8
    ])
    assert data
    return d


def test_every_problem_is_reported_at_once(bad_folder):
    report = validate_folder(bad_folder, resolution=32)
    text = "\n".join(str(p) for p in report.problems)
    assert "metadata.jsonl:2: file_name: 'missing.png': file not found" in text
    assert "metadata.jsonl:3: file_name: 'corrupt.png': unreadable image" in text
    assert "metadata.jsonl:4: file_name: 'truncated.png': unreadable image" in text
    assert "metadata.jsonl:5: text: missing or empty caption" in text
    assert "metadata.jsonl:6: file_name: 'small.png': image is 16x16, smaller than the model's 32x32" in text
    assert "metadata.jsonl:7: json: not valid JSON" in text
    assert "style: column mixes types" in text and "lines 8" in text
    with pytest.raises(DataValidationError) as err:
        FolderDataset(bad_folder, resolution=32)
    message = str(err.value)
    for line in (2, 3, 4, 5, 6, 7):
        assert f"metadata.jsonl:{line}:" in message
    assert "data.on_error=skip" in message


def test_skip_leaves_out_bad_records_and_says_which(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    good_image(d / "a.png")
    write_rows(d, [{"file_name": "a.png", "text": ["one", "two"], "size": 0.5},
                   {"file_name": "b.png", "text": "missing", "size": 0.7}])
    with pytest.raises(DataValidationError):
        FolderDataset(d, resolution=32)
    ds = FolderDataset(d, resolution=32, on_error="skip")
    assert len(ds) == 1
    assert "metadata.jsonl:2: file_name: 'b.png': file not found" in capsys.readouterr().err
    assert ds.schema.by_name["size"].kind == "continuous"
    assert {ds[i]["text"] for i in range(20)} == {"one", "two"}  # one caption drawn per visit


def test_declared_schema_rejects_values_outside_it(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    good_image(d / "a.png")
    write_rows(d, [{"file_name": "a.png", "text": "x", "style": "wavy", "size": 3.0}])
    schema = {"style": ["flat", "outline"], "size": {"type": "continuous", "range": [0, 1]}}
    report = validate_folder(d, 32, declared_schema=schema)
    text = "\n".join(map(str, report.problems))
    assert "metadata.jsonl:1: style: attribute 'style' has no value 'wavy'; expected one of flat, outline" in text
    assert "metadata.jsonl:1: size: attribute 'size' = 3.0 is outside its range [0, 1]" in text


def test_csv_metadata_and_inferred_schema(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        good_image(d / f"{i}.png")
    (d / "metadata.csv").write_text("file_name,text,style,size\n0.png,a,flat,0.1\n1.png,b,outline,0.9\n2.png,c,flat,\n")
    ds = FolderDataset(d, resolution=32)
    assert ds.schema.to_dict() == {"style": {"type": "categorical", "values": ["flat", "outline"]},
                                   "size": {"type": "continuous", "range": [0.1, 0.9]}}
    assert not bool(ds[2]["attr_present"][1])  # an empty cell is a missing attribute


def test_image_modes_become_rgb(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "grey.png")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.save(tmp_path / "transparent.png")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    palette.save(tmp_path / "palette.png")
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    deep.save(tmp_path / "deep.png")
    Image.new("LA", (8, 8), (0, 255)).save(tmp_path / "la.png")
    cases = {"grey.png": (128, 128, 128), "transparent.png": (255, 255, 255), "palette.png": (0, 0, 255),
             "deep.png": (255, 255, 255), "la.png": (0, 0, 0)}
    for name, expected in cases.items():
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB", name
        assert image.getpixel((3, 3)) == expected, name
    assert load_rgb(tmp_path / "transparent.png", background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_resize_and_centre_crop(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    wide = Image.new("RGB", (96, 48), (0, 0, 0))
    wide.paste((255, 255, 255), (24, 0, 72, 48))  # a white centre square
    wide.save(d / "wide.png")
    write_rows(d, [{"file_name": "wide.png", "text": "x"}])
    item = FolderDataset(d, resolution=32)[0]
    assert item["image"].shape == (3, 32, 32)
    assert item["image"].min() > 0.9  # the crop kept only the white centre


def test_check_command_prints_summary(bad_folder, capsys):
    assert data_main(["check", str(bad_folder), "--resolution", "32"]) == 1
    out = capsys.readouterr().out
    assert "2 valid records, 5 with problems" in out and "column mixes types" in out
    assert data_main(["check", str(bad_folder / "nope")]) == 2


@pytest.fixture
def folder_with_bookkeeping(tmp_path):
    d = tmp_path / "kept"
    d.mkdir()
    rows = []
    for i in range(24):
        good_image(d / f"{i}.png", color=(10 * i, 0, 0))
        rows.append({"file_name": f"{i}.png", "text": "a dot", "style": ("flat", "outline")[i % 2],
                     "split": ("train", "val")[i % 2], "photo_ref": f"p{i:03d}", "weight": float(i)})
    write_rows(d, rows)
    return d


def test_bookkeeping_columns_are_warned_about_and_can_be_left_out(folder_with_bookkeeping, capsys):
    report = validate_folder(folder_with_bookkeeping, 32)
    assert report.schema.names == ["style", "split", "photo_ref", "weight"]
    warned = " ".join(report.warnings)
    assert "'split'" in warned and "'photo_ref'" in warned and "24 distinct values in 24 rows" in warned
    assert "'style'" not in warned and "'weight'" not in warned and "data.ignore=[split]" in warned
    assert data_main(["check", str(folder_with_bookkeeping), "--resolution", "32"]) == 0
    assert "warning: column 'split'" in capsys.readouterr().out

    ignored = validate_folder(folder_with_bookkeeping, 32, ignore=["split", "photo_ref"])
    assert ignored.schema.names == ["style", "weight"] and not ignored.warnings and not ignored.problems
    listed = FolderDataset(folder_with_bookkeeping, resolution=32, attributes=["style"])
    assert listed.schema.names == ["style"] and listed.record(0)["attributes"] == {"style": "flat"}
    assert data_main(["check", str(folder_with_bookkeeping), "--resolution", "32", "--ignore", "split,photo_ref"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_unknown_columns_in_attributes_or_ignore_are_named(folder_with_bookkeeping):
    with pytest.raises(DataValidationError, match=r"data.ignore: colour: no such column in metadata.jsonl "
                                                  r"\(columns: photo_ref, split, style, weight\)"):
        FolderDataset(folder_with_bookkeeping, resolution=32, ignore=["colour"], on_error="skip")
    report = validate_folder(folder_with_bookkeeping, 32, ["style", "size"])
    assert [str(p) for p in report.problems] == [
        "data.attributes: size: no such column in metadata.jsonl (columns: photo_ref, split, style, weight)"]


def test_column_lists_in_the_config_are_checked():
    from cgan.core.config import ConfigError, load_config

    config = load_config(None, ["data.attributes=[style, size]", "data.ignore=[split]"])
    assert config.data.attributes == ["style", "size"] and config.data.ignore == ["split"]
    assert load_config(None, ["data.attributes={style: {type: categorical, values: [a]}}"]).data.attributes
    with pytest.raises(ConfigError, match="data.ignore: expected a list of column names"):
        load_config(None, ["data.ignore=[1]"])
    with pytest.raises(ConfigError, match="data.attributes expected"):
        load_config(None, ["data.attributes=3"])


def test_progress_grid_records_spread_over_the_conditions(tmp_path):
    from cgan.data import stratified_records

    d = tmp_path / "sorted"
    d.mkdir()
    rows = []  # sorted as folders often are: 10 variants of each (caption, style) combination in a row
    for caption in ("a cat", "a dog", "a fish", "a bird"):
        for style in ("photo", "sketch"):
            for k in range(10):
                name = f"{caption[2:]}-{style}-{k}.png"
                good_image(d / name)
                rows.append({"file_name": name, "text": caption, "style": style})
    write_rows(d, rows)
    dataset = FolderDataset(d, resolution=32)
    first = {(dataset.record(i)["captions"][0], dataset.record(i)["attributes"]["style"]) for i in range(8)}
    assert len(first) == 1  # what the grid showed before: one combination eight times
    picked = stratified_records(dataset, count=8)
    assert picked == stratified_records(dataset, count=8)  # fixed across runs
    shown = [(dataset.record(i)["captions"][0], dataset.record(i)["attributes"]["style"]) for i in picked]
    assert {c for c, _ in shown} == {"a cat", "a dog", "a fish", "a bird"} and {s for _, s in shown} == {"photo", "sketch"}
    assert len(set(picked)) == 8


def test_file_names_may_not_leave_the_folder(tmp_path):
    outside = tmp_path / "secret.png"
    good_image(outside)
    d = tmp_path / "data"
    d.mkdir()
    good_image(d / "ok.png")
    (d / "link.png").symlink_to(outside)
    (d / "sub").mkdir()
    (d / "sub" / "inner.png").symlink_to(d / "ok.png")  # a link that stays inside is fine
    write_rows(d, [{"file_name": "ok.png", "text": "fine"}, {"file_name": "../secret.png", "text": "up"},
                   {"file_name": str(outside), "text": "absolute"}, {"file_name": "link.png", "text": "linked"},
                   {"file_name": "sub/inner.png", "text": "inside"}])
    report = validate_folder(d, 32)
    text = "\n".join(str(p) for p in report.problems)
    assert "metadata.jsonl:2: file_name: '../secret.png': expected a path inside the data folder" in text
    assert f"metadata.jsonl:3: file_name: '{outside}': expected a path inside the data folder" in text
    assert "metadata.jsonl:4: file_name: 'link.png': a link that leads out of the data folder" in text
    assert report.bad_lines == {2, 3, 4} and [r.file_name for r in report.records] == ["ok.png", "sub/inner.png"]


def test_byte_order_mark_and_skip_hint(tmp_path):
    d = tmp_path / "bom"
    d.mkdir()
    good_image(d / "a.png")
    (d / "metadata.jsonl").write_text("\ufeff" + json.dumps({"file_name": "a.png", "text": "first"}) + "\n",
                                      encoding="utf-8")
    assert [r.captions for r in validate_folder(d, 32).records] == [["first"]]
    good_image(d / "b.png")
    write_rows(d, [{"file_name": "a.png", "text": "x", "style": "flat"}, {"file_name": "b.png", "text": "y", "style": 2}])
    with pytest.raises(DataValidationError) as err:
        FolderDataset(d, resolution=32, on_error="skip")  # a column of mixed types: skipping records cannot help
    assert "style: column mixes types" in str(err.value)
    assert "which data.on_error=skip cannot leave out" in str(err.value) and "set data.on_error=skip" not in str(err.value)


def test_grey_folders_make_a_grey_generator(tmp_path, minilm):
    from cgan.core.config import load_config
    from cgan.pipeline import CGANPipeline
    from cgan.train.loop import train
    from conftest import ROOT

    grey, colour = tmp_path / "grey", tmp_path / "colour"
    for folder, mode in ((grey, "L"), (colour, "RGB")):
        folder.mkdir()
        rows = []
        for i in range(16):
            Image.new(mode, (32, 32), 40 + 10 * i if mode == "L" else (200, 10 * i, 10)).save(folder / f"{i}.png")
            rows.append({"file_name": f"{i}.png", "text": ["a dark square", "a light square"][i % 2]})
        write_rows(folder, rows)
    assert FolderDataset(grey, resolution=32).is_grayscale() and not FolderDataset(colour, resolution=32).is_grayscale()
    config = load_config(ROOT / "configs" / "tiny.yaml", ["data.name=folder", f"data.path={grey}",
                                                          f"data.cache_dir={tmp_path / 'cache'}"])
    model = train(config, tmp_path / "run", max_steps=1, text_encoder=minilm)
    assert config.model.generator.color == "grayscale"  # auto, resolved from the data and saved with the run
    image = CGANPipeline.from_pretrained(model).generate_tensor("a dark square", num_images=2)
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    train(config, tmp_path / "run", resume="latest", max_steps=1, text_encoder=minilm)  # the resolved value resumes

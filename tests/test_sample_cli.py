"""sample.py in bulk (--prompts, --seeds), output formats by suffix, and a clear answer to bad arguments."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cgan.batch import parse_seeds
from cgan.cli import sample_main
from cgan.data import FolderDataset
from cgan.data.__main__ import main as data_main
from cgan.pipeline import CGANPipeline
from conftest import export_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shapes_schema):
    return export_tiny_model(tmp_path_factory.mktemp("model") / "model", shapes_schema, step=3)


def test_prompts_file_writes_a_data_folder_that_training_reads(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"text": f"a red circle {k}", "style": "outline", "size": 0.25 * (k % 4)} for k in range(6)]
    rows[2] = {"text": "a blue square"}  # attributes unset
    prompts.write_text("\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n")  # a byte-order mark is fine
    out = tmp_path / "generated"
    assert sample_main(["--model", str(model_dir), "--prompts", str(prompts), "--num", "2", "--out-dir", str(out)]) == 0
    assert "wrote 12 images (6 prompts x 2 seeds)" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 12 and records[0] == {"file_name": "00000_seed000000.png", "text": "a red circle 0",
                                                 "style": "outline", "size": 0.0}
    assert records[5] == {"file_name": "00002_seed000001.png", "text": "a blue square"}
    assert data_main(["check", str(out), "--resolution", "32"]) == 0
    dataset = FolderDataset(out, resolution=32)
    assert len(dataset) == 12 and dataset.schema.names == ["style", "background", "size"]  # the model's schema
    # the same pixels as the pipeline gives for that row and seed
    pipe = CGANPipeline.from_pretrained(model_dir)
    expected = pipe("a red circle 1", {"style": "outline", "size": 0.25}, num_images=1, seed=1)[0]
    written = torch.from_numpy(np.array(Image.open(out / "00001_seed000001.png"))).int()
    torch.testing.assert_close(written, torch.from_numpy(np.asarray(expected)).int(), atol=1, rtol=0)


def test_prompts_file_records_the_attributes_each_image_was_drawn_with(model_dir, tmp_path):
    import shutil

    from cgan.condition.attribute_prior import build_prior

    model = tmp_path / "with_prior"
    shutil.copytree(model_dir, model)
    meta = json.loads((model / "config.json").read_text())
    records = [{"captions": ["a red circle"], "attributes": {"style": style, "background": background, "size": size}}
               for style in ("flat", "outline") for background in ("light", "dark") for size in (0.2, 0.8)]
    meta["attribute_prior"] = build_prior(records, CGANPipeline.from_pretrained(model_dir).schema)
    (model / "config.json").write_text(json.dumps(meta))
    (tmp_path / "p.txt").write_text("a blue square\n")
    out = tmp_path / "drawn"
    assert sample_main(["--model", str(model), "--prompts", str(tmp_path / "p.txt"), "--num", "6",
                        "--out-dir", str(out)]) == 0
    written = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(set(r) == {"file_name", "text", "style", "background", "size"} for r in written)
    assert {r["background"] for r in written} == {"light", "dark"}  # drawn per seed, not one mode
    # a record regenerates its image: the attributes it names are the ones the image was drawn with
    pipe = CGANPipeline.from_pretrained(model)
    record = written[3]
    again = pipe("a blue square", {k: record[k] for k in ("style", "background", "size")}, num_images=1, seed=3)[0]
    image = torch.from_numpy(np.array(Image.open(out / record["file_name"]))).int()
    torch.testing.assert_close(image, torch.from_numpy(np.asarray(again)).int(), atol=1, rtol=0)
    assert json.loads((out / "generation.json").read_text())["unset_attributes"] == "sample"


def test_txt_and_csv_prompts_and_seed_ranges(model_dir, tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\na blue square\n")
    assert sample_main(["--model", str(model_dir), "--prompts", str(tmp_path / "p.txt"), "--seeds", "3,7-8",
                        "--out-dir", str(tmp_path / "txt")]) == 0
    assert sorted(p.name for p in (tmp_path / "txt").glob("*.png")) == [
        "00000_seed000003.png", "00000_seed000007.png", "00000_seed000008.png", "00001_seed000003.png",
        "00001_seed000007.png", "00001_seed000008.png"]
    (tmp_path / "p.csv").write_text("text,style,size\na red circle,flat,0.5\na green diamond,,\n")
    assert sample_main(["--model", str(model_dir), "--prompts", str(tmp_path / "p.csv"), "--num", "1",
                        "--out-dir", str(tmp_path / "csv")]) == 0
    records = [json.loads(line) for line in (tmp_path / "csv" / "metadata.jsonl").read_text().splitlines()]
    assert records[0]["size"] == 0.5 and records[1] == {"file_name": "00001_seed000000.png", "text": "a green diamond"}
    assert parse_seeds("0-3, 9,4") == [0, 1, 2, 3, 9, 4]
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--seeds", "5,9", "--out-dir",
                        str(tmp_path / "single")]) == 0
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == ["seed000005.png", "seed000009.png"]


def test_stylegan_names_trunc_and_grid_labels_that_list_the_seeds(model_dir, tmp_path):
    from cgan.batch import format_seeds
    from cgan.cli import grid_row_labels

    assert format_seeds([0, 1, 2, 3, 40, 42]) == "0-3,40,42" and format_seeds([40, 41]) == "40,41"
    assert parse_seeds(format_seeds([5, 6, 7, 9, 12, 13, 14])) == [5, 6, 7, 9, 12, 13, 14]
    # --seeds 0-7,40,42 in rows of 8: the second row is seeds 40 and 42, not "40+"
    assert grid_row_labels("a red circle", [*range(8), 40, 42], 8) == ["a red circle | seeds 0-7",
                                                                        "a red circle | seeds 40,42"]
    for flag in ("--trunc", "--truncation"):
        assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--num", "2", flag, "0.5",
                            "--out-dir", str(tmp_path / flag)]) == 0
    for name in ("seed000000.png", "seed000001.png"):
        assert (tmp_path / "--trunc" / name).read_bytes() == (tmp_path / "--truncation" / name).read_bytes()
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--num", "2",
                        "--out-dir", str(tmp_path / "psi1")]) == 0
    assert (tmp_path / "psi1" / "seed000001.png").read_bytes() != (tmp_path / "--trunc" / "seed000001.png").read_bytes()


def test_bad_prompts_files_name_the_line_and_field(model_dir, tmp_path, capsys):
    cases = {
        "bad.csv": ("text,style\na red circle,flat\na blue square,sketchy\n", "bad.csv:3: attribute 'style' has no value 'sketchy'"),
        "bad.jsonl": ('{"text": "a red circle"}\n{"txt": "typo"}\n', "bad.jsonl:2: text: expected a prompt string"),
        "nohead.csv": ("prompt\na red circle\n", "nohead.csv:1: expected a header row with a 'text' column"),
        "p.yaml": ("- a red circle\n", "expected a .txt, .jsonl, .csv file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        assert sample_main(["--model", str(model_dir), "--prompts", str(tmp_path / name), "--out-dir",
                            str(tmp_path / "out")]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "out" / "metadata.jsonl").exists()


def test_output_format_follows_the_suffix(model_dir, tmp_path):
    for suffix, fmt in ((".jpg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")):
        path = tmp_path / f"grid{suffix}"
        assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--num", "2", "--out",
                            str(path)]) == 0
        with Image.open(path) as image:
            assert image.format == fmt


@pytest.mark.parametrize("args, message", [
    (["--out", "grid.gif"], "--out 'grid.gif': unknown image suffix '.gif'; expected one of .png, .jpg"),
    (["--out", "/proc/x.png"], "--out: cannot write in '/proc'"),
    (["--seed", str(2**70)], "--seed: expected a number from 0 to 2**64 - 1"),
    (["--num", "-1"], "--num: expected at least 1, got -1"),
    (["--seeds", "5-2"], "--seeds '5-2': range '5-2' runs backwards"),
    (["--seeds", "a,b"], "--seeds 'a,b': expected numbers and ranges"),
    (["--prompts", "p.txt"], "--prompts: needs --out-dir"),
    (["--dtype", "float16"], "--dtype float16: needs a GPU"),
])
def test_bad_arguments_are_named_before_the_model_loads(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing_model = str(tmp_path / "no-model")  # the argument error must come first, not "model folder not found"
    argv = ["--model", missing_model] + (["--prompt", "a red circle"] if "--prompts" not in args else []) + args
    assert sample_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_out_naming_a_folder_or_cuda_without_a_gpu(model_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--out", str(tmp_path / "taken")]) == 2
    assert "is a folder; expected an image file name" in capsys.readouterr().err
    assert os.listdir(tmp_path / "taken") == [] and [p.name for p in tmp_path.iterdir()] == ["taken"]
    if not torch.cuda.is_available():
        assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA GPU is available here" in capsys.readouterr().err


def test_pipeline_lists_dtype_and_save_pretrained(model_dir, tmp_path):
    pipe = CGANPipeline.from_pretrained(model_dir)
    images = pipe(["a red circle", "a blue square"], [{"style": "flat"}, {}], num_images_per_prompt=2, seed=4)
    assert len(images) == 4
    alone = pipe("a blue square", {}, num_images=2, seed=4)
    assert np.array_equal(np.asarray(images[3]), np.asarray(alone[1]))  # image k of each prompt uses seed + k
    with pytest.raises(ValueError, match="attributes: expected one dict for all prompts or a list of 2"):
        pipe(["a", "b"], [{}])
    saved = pipe.save_pretrained(tmp_path / "copy")
    again = CGANPipeline.from_pretrained(saved)
    torch.testing.assert_close(again.generate_tensor("a red circle", seed=1), pipe.generate_tensor("a red circle", seed=1))
    low = CGANPipeline.from_pretrained(model_dir, dtype=torch.bfloat16).generate_tensor("a red circle", seed=1)
    assert low.dtype == torch.float32 and (low - pipe.generate_tensor("a red circle", seed=1)).abs().mean() < 0.05

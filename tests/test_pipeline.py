"""Exported models: deterministic generation, export/load round trip, sample.py and its errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from cgan.condition.attribute_prior import build_prior
from cgan.condition.attributes import InvalidAttributeError
from cgan.core.errors import CheckpointError
from cgan.nets.export import export_model
from cgan.cli import sample_main
from cgan.nets.generator import Generator
from cgan.pipeline import CGANPipeline
from conftest import shapes_vocabulary, tiny_model_kwargs


@pytest.fixture
def model_dir(tmp_path, shapes_schema, tiny_config):
    torch.manual_seed(0)
    kwargs = tiny_model_kwargs()
    G = Generator(schema=shapes_schema, **kwargs)
    return export_model(tmp_path / "model", G_ema=G, generator_kwargs=kwargs, schema_dict=shapes_schema.to_dict(),
                        text_encoder={"name": "minilm", "max_length": 16}, config_dict=tiny_config.to_dict(),
                        step=0, images_seen=0, vocabulary=shapes_vocabulary())


def test_same_seed_same_images_and_round_trip(model_dir, shapes_schema):
    pipe = CGANPipeline.from_pretrained(model_dir)
    a = pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, num_images=3, seed=5)
    b = pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, num_images=3, seed=5)
    c = pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, num_images=3, seed=6)
    assert a.shape == (3, 3, 32, 32)
    assert torch.equal(a, b)
    # image k uses seed + k, whatever the batch (equal up to float rounding: kernels may block a batch differently)
    torch.testing.assert_close(a[1:], c[:2], rtol=1e-4, atol=1e-5)
    assert not torch.equal(a[0], c[0])
    images = pipe("a red circle", {"style": "outline"}, num_images=2, seed=0)
    assert [im.size for im in images] == [(32, 32)] * 2
    # export -> load -> the same images as the in-memory generator
    weights = load_file(str(model_dir / "G_ema.safetensors"))
    G = Generator(schema=shapes_schema, **tiny_model_kwargs())
    G.load_state_dict(weights)
    pipe = CGANPipeline(G, pipe.text_encoder, pipe.schema, pipe.meta)  # placed (channels_last) as from_pretrained
    assert torch.equal(pipe.generate_tensor("a red circle", {"style": "outline", "size": 0.7}, 3, 5), a)


def test_large_requests_are_split_without_changing_images_and_autocast_works(model_dir):
    from cgan.nets.sampling import CPU_MAX_BATCH, generate

    pipe = CGANPipeline.from_pretrained(model_dir)
    n = CPU_MAX_BATCH + 3  # one full chunk and a partial one
    prompts, attrs, seeds = ["a red circle"] * n, [{"style": "flat"}] * n, list(range(100, 100 + n))
    split = generate(pipe.G, pipe.text_cache, pipe.schema, prompts, attrs, seeds)
    whole = generate(pipe.G, pipe.text_cache, pipe.schema, prompts, attrs, seeds, max_batch=n)
    tail = generate(pipe.G, pipe.text_cache, pipe.schema, prompts[-3:], attrs[-3:], seeds[-3:])
    assert split.shape == (n, 3, 32, 32)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-4)  # float rounding of the batch size only
    assert torch.equal(split[-3:], tail)  # the partial chunk is an ordinary 3-image call
    # the cached text lookup used to fail inside CPU autocast (float16 rows); the whole call now runs there
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = pipe.generate_tensor("a red circle", {"style": "flat"}, num_images=2, seed=100)
    assert low.shape == (2, 3, 32, 32) and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), whole[:2], rtol=0, atol=0.1)


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

    assert Image.open(out).size == (220 + 4 * 96, 96)  # a labelled row of 4 images enlarged to 96 px
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--num", "3",
                        "--out-dir", str(tmp_path / "many")]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["seed000000.png", "seed000001.png",
                                                                     "seed000002.png"]
    assert sample_main(["--model", str(model_dir), "--list-attributes"]) == 0
    assert "style: one of flat, outline, shaded" in capsys.readouterr().out
    assert sample_main(["--model", str(model_dir), "--prompt", "x", "--attr", "style"]) == 2
    assert "expected name=value" in capsys.readouterr().err
    assert sample_main(["--model", str(model_dir), "--prompt", "x", "--num", "0"]) == 2
    assert "--num: expected at least 1, got 0" in capsys.readouterr().err


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


def test_interpolation_ends_at_both_prompts(model_dir):
    pipe = CGANPipeline.from_pretrained(model_dir)
    images = pipe.interpolate("a red circle", "a blue square left of a green diamond", {"style": "flat"}, steps=4,
                              num_seeds=2, seed=3)
    assert images.shape == (8, 3, 32, 32)
    a = pipe.generate_tensor("a red circle", {"style": "flat"}, num_images=2, seed=3)
    b = pipe.generate_tensor("a blue square left of a green diamond", {"style": "flat"}, num_images=2, seed=3)
    torch.testing.assert_close(images[[0, 4]], a, atol=1e-5, rtol=1e-5)  # row per seed, first column = prompt A
    torch.testing.assert_close(images[[3, 7]], b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(images[1], images[2])
    # unset attributes are drawn from the data's distribution per seed, as the single images draw them
    records = [{"captions": ["a red circle"], "attributes": {"style": style, "background": background, "size": size}}
               for style in ("flat", "outline", "shaded") for background in ("light", "dark") for size in (0.2, 0.8)]
    pipe.meta["attribute_prior"] = build_prior(records, pipe.schema)
    unset = pipe.interpolate("a red circle", "a blue square", steps=3, num_seeds=3, seed=5)
    torch.testing.assert_close(unset[[0, 3, 6]], pipe.generate_tensor("a red circle", num_images=3, seed=5),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unset[[2, 5, 8]], pipe.generate_tensor("a blue square", num_images=3, seed=5),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        pipe.interpolate("a", "b", steps=1)


def test_sweep_matches_single_generations_and_parses(model_dir):
    from cgan.cli import parse_sweep

    pipe = CGANPipeline.from_pretrained(model_dir)
    assert parse_sweep("size=0:1:5", pipe.schema) == ("size", [0.0, 0.25, 0.5, 0.75, 1.0])
    assert parse_sweep("style", pipe.schema) == ("style", ["flat", "outline", "shaded"])
    assert parse_sweep("style=flat,shaded", pipe.schema) == ("style", ["flat", "shaded"])
    with pytest.raises(ValueError, match="name=low:high:count"):
        parse_sweep("size", pipe.schema)
    with pytest.raises(InvalidAttributeError, match="unknown attribute 'colour'"):
        parse_sweep("colour", pipe.schema)
    images = pipe.sweep("a red circle", {"style": "flat"}, "size", [0.2, 0.8], num_seeds=2, seed=7)
    assert images.shape == (4, 3, 32, 32)
    single = pipe.generate_tensor("a red circle", {"style": "flat", "size": 0.8}, num_images=1, seed=8)
    torch.testing.assert_close(images[3:4], single, atol=1e-5, rtol=1e-5)
    with pytest.raises(InvalidAttributeError, match="outside its range"):
        pipe.sweep("a red circle", {}, "size", [0.5, 3.0])


def test_attention_maps_name_every_word_and_given_attribute(model_dir, tmp_path):
    pipe = CGANPipeline.from_pretrained(model_dir)
    images, maps = pipe.attention_maps("a red circle", {"style": "outline", "size": 0.5}, num_images=2, seed=0)
    assert images.shape == (2, 3, 32, 32) and len(maps) == 2
    assert maps[0].labels == ["a", "red", "circle", "style=outline", "size=0.5"]
    assert maps[0].maps.shape == (5, 32, 32)
    assert torch.allclose(maps[0].maps.amax(dim=(1, 2)), torch.ones(5))
    assert maps[0].fusion is not None and bool((maps[0].fusion >= 0).all()) and float(maps[0].fusion.sum()) <= 1 + 1e-5
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--attr", "style=outline", "--num", "2",
                        "--attention-maps", "--out-dir", str(tmp_path / "maps")]) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "seed000000.png", "seed000000_attention.png", "seed000001.png", "seed000001_attention.png"]


def test_sample_cli_interpolate_and_sweep_grids(model_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "interp.png"
    assert sample_main(["--model", str(model_dir), "--interpolate", "a red circle", "a blue square", "--steps", "3",
                        "--num", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (220 + 3 * 96, 2 * 96)
    out = tmp_path / "sweep.png"
    assert sample_main(["--model", str(model_dir), "--prompt", "a red circle", "--sweep", "size=0:1:4", "--num", "1",
                        "--out", str(out)]) == 0
    assert Image.open(out).size == (220 + 4 * 96, 16 + 96)  # a header strip names each column
    assert sample_main(["--model", str(model_dir), "--prompt", "x", "--sweep", "size=0:1:4",
                        "--interpolate", "a", "b"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert sample_main(["--model", str(model_dir), "--prompt", "x", "--truncation", "0"]) == 2
    assert "--truncation" in capsys.readouterr().err


def test_diffusers_call_conventions_and_the_old_list(model_dir):
    import numpy as np
    from PIL import Image

    from cgan.pipeline import CGANPipelineOutput

    pipe = CGANPipeline.from_pretrained(model_dir)
    out = pipe("a red circle", {"style": "flat"}, num_images=3, seed=2)
    assert isinstance(out, CGANPipelineOutput) and out.seeds == [2, 3, 4]
    # what callers did with the old list still works: len, index, iterate
    assert len(out) == 3 and out[0] is out.images[0] and [im.size for im in out] == [(32, 32)] * 3
    assert all(isinstance(im, Image.Image) for im in out.images)
    expected = pipe.generate_batch(["a red circle"] * 3, [{"style": "flat"}] * 3, [2, 3, 4])  # in [-1, 1]
    pt = pipe("a red circle", {"style": "flat"}, num_images=3, seed=2, output_type="pt").images
    assert pt.shape == (3, 3, 32, 32) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    torch.testing.assert_close(pt, (expected.clamp(-1, 1) + 1) / 2)
    arr = pipe("a red circle", {"style": "flat"}, num_images=3, seed=2, output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (3, 32, 32, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(np.asarray(out[1]), np.asarray(Image.fromarray((arr[1] * 255).round().astype(np.uint8))))
    # generator=: its seed is the images' seed, as seed= and the CLI's --seed take it
    a = pipe("a red circle", num_images=2, generator=torch.Generator().manual_seed(7), output_type="pt")
    b = pipe("a red circle", num_images=2, seed=7, output_type="pt")
    c = pipe("a red circle", num_images=2, generator=torch.Generator().manual_seed(8), output_type="pt")
    assert a.seeds == b.seeds == [7, 8] != c.seeds and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    per_image = pipe(["a red circle", "a blue square"], generator=[torch.Generator().manual_seed(k) for k in (1, 2)])
    assert len(per_image) == 2 and per_image.seeds == [1, 2]
    with pytest.raises(ValueError, match="output_type: expected one of 'pil', 'pt', 'np', got 'latent'"):
        pipe("a red circle", output_type="latent")
    with pytest.raises(ValueError, match="seed and generator: give one"):
        pipe("a red circle", seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="generator: expected one torch.Generator or a list of 2"):
        pipe("a red circle", num_images=2, generator=[torch.Generator()])


def test_save_pretrained_writes_the_card_and_vocabulary(model_dir, tmp_path):
    pipe = CGANPipeline.from_pretrained(model_dir)  # exported without a card: one is made from config.json
    saved = pipe.save_pretrained(tmp_path / "saved")
    card = (saved / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: cgan\n")
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "## Licence" in card
    assert "| attributes | style: one of flat, outline, shaded" in card
    assert json.loads((saved / "vocabulary.json").read_text())["words"] == sorted(pipe.vocabulary)
    again = CGANPipeline.from_pretrained(saved)
    assert again.model_card == card and again.vocabulary == pipe.vocabulary
    again.model_card = "# an old card\n"  # a card from before the metadata header gets one
    assert (again.save_pretrained(tmp_path / "third") / "MODEL_CARD.md").read_text().startswith("---\nlicense:")


def test_from_pretrained_says_what_it_accepts(tmp_path):
    with pytest.raises(CheckpointError, match=r"org/model: model folder not found; cgan loads a local model folder"
                                              r".*shipped model's name \(shapes64\); it does not download from the"
                                              r" Hugging Face Hub"):
        CGANPipeline.from_pretrained("org/model")
    with pytest.raises(TypeError, match=r"unsupported argument\(s\) revision, variant; it takes model_dir \(a local "
                                        r"model folder or a shipped name: shapes64\), device, dtype"):
        CGANPipeline.from_pretrained("shapes64", variant="fp16", revision="main")


def test_unknown_words_warn_once_and_strict_refuses(model_dir, tmp_path, capsys, recwarn):
    import warnings

    from cgan.pipeline import UnknownWordsError

    pipe = CGANPipeline.from_pretrained(model_dir)
    assert pipe.unknown_words("A red cirle, left of a pink hexagon") == ["cirle", "pink", "hexagon"]
    assert pipe.unknown_words("a red circle to the left of a blue square") == []
    with pytest.warns(UserWarning, match=r"prompt 'a pink hexagon': 'pink', 'hexagon' never appeared in this "
                                         r"model's training captions \(23 words\)"):
        pipe("a pink hexagon", num_images=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe("a pink hexagon")  # named once per prompt
        pipe("a red circle")
    pipe.strict = True
    with pytest.raises(UnknownWordsError, match="'cirle' never appeared"):
        pipe("a red cirle")
    # the command line: a warning by default, an error (exit 2, before any image) with --strict
    out = tmp_path / "g.png"
    assert sample_main(["--model", str(model_dir), "--prompt", "a red cirle", "--num", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert sample_main(["--model", str(model_dir), "--prompt", "a red cirle", "--num", "1", "--strict",
                        "--out", str(tmp_path / "strict.png")]) == 2
    assert "error: prompt 'a red cirle': 'cirle' never appeared" in capsys.readouterr().err
    assert not (tmp_path / "strict.png").exists()
    # a model exported without vocabulary.json still loads; it says once that prompts go unchecked
    (model_dir / "vocabulary.json").unlink()
    with pytest.warns(UserWarning, match="no vocabulary.json .* prompts cannot be checked"):
        old = CGANPipeline.from_pretrained(model_dir, strict=True)
    assert old.vocabulary is None and old.unknown_words("a pink hexagon") == []
    assert len(old("a pink hexagon")) == 1


def test_the_shipped_model_knows_its_words():
    pipe = CGANPipeline.from_pretrained("shapes64")
    assert pipe.vocabulary is not None and {"red", "circle", "left", "under", "diamond"} <= pipe.vocabulary
    assert pipe.unknown_words("a pink hexagon") == ["pink", "hexagon"]
    assert pipe.unknown_words("a red circle left of a blue square") == []

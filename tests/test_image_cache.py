"""The image cache (cgan/data/cache.py) and the caption table: the same batches as the DataLoader,
built once per data set identity, written atomically; training from it is bitwise the same."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from cgan.train.caption_table import CaptionTable
from cgan.data import FolderDataset, ShapesDataset, StepSampler
from cgan.data.cache import ArrayBatches, cache_key, cached_arrays, dataset_identity
from cgan.condition.text_encoder import TextEmbeddingCache
from cgan.train.loop import train


def loader_batches(dataset, steps, **sampler_kwargs):
    sampler = StepSampler(len(dataset), **sampler_kwargs)
    loader = iter(DataLoader(dataset, batch_size=sampler_kwargs["batch_size"], sampler=sampler, num_workers=0))
    return [next(loader) for _ in range(steps)]


@pytest.mark.parametrize("process_index, helper", [(0, False), (1, False), (1, True)])
def test_array_batches_match_the_data_loader_across_epochs_and_processes(tmp_path, process_index, helper):
    dataset = ShapesDataset(num_images=24, resolution=16, seed=3)  # 24 records, global batch 20: epochs split batches
    arrays = cached_arrays(dataset, tmp_path, workers=2)
    kwargs = dict(batch_size=10, seed=5, start_step=1, num_processes=2, process_index=process_index)
    ours = ArrayBatches(arrays, **kwargs, background_from=0 if helper else 10 ** 9)
    for step, expected in enumerate(loader_batches(dataset, 6, **kwargs)):
        got = next(ours)
        if helper and step == 0:  # the helper process's draws, once they are ready, for the later batches
            [future.result() for future in ours.ahead.values()]
            assert ours._epoch_draws("caption", 1) is not None
        assert got["image"].dtype == torch.uint8
        assert torch.equal(got["image"].float() / 127.5 - 1.0, expected["image"])
        assert [arrays.captions[i] for i in got["caption_id"]] == list(expected["text"])
        assert [arrays.captions[i] for i in got["negative_id"]] == list(expected["negative"])
        for key in ("attr_index", "attr_value", "attr_present", "index"):
            assert torch.equal(got[key], expected[key]), key


def test_the_cache_is_built_once_per_identity_and_never_read_half_written(tmp_path, capsys):
    dataset = ShapesDataset(num_images=8, resolution=16)
    first = cached_arrays(dataset, tmp_path, workers=1)
    assert "8 images at 16 px written" in capsys.readouterr().err
    again = cached_arrays(dataset, tmp_path, workers=1)
    assert again.folder == first.folder and capsys.readouterr().err == ""  # read, not rebuilt
    other = cached_arrays(ShapesDataset(num_images=8, resolution=16, seed=1), tmp_path, workers=1)
    assert other.folder != first.folder and not np.array_equal(other.images, first.images)
    assert cache_key(dataset_identity(ShapesDataset(num_images=8, resolution=32))) != first.folder.name


def test_a_build_that_dies_leaves_no_entry_and_the_next_run_builds_it(tmp_path, monkeypatch):
    import cgan.data.cache as cache_lib

    dataset = ShapesDataset(num_images=8, resolution=16)

    def dies(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_lib, "_encode_records", dies)
    with pytest.raises(KeyboardInterrupt):
        cached_arrays(dataset, tmp_path, workers=1)
    assert [p for p in (tmp_path / "images").iterdir() if ".tmp-" not in p.name] == []
    monkeypatch.undo()
    arrays = cached_arrays(dataset, tmp_path, workers=1)
    assert np.array_equal(arrays.images[3], np.asarray(dataset.image(3)))


def test_a_folder_is_decoded_once_and_a_changed_file_makes_a_new_entry(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for k, color in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
        Image.new("RGB", (40, 30), color).save(folder / f"{k}.png")
        rows.append({"file_name": f"{k}.png", "text": [f"colour {k}", f"shade {k}"], "style": "a" if k else "b"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = FolderDataset(folder, resolution=16)
    arrays = cached_arrays(dataset, tmp_path / "cache", workers=1)
    for i in range(3):
        assert np.array_equal(arrays.images[i], np.asarray(dataset.image(i)))
    assert json.loads((arrays.folder / "identity.json").read_text())["kind"] == "folder"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(folder / "1.png")
    changed = cached_arrays(FolderDataset(folder, resolution=16), tmp_path / "cache", workers=1)
    assert changed.folder != arrays.folder and changed.images[1, 0, 0].tolist() == [1, 2, 3]


def test_no_space_for_the_cache_names_the_setting(tmp_path, monkeypatch):
    import shutil

    from cgan.data.cache import ImageCacheError

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(ImageCacheError, match=r"data.image_cache: .* needs .* data.image_cache=false"):
        cached_arrays(ShapesDataset(num_images=8, resolution=16), tmp_path, workers=1)


def test_caption_table_rows_are_the_text_cache_rows(minilm):
    cache = TextEmbeddingCache(minilm)
    captions = ["a red circle", "a blue square above a green circle", ""]
    table = CaptionTable(captions, cache, "cpu", chunk=2)
    ids = torch.tensor([2, 0, 0, 1])
    got, expected = table(ids), cache([captions[i] for i in ids])
    for field in ("text_tokens", "text_mask", "text_pooled"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    assert table.empty_id == 2 and table.strings(ids) == ["", "a red circle", "a red circle", captions[1]]


def test_training_from_the_image_cache_is_bitwise_the_training_without_it(tiny_config, tmp_path, minilm):
    tiny_config.loss.hard_negative = 1.0  # the negatives' path too
    tiny_config.train.total_steps = 2
    cached = train(tiny_config, tmp_path / "cached", text_encoder=minilm)
    assert list((tmp_path / "cache" / "images").iterdir())
    tiny_config.data.image_cache = False
    plain = train(tiny_config, tmp_path / "plain", text_encoder=minilm)
    a, b = load_file(str(cached / "G_ema.safetensors")), load_file(str(plain / "G_ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da, db = (load_file(str(run / "D.safetensors")) if (run / "D.safetensors").is_file() else None
              for run in (cached, plain))
    assert (da is None) == (db is None) and (da is None or all(torch.equal(da[k], db[k]) for k in da))

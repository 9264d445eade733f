"""FashionMNIST: find the IDX files, verify them, and split domain A / domain B.

Sources, in order: `data.source`; Debian's package `dataset-fashion-mnist`;
torchvision's own download (needs internet). Files may be gzipped or raw; the
check is on the decompressed bytes, so Debian's re-compressed files and
torchvision's originals verify alike.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from shiftwatch import IMAGE_SIZE, ShiftwatchError
from shiftwatch.core.io import ImageSet

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# name -> (decompressed size in bytes, sha256 of the decompressed IDX bytes)
IDX_FILES = {
    "train-images-idx3-ubyte": (47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
FIX_HINT = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or set data.source to a folder holding the four FashionMNIST IDX files"
)


def find_source(configured: str | None, download_root: Path) -> Path:
    """Return the folder holding the IDX files, trying the sources in order."""
    if configured:
        folder = Path(configured)
        for candidate in (folder, folder / "FashionMNIST" / "raw"):
            if _has_all_files(candidate):
                return candidate
        raise ShiftwatchError(f"data.source = {configured!r}: FashionMNIST IDX files not found there; {FIX_HINT}")
    if _has_all_files(DEBIAN_DIR):
        return DEBIAN_DIR
    return _torchvision_download(download_root)


def _has_all_files(folder: Path) -> bool:
    return all(_locate(folder, name) is not None for name in IDX_FILES)


def _locate(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _torchvision_download(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    try:
        for train in (True, False):
            FashionMNIST(root=str(root), train=train, download=True)
    except Exception as err:  # URLError, socket errors, checksum errors
        raise ShiftwatchError(
            f"FashionMNIST not found locally and torchvision's download failed ({type(err).__name__}); {FIX_HINT}"
        ) from None
    return root / "FashionMNIST" / "raw"


def read_idx(folder: Path, name: str) -> np.ndarray:
    """Read one IDX file after checking its size and checksum."""
    path = _locate(folder, name)
    if path is None:
        raise ShiftwatchError(f"{folder / name}: missing; {FIX_HINT}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise ShiftwatchError(f"{path}: unreadable ({err}); {FIX_HINT}") from None
    size, sha256 = IDX_FILES[name]
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != sha256:
        raise ShiftwatchError(
            f"{path}: corrupt (size {len(raw)} bytes or checksum differs from FashionMNIST's); {FIX_HINT}"
        )
    header = 16 if "images" in name else 8
    array = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return array.reshape(-1, IMAGE_SIZE, IMAGE_SIZE) if "images" in name else array


def load_fashion_mnist(folder: Path) -> tuple[ImageSet, ImageSet]:
    """The 60,000 training and 10,000 test images as ImageSets (pixels in [0, 1])."""
    sets = []
    for prefix in ("train", "t10k"):
        images = read_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = read_idx(folder, f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        sets.append(ImageSet(images.astype(np.float32) / 255.0, labels, np.arange(len(labels))))
    return sets[0], sets[1]


def subsample(image_set: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A seeded random subset of `limit` images (all of them when limit is None)."""
    if limit is None or limit >= len(image_set):
        return image_set
    rows = np.sort(np.random.default_rng(seed).choice(len(image_set), size=limit, replace=False))
    return image_set.subset(rows)


def split_domains(train: ImageSet, domain_b_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split into disjoint domain A (training) and domain B (deployment).

    scikit-learn's `train_test_split` with `random_state=seed`, not stratified: the
    study's split, so any class imbalance it causes is measured, not hidden.
    """
    rows_a, rows_b = train_test_split(
        np.arange(len(train)), test_size=domain_b_fraction, random_state=seed, shuffle=True
    )
    return train.subset(np.sort(rows_a)), train.subset(np.sort(rows_b))

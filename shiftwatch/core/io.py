"""Atomic file writes and validated loading of image sets.

Every output is written to a temporary file beside its target and renamed into place,
so a failed stage never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiftwatch import IMAGE_SIZE, NUM_CLASSES, ShiftwatchError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to `path` on success.

    The file gets the mode a plain open() gives (0666 less the umask, not the temporary file's
    0600), so a teammate or a web server can read what the user's umask lets them. A write that
    fails for want of room or rights (disk full, a file-size limit, a read-only or foreign
    folder) is one ShiftwatchError naming `path` and the cause, with nothing half-written left.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    try:
        with _naming(path):
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~UMASK)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` whole, so
    a stage that fails half-way leaves the previous folder as it was, not a mix of both."""
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        os.chmod(staging, 0o777 & ~UMASK)
    old = staging.with_name(staging.name + ".old")
    try:
        try:
            yield staging
        except ShiftwatchError as err:  # name the user's folder, not the staging one
            raise ShiftwatchError(str(err).replace(str(staging), str(path))) from None
        with _naming(path):
            if path.exists():
                os.replace(path, old)
            os.replace(staging, path)
    finally:
        for leftover in (staging, old):
            shutil.rmtree(leftover, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it; once, at import, before any thread writes
    os.umask(mask)
    return mask


UMASK = _current_umask()
# Errors of room or rights: the user can fix them, so they get one line, not a traceback.
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some and rerun",
    errno.EDQUOT: "the disk quota is exceeded; free some and rerun",
    errno.EFBIG: "larger than the file-size limit (ulimit -f); raise it and rerun",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "permission denied; check the folder's owner and mode",
    errno.EPERM: "operation not permitted; check the folder's owner and mode",
}


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn a write error of room or rights into one ShiftwatchError naming `path`."""
    try:
        yield
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        raise ShiftwatchError(
            f"cannot write {path}: {_WRITE_ERRORS[err.errno]} (nothing half-written is left)"
        ) from None


def write_json(path: str | Path, payload: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, hint: str) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ShiftwatchError(f"{path}: not found; {hint}") from None
    except json.JSONDecodeError as err:
        raise ShiftwatchError(f"{path}: corrupt JSON ({err.msg}); {hint}") from None


@dataclass(frozen=True)
class ImageSet:
    """Images in [0, 1] as float32 (N, 28, 28), labels int64 (N,), and each image's
    index in its source (the 60,000 training images or the 10,000 test images)."""

    images: np.ndarray
    labels: np.ndarray
    source_index: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> ImageSet:
        return ImageSet(self.images[rows], self.labels[rows], self.source_index[rows])


def save_set(path: str | Path, image_set: ImageSet, as_uint8: bool = False) -> None:
    """Save as .npz. `as_uint8` stores unshifted images exactly and 4x smaller."""
    images = image_set.images
    if as_uint8:
        images = np.rint(images * 255).astype(np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            images=images,
            labels=image_set.labels.astype(np.int64),
            source_index=image_set.source_index.astype(np.int64),
        )


def load_set(path: str | Path, hint: str = "rerun `dvc repro`") -> ImageSet:
    """Load and validate a set written by `save_set`; raise ShiftwatchError if missing or corrupt."""
    path = Path(path)
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; {hint}")
    try:
        with np.load(path) as archive:
            images, labels, source_index = (archive[k] for k in ("images", "labels", "source_index"))
    except Exception as err:  # zip, pickle and key errors all mean the same to the user
        raise ShiftwatchError(f"{path}: unreadable or corrupt ({type(err).__name__}); {hint}") from None
    problem = _shape_problem(images, labels, source_index)
    if problem:
        raise ShiftwatchError(f"{path}: {problem}; {hint}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return ImageSet(images.astype(np.float32, copy=False), labels.astype(np.int64), source_index)


def _shape_problem(images: np.ndarray, labels: np.ndarray, source_index: np.ndarray) -> str | None:
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        return f"images have shape {images.shape}, expected (N, {IMAGE_SIZE}, {IMAGE_SIZE})"
    if not (len(images) == len(labels) == len(source_index)):
        return f"{len(images)} images but {len(labels)} labels and {len(source_index)} indices"
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        return f"labels outside 0..{NUM_CLASSES - 1}"
    if (
        images.dtype != np.uint8
        and len(images)
        and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1)
    ):
        return "pixel values outside [0, 1] or not finite"
    return None


@dataclass(frozen=True)
class Predictions:
    """A model's softmax outputs (N, 10) on one set, with its true labels and source indices."""

    probabilities: np.ndarray
    labels: np.ndarray
    source_index: np.ndarray

    def subset(self, rows: np.ndarray) -> Predictions:
        return Predictions(self.probabilities[rows], self.labels[rows], self.source_index[rows])

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def load_predictions(path: str | Path, hint: str) -> Predictions:
    path = Path(path)
    if not path.exists():
        raise ShiftwatchError(f"{path}: not found; {hint}")
    try:
        with np.load(path) as archive:
            return Predictions(archive["probabilities"], archive["labels"], archive["source_index"])
    except Exception as err:
        raise ShiftwatchError(f"{path}: unreadable or corrupt ({type(err).__name__}); {hint}") from None


def save_predictions(path: str | Path, predictions: Predictions) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            probabilities=predictions.probabilities.astype(np.float32),
            labels=predictions.labels.astype(np.int64),
            source_index=predictions.source_index.astype(np.int64),
        )


def rows_matching(source_index: np.ndarray, parent_index: np.ndarray) -> np.ndarray:
    """Row numbers in a parent set (given its source indices) of the images with these
    source indices. Reuses predictions: b_label is a subset of b_raw (= domain B), b_shift a
    subset of b_covariate."""
    order = np.argsort(parent_index)
    positions = np.clip(np.searchsorted(parent_index, source_index, sorter=order), 0, len(order) - 1)
    rows = order[positions]
    if not np.array_equal(parent_index[rows], source_index):
        raise ShiftwatchError("a deployment set holds images that are not in its parent set; rerun `dvc repro shift`")
    return rows

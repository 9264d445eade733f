"""Cheap per-image statistics that a classifier tends to ignore, and a test on them.

`image_stats_test`: KS on per-image pixel quantiles, e.g. a brightness shift lifting the black
background. (The share of exactly-zero pixels, `zero_fraction`, is computed too, but not
tested: JPEG, rotation or a resize change it without harm.)

Pure functions on numpy arrays. Bad input (empty, mismatched shapes, NaN/inf) raises
ShiftwatchError.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.detection._arrays import _bonferroni, _features, _ks_columns
from shiftwatch.detection.basic import DetectorResult


def zero_fraction(images: np.ndarray) -> np.ndarray:
    """Share of pixels exactly 0 in each image, shape (N,), in [0, 1].

    FashionMNIST backgrounds are exactly black; a brightness shift (or noise) lifts them, so
    this drops to ~0 even when a classifier's predictions barely move.
    """
    flat = _features(images, "images", as_float=False)
    return np.count_nonzero(flat == 0, axis=1) / flat.shape[1]


def pixel_quantiles(images: np.ndarray, qs: Sequence[float] = (0.1, 0.5, 0.9)) -> np.ndarray:
    """Per-image pixel quantiles (numpy's default linear interpolation), shape (N, len(qs)),
    in the images' intensity units. `qs` must lie in [0, 1]."""
    levels = np.asarray(qs, dtype=float)
    if levels.ndim != 1 or levels.size == 0 or np.any((levels < 0) | (levels > 1)):
        raise ShiftwatchError(f"qs = {levels.tolist()}; pass a non-empty list of quantiles in [0, 1]")
    return np.quantile(_features(images, "images"), levels, axis=1).T


def image_stats_test(
    reference_images: np.ndarray, deployment_images: np.ndarray, qs: Sequence[float] = (0.1, 0.5, 0.9)
) -> DetectorResult:
    """KS tests on cheap per-image statistics, combined by Bonferroni.

    Statistics: each `pixel_quantiles` column (len(qs) tests).
    statistic = the largest KS distance; pvalue = min(1, tests * smallest p-value). Many
    ties (e.g. the 10 % quantile is 0 for every image) only make the KS p-values
    conservative; a statistic constant and equal on both sides gives p = 1.
    """
    reference_shape = np.shape(reference_images)[1:]
    deployment_shape = np.shape(deployment_images)[1:]
    if reference_shape != deployment_shape:
        raise ShiftwatchError(
            f"reference images have shape {reference_shape} but deployment "
            f"images {deployment_shape}; resize one side to match"
        )
    reference = _image_statistics(reference_images, "reference_images", qs)
    deployment = _image_statistics(deployment_images, "deployment_images", qs)
    return _bonferroni(*_ks_columns(reference, deployment))


def _image_statistics(images: np.ndarray, name: str, qs: Sequence[float]) -> np.ndarray:
    _features(images, name)  # validates with the caller's argument name
    return pixel_quantiles(images, qs)

"""Input validation and small combinators shared by the two-sample tests (bbsd, mmd,
image_stats): 2-D float views that reject NaN/inf, and Bonferroni over KS columns.
"""

from __future__ import annotations

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.detection.basic import DetectorResult, ks_columns


def _ks_columns(reference: np.ndarray, deployment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ks_columns(reference, deployment)


def _bonferroni(statistics: np.ndarray, pvalues: np.ndarray) -> DetectorResult:
    return DetectorResult(float(statistics.max()), float(min(1.0, len(pvalues) * pvalues.min())))


def _features(array: np.ndarray, name: str, minimum: int = 1, as_float: bool = True) -> np.ndarray:
    """`array` as a 2-D (samples, features) view; rejects too few rows and NaN/inf."""
    array = np.asarray(array)
    if array.ndim == 0 or len(array) < minimum:
        raise ShiftwatchError(
            f"{name} has {0 if array.ndim == 0 else len(array)} rows; "
            f"pass at least {minimum} sample(s) along the first axis"
        )
    if array.size == 0:
        raise ShiftwatchError(
            f"{name} has shape {array.shape} with no values per sample; pass at least one feature per row"
        )
    flat = array.reshape(len(array), -1)
    if as_float:
        flat = flat.astype(np.float64, copy=False)
    if not np.isfinite(flat).all():
        raise ShiftwatchError(f"{name} contains NaN or infinite values; drop or impute those rows before testing")
    return flat


def _same_width(a: np.ndarray, b: np.ndarray, what: str = "features") -> None:
    if a.shape[1] != b.shape[1]:
        raise ShiftwatchError(
            f"the two samples have {a.shape[1]} and {b.shape[1]} {what} per "
            "row; pass arrays with the same trailing shape"
        )

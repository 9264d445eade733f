"""Framing: does the object still span the frame? FashionMNIST's images nearly all do; a
moved, shrunk or padded object does not (`frame_span_test`, one-sided Fisher's exact test).

Pure functions on numpy arrays. Bad input raises ShiftwatchError.
"""

from __future__ import annotations

import math

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.detection.basic import DetectorResult
from shiftwatch.detection.bbsd import _fisher_greater


def spans_frame(pixels: np.ndarray) -> np.ndarray:
    """Per image: does the object span the frame, i.e. is there ink (any non-zero 8-bit pixel)
    in both the top and bottom rows, or in both the left and right columns?

    FashionMNIST's conversion resized every product's longest edge to the full 28 pixels
    (Xiao et al. 2017), so ~97 % of its images span the frame; an image moved, shrunk or
    padded no longer does. `pixels` is the (N, H*W) uint8 view of square images."""
    if pixels.ndim != 2 or math.isqrt(pixels.shape[1]) ** 2 != pixels.shape[1]:
        raise ShiftwatchError(f"frame span: expected (N, H*W) pixels of square images, got shape {pixels.shape}")
    size = math.isqrt(pixels.shape[1])
    ink = pixels.reshape(len(pixels), size, size) > 0
    rows = ink[:, 0].any(axis=1) & ink[:, -1].any(axis=1)
    columns = ink[:, :, 0].any(axis=1) & ink[:, :, -1].any(axis=1)
    return np.asarray(rows | columns)


def frame_span_test(reference_pixels: np.ndarray, deployment_pixels: np.ndarray) -> DetectorResult:
    """Have fewer deployment images kept the frame-filling framing than reference images?

    One-sided Fisher's exact test on the share of images that span the frame (`spans_frame`);
    statistic = reference share - deployment share. One-sided because what it guards is the
    dataset's framing being lost (moved, shrunk, padded or letterboxed objects). More ink at
    the borders (JPEG ringing, noise) is left to the other detectors."""
    if len(reference_pixels) == 0 or len(deployment_pixels) == 0:
        raise ShiftwatchError("frame span: the reference and the deployment batch need at least one image each")
    in_reference = int(spans_frame(reference_pixels).sum())
    in_deployment = int(spans_frame(deployment_pixels).sum())
    drop = in_reference / len(reference_pixels) - in_deployment / len(deployment_pixels)
    return DetectorResult(
        float(drop), _fisher_greater(in_reference, len(reference_pixels), in_deployment, len(deployment_pixels))
    )

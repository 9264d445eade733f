"""The deployment shifts built from domain B.

Covariate shift (worse images): downsample 28 -> `downsample` -> 28 px with
antialiased bilinear resizing (what torchvision's Resize does on tensors), add
`brightness`, clip to [0, 1]. Label shift (a drifting class mix): keep only a
share of one class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shiftwatch import IMAGE_SIZE, ShiftwatchError
from shiftwatch.core.io import ImageSet


def degrade_images(images: np.ndarray, downsample: int, brightness: float) -> np.ndarray:
    """Covariate shift on float images (N, 28, 28) in [0, 1]; returns a new float32 array.

    `downsample == 28` skips the resize, so the result is only the brightness change.
    """
    degraded = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if downsample != IMAGE_SIZE:
        small = F.interpolate(
            degraded, size=(downsample, downsample), mode="bilinear", antialias=True, align_corners=False
        )
        degraded = F.interpolate(
            small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
    degraded = (degraded + brightness).clamp_(0.0, 1.0)
    return degraded.squeeze(1).numpy()


def label_shift_rows(labels: np.ndarray, label_class: int, keep: float, seed: int) -> np.ndarray:
    """Sorted row indices that keep round(keep * n) images of `label_class` (chosen with
    `seed`) and every image of the other classes."""
    rng = np.random.default_rng(seed)
    of_class = np.flatnonzero(labels == label_class)
    kept = rng.choice(of_class, size=round(keep * len(of_class)), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(labels != label_class), kept]))


def make_deployment_sets(
    domain_b: ImageSet, downsample: int, brightness: float, label_class: int, label_keep: float, seed: int
) -> dict[str, ImageSet]:
    """The four deployment sets, so the effect of each shift can be told apart:
    b_raw (unchanged), b_covariate, b_label, b_shift (both; the same rows as b_label)."""
    if len(domain_b) == 0:
        raise ShiftwatchError("domain B is empty; check data.max_train_images and data.domain_b_fraction")
    covariate = ImageSet(
        degrade_images(domain_b.images, downsample, brightness), domain_b.labels, domain_b.source_index
    )
    rows = label_shift_rows(domain_b.labels, label_class, label_keep, seed)
    sets = {
        "b_raw": domain_b,
        "b_covariate": covariate,
        "b_label": domain_b.subset(rows),
        "b_shift": covariate.subset(rows),
    }
    for name, image_set in sets.items():
        if len(image_set) == 0:
            raise ShiftwatchError(
                f"{name} is empty after the label shift; raise shift.label_keep or data.max_train_images"
            )
    return sets

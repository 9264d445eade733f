"""What can be done about a shift, each method using no deployment labels.

- `correct_label_shift`: re-weight the model's probabilities by class proportions estimated
  without labels (BBSE or EM) and re-predict.
- `adapt_batchnorm` (AdaBN, Li et al. 2016): re-estimate BatchNorm statistics on the unlabeled
  deployment images; no labels, no gradient steps.
- `augment_images`: shift-aware augmentation of domain A for fine-tuning (random blur by
  downsampling and random brightness), so the model sees the *kind* of degradation, not the
  deployment images.
- `selective_prediction`: route low-confidence predictions to people; coverage vs accuracy.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from shiftwatch import ShiftwatchError
from shiftwatch.data.shift import degrade_images
from shiftwatch.estimation.labelshift import reweight_probs
from shiftwatch.model.network import as_batch, inference_dtype


def correct_label_shift(
    probabilities: np.ndarray, source_priors: np.ndarray, estimated_priors: np.ndarray
) -> np.ndarray:
    """Predicted classes after the prior correction p(y|x) · q(y)/p(y) (Saerens et al. 2002)."""
    return reweight_probs(probabilities, source_priors, estimated_priors).argmax(axis=1)


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, precision: str = "auto"
) -> nn.Module:
    """A copy of `model` whose BatchNorm running mean/variance are the averages over `images`
    (cumulative, momentum=None) instead of over the training data. Weights are untouched.

    The statistics pass runs at the inference precision (bf16 where native: 0.7 vs 1.25 s for
    3,000 images here; AdaBN accuracy on b_covariate 0.664 vs 0.666, 98.7 % same predictions);
    the running statistics themselves accumulate in float32."""
    if len(images) == 0:
        raise ShiftwatchError("AdaBN needs at least one deployment image")
    adapted = copy.deepcopy(model).to(device)
    for module in adapted.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # exact average over all batches, not an EMA
    adapted.train()  # BatchNorm updates its statistics only in training mode
    dtype = inference_dtype(device, precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for start in range(0, len(images), batch_size):
            adapted(as_batch(images[start : start + batch_size], device))
    return adapted.eval()


def augment_images(
    images: np.ndarray, downsample_choices: list[int], brightness_range: tuple[float, float], seed: int
) -> np.ndarray:
    """Each image gets one random downsample factor from `downsample_choices` (28 = none) and a
    random brightness offset, uniform in `brightness_range`, then is clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    factor = rng.choice(downsample_choices, size=len(images))
    brightness = rng.uniform(*brightness_range, size=len(images)).astype(np.float32)
    augmented = np.empty_like(images, dtype=np.float32)
    for size in np.unique(factor):
        rows = np.flatnonzero(factor == size)
        augmented[rows] = degrade_images(images[rows], int(size), 0.0)
    return np.clip(augmented + brightness[:, None, None], 0.0, 1.0)


def oversample_rows(labels: np.ndarray, label_class: int, factor: int, seed: int) -> np.ndarray:
    """Row indices with every image of `label_class` repeated `factor` times, shuffled."""
    rows = np.concatenate(
        [np.arange(len(labels)), np.repeat(np.flatnonzero(labels == label_class), max(factor - 1, 0))]
    )
    return np.random.default_rng(seed).permutation(rows)


def selective_prediction(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Predictions with max-softmax confidence below `threshold` are flagged for review.
    Returns the share flagged and the accuracy on the rest (None if everything is flagged)."""
    confidence = probabilities.max(axis=1)
    kept = confidence >= threshold
    correct = probabilities.argmax(axis=1) == labels
    return {
        "flagged_share": float(1 - kept.mean()),
        "accuracy_kept": float(correct[kept].mean()) if kept.any() else None,
        "accuracy_all": float(correct.mean()),
    }


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray, points: int = 21) -> list[dict[str, float]]:
    """Accuracy on the most confident share of images, for coverage 100 %, 95 %, ... 0 %+."""
    order = np.argsort(-probabilities.max(axis=1), kind="stable")
    correct = (probabilities.argmax(axis=1) == labels)[order]
    rows = []
    for coverage in np.linspace(1, 0, points)[:-1]:
        keep = max(1, round(coverage * len(order)))
        rows.append({"coverage": float(coverage), "accuracy": float(correct[:keep].mean())})
    return rows

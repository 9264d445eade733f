"""Classification metrics for one evaluation set, from the confusion matrix.

Plain NumPy on purpose: these run in the per-experiment stages, where importing scikit-learn
(~1.1 s) cost more than the arithmetic. tests/test_metrics.py checks them against
scikit-learn's precision_recall_fscore_support and confusion_matrix.
"""

from __future__ import annotations

import numpy as np

from shiftwatch import CLASS_NAMES, NUM_CLASSES, ShiftwatchError


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, focus_class: int) -> dict:
    """Accuracy, per-class precision/recall/F1/support, and the focus class's numbers on top.

    A class never predicted gets precision 0, a class absent from `labels` recall 0, and F1 0
    where it has neither (scikit-learn's zero_division=0); support tells them apart.
    """
    if len(labels) == 0:
        raise ShiftwatchError("cannot evaluate an empty set")
    counts = confusion(labels, predicted)
    true_positives = np.diag(counts).astype(float)
    support, predicted_count = counts.sum(axis=1), counts.sum(axis=0)
    precision = _ratio(true_positives, predicted_count)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * true_positives, support + predicted_count)  # = 2PR/(P+R), as scikit-learn computes it
    per_class = {
        CLASS_NAMES[c]: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in range(NUM_CLASSES)
    }
    return {
        "accuracy": float(np.mean(labels == predicted)),
        "n": len(labels),
        f"class_{focus_class}": {
            k: float(v)
            for k, v in (
                ("precision", precision[focus_class]),
                ("recall", recall[focus_class]),
                ("f1", f1[focus_class]),
            )
        },
        "per_class": per_class,
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=np.asarray(denominator) > 0)


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """10x10 counts, rows = true class, columns = predicted class."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(labels * NUM_CLASSES + predicted, minlength=NUM_CLASSES * NUM_CLASSES).reshape(
        NUM_CLASSES, NUM_CLASSES
    )

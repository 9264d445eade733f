"""Classification metrics for one evaluation set (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from shiftwatch import CLASS_NAMES, NUM_CLASSES, ShiftwatchError


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, focus_class: int) -> dict:
    """Accuracy, per-class precision/recall/F1/support, and the focus class's numbers on top.

    A class absent from both `labels` and `predicted` gets precision = recall = F1 = 0
    (scikit-learn's zero_division=0) and support 0, so a reader can tell it from a real 0.
    """
    if len(labels) == 0:
        raise ShiftwatchError("cannot evaluate an empty set")
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(NUM_CLASSES), zero_division=0)
    per_class = {
        CLASS_NAMES[c]: {"precision": float(precision[c]), "recall": float(recall[c]),
                         "f1": float(f1[c]), "support": int(support[c])}
        for c in range(NUM_CLASSES)
    }
    return {
        "accuracy": float(np.mean(labels == predicted)),
        "n": int(len(labels)),
        f"class_{focus_class}": {k: float(v) for k, v in
                                 (("precision", precision[focus_class]),
                                  ("recall", recall[focus_class]), ("f1", f1[focus_class]))},
        "per_class": per_class,
    }


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """10x10 counts, rows = true class, columns = predicted class."""
    return confusion_matrix(labels, predicted, labels=np.arange(NUM_CLASSES))

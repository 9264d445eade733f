"""Figures: sample grids, mean-pixel histograms, confusion matrices (PNG, via matplotlib)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from shiftwatch import CLASS_NAMES
from shiftwatch.io import atomic_path


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def sample_grid(rows: dict[str, np.ndarray], titles: list[str], path: str | Path) -> None:
    """One row of images per named set; columns line up (same image in every row where
    the sets share it, e.g. B_raw vs B_shift)."""
    columns = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, 1.5 * len(rows)),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.text(-4, 14, name, ha="right", va="center", fontsize=10)
            if r == 0 and c < len(titles):
                ax.set_title(titles[c], fontsize=7)
    _save(fig, path)


def mean_pixel_histogram(reference: np.ndarray, deployment: np.ndarray, bins: int,
                         labels: tuple[str, str], title: str, path: str | Path) -> None:
    """Overlaid probability-mass histograms on the detector's own fixed bins on [0, 1]."""
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for values, label in zip((reference, deployment), labels):
        ax.hist(values, bins=edges, weights=np.full(len(values), 1 / len(values)),
                alpha=0.55, label=f"{label} (n={len(values):,})")
    ax.set_xlabel("mean pixel intensity per image")
    ax.set_ylabel("share of images")
    ax.set_xlim(0, 0.8)
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def confusion_heatmap(matrix: np.ndarray, title: str, path: str | Path) -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with counts annotated."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, CLASS_NAMES, fontsize=8)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)

"""Figures: sample grids, mean-pixel histograms, confusion matrices (PNG, via matplotlib)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from shiftwatch import CLASS_NAMES
from shiftwatch.core.io import atomic_path


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def sample_grid(rows: dict[str, np.ndarray], titles: list[str], path: str | Path) -> None:
    """One row of images per named set; columns line up (same image in every row where
    the sets share it, e.g. B_raw vs B_shift)."""
    columns = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, 1.5 * len(rows)), squeeze=False)
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


def mean_pixel_histogram(
    reference: np.ndarray, deployment: np.ndarray, bins: int, labels: tuple[str, str], title: str, path: str | Path
) -> None:
    """Overlaid probability-mass histograms on the detector's own fixed bins on [0, 1]."""
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for values, label in zip((reference, deployment), labels):
        ax.hist(
            values,
            bins=edges.tolist(),
            weights=np.full(len(values), 1 / len(values)),
            alpha=0.55,
            label=f"{label} (n={len(values):,})",
        )
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
            ax.text(
                j, i, str(count), ha="center", va="center", fontsize=6, color="white" if rates[i, j] > 0.5 else "black"
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def estimates_vs_truth(monitor_results: dict, focus_class: int, path: str | Path) -> None:
    """Left: the focus class's share per deployment set, true vs BBSE vs EM. Right: accuracy,
    true vs ATC vs average confidence. Estimates use no deployment labels."""
    names = list(monitor_results)
    x = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for offset, (key, label) in zip((-0.27, 0, 0.27), (("true", "true"), ("bbse", "BBSE"), ("em", "EM"))):
        left.bar(
            x + offset,
            [monitor_results[n]["label_shift"][f"class_{focus_class}_share_{key}"] for n in names],
            width=0.27,
            label=label,
        )
    left.set_title(f"share of class {focus_class} ({CLASS_NAMES[focus_class]})")
    for offset, (key, label) in zip(
        (-0.27, 0, 0.27), (("true", "true"), ("atc", "ATC"), ("average_confidence", "avg. confidence"))
    ):
        right.bar(x + offset, [monitor_results[n]["accuracy"][key] for n in names], width=0.27, label=label)
    right.set_title("accuracy: true vs estimated without labels")
    right.set_ylim(0, 1)
    for ax in (left, right):
        ax.set_xticks(x, names)
        ax.legend(fontsize=8)
    _save(fig, path)


def power_curves(power_results: dict, alpha: float, path: str | Path) -> None:
    """One panel per stream: alarm rate vs deployment sample size per detector, 95 % Wilson band.
    Null streams (false alarms) first, with the nominal alpha level drawn in."""
    panels = [
        (kind, stream, by_detector)
        for kind, streams in power_results.items()
        for stream, by_detector in streams.items()
    ]
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (kind, stream, by_detector) in zip(axes.flat, panels):
        for detector, points in by_detector.items():
            sizes = [int(n) for n in points]
            ax.plot(
                sizes,
                [p["rate"] for p in points.values()],
                marker="o",
                markersize=3,
                label=detector,
                linewidth=2.5 if detector == "combined" else 1.2,
            )
            ax.fill_between(
                sizes, [p["ci_low"] for p in points.values()], [p["ci_high"] for p in points.values()], alpha=0.12
            )
        if kind == "false_alarms":
            ax.axhline(alpha, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{'false alarms' if kind == 'false_alarms' else 'detection'}: {stream}", fontsize=9)
        ax.set_xlabel("deployment images (n)", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def harm_plot(power_results: dict, harm_points: float, harm_n: int, target_power: float, path: str | Path) -> None:
    """Detection tied to harm: each shifted stream's accuracy loss (x) against how often the
    verdict alarms at n = harm_n (y), n against n (filled) and, where measured, against the
    monitor's reference (open, joined by a line); the target region (harmful) shaded."""
    fig, ax = plt.subplots(figsize=(8, 5))
    n = str(harm_n)
    as_monitored = power_results.get("as_monitored", {}).get("harm_detection", {})
    for stream, loss in power_results["accuracy_loss_points"].items():
        point = power_results["detection"][stream]["combined"].get(n)
        if point is None:
            continue
        missed = loss >= harm_points and point["rate"] < target_power
        ax.errorbar(
            loss,
            point["rate"],
            yerr=[[point["rate"] - point["ci_low"]], [point["ci_high"] - point["rate"]]],
            fmt="o",
            color="crimson" if missed else "tab:blue",
            markersize=4,
            capsize=2,
        )
        ax.annotate(stream, (loss, point["rate"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        monitored = as_monitored.get(stream, {}).get("combined", {})
        if n in monitored:  # the same stream against the monitor's reference: an open marker
            ax.plot([loss, loss], [point["rate"], monitored[n]["rate"]], color="grey", linewidth=0.5)
            ax.plot(
                loss,
                monitored[n]["rate"],
                "o",
                markerfacecolor="none",
                markersize=5,
                color="crimson" if monitored[n]["rate"] < target_power else "tab:green",
            )
    if as_monitored:
        ax.legend(
            handles=[
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="none",
                    color="tab:blue",
                    label=f"n against n ({harm_n}-image reference)",
                ),
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="none",
                    markerfacecolor="none",
                    color="tab:green",
                    label="as monitored (the monitor's reference), harmful shifts",
                ),
            ],
            loc="lower right",
            fontsize=7,
        )
    ax.axvline(harm_points, color="black", linestyle=":", linewidth=1)
    ax.axhline(target_power, color="black", linestyle=":", linewidth=1)
    ax.axvspan(harm_points, ax.get_xlim()[1], ymin=0, ymax=1, color="tab:green", alpha=0.05)
    ax.set_xlabel("accuracy lost by the model (points)")
    ax.set_ylabel(f"verdict alarms at n = {harm_n} (share of draws)")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(f"every shift costing >= {harm_points:g} points must alarm in >= {target_power:.0%} of draws")
    fig.tight_layout()
    _save(fig, path)


def page_plot(cells: dict, harm_points: float, page_points: float, sizes: list[str], path: str | Path) -> None:
    """Stage harm in two panels: the estimated loss of each cell (its population value, the
    fit that never saw its family) against the true loss; and how often the page fires at
    each n against the true loss, with the harmful region shaded."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    colours = {"design": "tab:blue", "held_out": "crimson", "everyday": "tab:green", "null": "black"}
    for cell in cells.values():
        estimated = cell["loss_points"] - cell["population_error_points"]
        left.plot(cell["loss_points"], estimated, "o", color=colours[cell["group"]], markersize=4)
    top = max(c["loss_points"] for c in cells.values()) + 2
    left.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
    left.axhline(page_points, color="black", linestyle="--", linewidth=0.8)
    left.set_xlabel("true accuracy loss (points)")
    left.set_ylabel("estimated loss (points, family left out)")
    left.set_title("label-free estimate vs truth, 5,000 images per cell")
    markers = dict(zip(sizes, "os^D"))
    for cell in cells.values():
        for n in sizes:
            right.plot(
                cell["loss_points"],
                cell["draws"][n]["page_rate"],
                markers[n],
                markersize=3,
                color=colours[cell["group"]],
                markerfacecolor="none" if n != "200" else None,
            )
    right.axvline(harm_points, color="black", linestyle=":", linewidth=1)
    right.axvline(1, color="black", linestyle=":", linewidth=1)
    right.axvspan(harm_points, top, color="tab:red", alpha=0.05)
    right.set_xscale("symlog", linthresh=1)
    right.set_xlabel("true accuracy loss (points)")
    right.set_ylabel("page rate (share of draws)")
    right.set_title(f"page fires when the estimated loss >= {page_points:g} points")
    right.legend(
        handles=[Line2D([], [], marker=markers[n], linestyle="none", color="grey", label=f"n = {n}") for n in sizes]
        + [Line2D([], [], marker="o", linestyle="none", color=c, label=g) for g, c in colours.items()],
        fontsize=7,
        loc="center right",
    )
    fig.tight_layout()
    _save(fig, path)

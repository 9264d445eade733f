"""shiftwatch timeline: the drift of a monitored stream over time, from the logged checks.

Every `shiftwatch check BATCH --log` is one point in time (its --time, or the batch's
modification time). This reads those MLflow runs back, in time order, and draws per detector
the p-value (after Holm, the one the verdict uses) against the alert level, the label-free
accuracy estimate (ATC) and the estimated share of the focus class (BBSE); it prints, and
writes as JSON, the first batch at which each detector and the verdict alerted.

    shiftwatch timeline --png timeline.png [--html timeline.html] [--json first_alerts.json]
"""
from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from shiftwatch import ShiftwatchError

HELP = "plot detector p-values, estimated accuracy and class share across the logged checks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--png", type=Path, default=Path("timeline.png"), metavar="OUT.png",
                        help="the figure (default: timeline.png)")
    parser.add_argument("--html", type=Path, default=None, metavar="OUT.html",
                        help="also a self-contained HTML page: the figure and the first-alert table")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                        help="also the points and first alerts as JSON")
    parser.add_argument("--since", default=None, metavar="ISO-8601",
                        help="only batches taken at or after this time")


def run(args: argparse.Namespace) -> int:
    from shiftwatch.check import parse_time

    """0 with a timeline drawn, 2 with nothing to draw or bad input (one line on stderr)."""
    try:
        since = None if args.since is None else parse_time(args.since, "--since")
        points = logged_checks(since)
        summary = first_alerts(points)
        draw(points, args.png)
        from shiftwatch.io import write_json

        if args.json is not None:
            write_json(args.json, {"points": points, "first_alerts": summary})
        if args.html is not None:
            write_html(args.html, args.png, summary, len(points))
    except ShiftwatchError as err:
        print(f"shiftwatch timeline: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, len(points)))
    print(f"figure: {args.png}")
    return 0


def logged_checks(since: datetime | None = None) -> list[dict]:
    """One point per logged check run, oldest first: time, verdict, Holm-adjusted p-value per
    detector, ATC accuracy, focus-class share (BBSE), alpha, images."""
    from mlflow import MlflowClient

    from shiftwatch.tracking import EXPERIMENT, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ShiftwatchError(f"no MLflow store at {uri}; log checks with `shiftwatch check BATCH --log` "
                              "first (or set MLFLOW_TRACKING_URI to where they were logged)")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter around the one-line errors
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise ShiftwatchError(f"no MLflow experiment {EXPERIMENT!r} at {uri}; log checks with "
                              "`shiftwatch check BATCH --log` first")
    runs = client.search_runs([experiment.experiment_id], "tags.`shiftwatch.role` = 'check'",
                              max_results=50_000)
    points = []
    for run in runs:
        metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
        if "check.batch.time" not in metrics:
            continue  # logged before checks carried a time
        taken = datetime.fromtimestamp(metrics["check.batch.time"], UTC)
        if since is not None and taken < since:
            continue
        focus = params.get("shift.label_class", "7")
        points.append({
            "time": tags.get("shiftwatch.batch_time") or taken.isoformat(timespec="seconds"),
            "timestamp": metrics["check.batch.time"],
            "batch": tags.get("shiftwatch.batch", ""),
            "verdict": tags.get("shiftwatch.verdict", ""),
            "alpha": float(params.get("monitor.alpha", 0.05)),
            "images": int(metrics.get("check.batch.images", 0)),
            "adjusted_pvalues": {key.split(".")[2]: value for key, value in metrics.items()
                                 if key.startswith("check.tests.") and key.endswith(".adjusted_pvalue")},
            "accuracy_atc": metrics.get("check.accuracy.atc"),
            "focus_class": int(focus),
            "focus_share_bbse": metrics.get(f"check.label_shift.class_{focus}_share_bbse"),
        })
    if not points:
        raise ShiftwatchError(f"no logged checks with a batch time at {uri}"
                              + (" since then" if since else "") + "; run `shiftwatch check BATCH --log`")
    return sorted(points, key=lambda p: p["timestamp"])


def first_alerts(points: list[dict]) -> dict[str, dict | None]:
    """Per detector (and "verdict"), the first batch whose adjusted p-value fell below alpha:
    {"index": position in time order, "time", "batch"}, or None if it never alerted."""
    detectors = sorted({d for p in points for d in p["adjusted_pvalues"]})
    summary: dict[str, dict | None] = {}
    for name in [*detectors, "verdict"]:
        summary[name] = None
        for index, point in enumerate(points):
            alerted = (point["verdict"] == "ALERT" if name == "verdict"
                       else point["adjusted_pvalues"].get(name, 1.0) < point["alpha"])
            if alerted:
                summary[name] = {"index": index, "time": point["time"], "batch": point["batch"]}
                break
    return summary


def draw(points: list[dict], path: Path) -> None:
    """Three panels over the batches in time order: Holm-adjusted p-values (log scale) with the
    alert level, the ATC accuracy estimate, the focus class's estimated share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shiftwatch.io import atomic_path

    x = list(range(len(points)))
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for name in sorted({d for p in points for d in p["adjusted_pvalues"]}):
        axes[0].plot(x, [max(p["adjusted_pvalues"].get(name, 1.0), 1e-12) for p in points],
                     marker="o", markersize=3, label=name)
    axes[0].axhline(points[-1]["alpha"], color="black", linestyle=":", label="alert level (alpha)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("Holm-adjusted p-value")
    axes[0].legend(fontsize=7, ncol=2)
    alerts = [i for i, p in enumerate(points) if p["verdict"] == "ALERT"]
    for ax in axes:
        for i in alerts:
            ax.axvspan(i - 0.5, i + 0.5, color="crimson", alpha=0.08, linewidth=0)
    axes[1].plot(x, [p["accuracy_atc"] for p in points], marker="o", markersize=3)
    axes[1].set_ylabel("estimated accuracy (ATC)")
    focus = points[-1]["focus_class"]
    axes[2].plot(x, [p["focus_share_bbse"] for p in points], marker="o", markersize=3)
    axes[2].set_ylabel(f"class {focus} share (BBSE)")
    axes[2].set_xticks(x, [p["time"][5:16].replace("T", " ") for p in points], fontsize=7,
                       rotation=60, ha="right")  # MM-DD hh:mm
    axes[2].set_xlabel("batch (time taken); shaded: verdict ALERT")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def format_summary(summary: dict[str, dict | None], batches: int) -> str:
    lines = [f"{batches} logged batches; first alert:"]
    for name, first in summary.items():
        where = "never" if first is None else f"batch {first['index']} ({first['time']})"
        lines.append(f"  {name:<18} {where}")
    return "\n".join(lines)


def write_html(path: Path, png: Path, summary: dict[str, dict | None], batches: int) -> None:
    import html

    from shiftwatch.html_report import img_tag
    from shiftwatch.io import atomic_path

    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{'never' if f is None else f['index']}</td>"
                   f"<td>{'' if f is None else html.escape(f['time'])}</td></tr>" for name, f in summary.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shiftwatch timeline</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; }}
td, th {{ padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; }} img {{ max-width: 100%; }}</style></head>
<body><h1>Drift timeline ({batches} batches)</h1>
{img_tag(png.read_bytes(), "timeline", "timeline")}
<h2>First alert</h2><table id="first-alerts"><tr><th>detector</th><th>batch</th><th>time</th></tr>{rows}</table>
</body></html>
"""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")

"""shiftwatch timeline: the drift of a monitored stream over time, from the logged checks.

Every `shiftwatch check BATCH --log` is one point in time (its --time, or the batch's
modification time). This reads those MLflow runs back, in time order, and draws the page's
accuracy estimate with its 90 % interval and the page decisions, per detector the p-value
(after Holm, the one the change verdict uses) against the alert level, and the estimated
share of the focus class (BBSE); it prints, and writes as JSON, the first batch that paged
and the first at which each detector and the change verdict alerted, and how many false
pages a week a healthy stream of 24 such batches a day would get (the no-shift page rate
stage `harm` measured at the nearest batch size).

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
    parser.add_argument(
        "--png", type=Path, default=Path("timeline.png"), metavar="OUT.png", help="the figure (default: timeline.png)"
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="OUT.html",
        help="also a self-contained HTML page: the figure and the first-alert table",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="OUT.json", help="also the points and first alerts as JSON"
    )
    parser.add_argument("--since", default=None, metavar="ISO-8601", help="only batches taken at or after this time")


def run(args: argparse.Namespace) -> int:
    """0 with a timeline drawn, 2 with nothing to draw or bad input (one line on stderr)."""
    from shiftwatch.commands.check import parse_time

    try:
        since = None if args.since is None else parse_time(args.since, "--since")
        points = logged_checks(since)
        summary = first_alerts(points)
        false_pages = false_pages_per_week(points)
        draw(points, args.png)
        from shiftwatch.core.io import write_json

        if args.json is not None:
            write_json(args.json, {"points": points, "first_alerts": summary, "false_pages": false_pages})
        if args.html is not None:
            write_html(args.html, args.png, summary, len(points))
    except ShiftwatchError as err:
        print(f"shiftwatch timeline: error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, len(points), false_pages))
    print(f"figure: {args.png}")
    return 0


def logged_checks(since: datetime | None = None) -> list[dict]:
    """One point per logged check run, oldest first: time, verdict, Holm-adjusted p-value per
    detector, ATC accuracy, focus-class share (BBSE), alpha, images."""
    from shiftwatch.tracking.store import CHECKS_EXPERIMENT, EXPERIMENT, store_client, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ShiftwatchError(
            f"no MLflow store at {uri}; log checks with `shiftwatch check BATCH --log` "
            "first (or set MLFLOW_TRACKING_URI to where they were logged)"
        )
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO chatter around the one-line errors
    client = store_client(uri)
    # Checks have their own experiment; those logged before it are in the pipeline's.
    experiments = [found for found in map(client.get_experiment_by_name, (CHECKS_EXPERIMENT, EXPERIMENT)) if found]
    if not experiments:
        raise ShiftwatchError(
            f"no MLflow experiment {CHECKS_EXPERIMENT!r} at {uri}; log checks with `shiftwatch check BATCH --log` first"
        )
    runs = client.search_runs(
        [e.experiment_id for e in experiments], "tags.`shiftwatch.role` = 'check'", max_results=50_000
    )
    points = []
    for run in runs:
        metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
        if "check.batch.time" not in metrics:
            continue  # logged before checks carried a time
        taken = datetime.fromtimestamp(metrics["check.batch.time"], UTC)
        if since is not None and taken < since:
            continue
        focus = params.get("shift.label_class", "7")
        points.append(
            {
                "time": tags.get("shiftwatch.batch_time") or taken.isoformat(timespec="seconds"),
                "timestamp": metrics["check.batch.time"],
                "batch": tags.get("shiftwatch.batch", ""),
                "verdict": tags.get("shiftwatch.verdict", ""),
                "page": tags.get("shiftwatch.page", ""),
                # hurt or not before any --confirm-with: the timeline confirms by itself (two in a row)
                "harmful": bool(metrics.get("check.harmful", tags.get("shiftwatch.page") == "PAGE")),
                "estimated_accuracy": metrics.get("check.estimate.accuracy"),
                "interval": [metrics.get("check.estimate.interval_low"), metrics.get("check.estimate.interval_high")],
                "reference_accuracy": metrics.get("check.estimate.reference_accuracy"),
                "page_points": metrics.get("check.estimate.page_points"),
                "alpha": float(params.get("monitor.alpha", 0.05)),
                "images": int(metrics.get("check.batch.images", 0)),
                "adjusted_pvalues": {
                    key.split(".")[2]: value
                    for key, value in metrics.items()
                    if key.startswith("check.tests.") and key.endswith(".adjusted_pvalue")
                },
                "accuracy_atc": metrics.get("check.accuracy.atc"),
                "focus_class": int(focus),
                "focus_share_bbse": metrics.get(f"check.label_shift.class_{focus}_share_bbse"),
            }
        )
    if not points:
        raise ShiftwatchError(
            f"no logged checks with a batch time at {uri}"
            + (" since then" if since else "")
            + "; run `shiftwatch check BATCH --log`"
        )
    return sorted(points, key=lambda p: p["timestamp"])


def first_alerts(points: list[dict]) -> dict[str, dict | None]:
    """The first batch that paged ("page"), the first page confirmed by the batch before it
    ("confirmed_page": two in a row), and per detector (and "verdict", the change verdict) the
    first whose adjusted p-value fell below alpha: {"index": position in time order, "time",
    "batch"}, or None if it never did."""
    detectors = sorted({d for p in points for d in p["adjusted_pvalues"]})
    summary: dict[str, dict | None] = {}
    paged = [point["harmful"] for point in points]
    for name in ["page", "confirmed_page", *detectors, "verdict"]:
        summary[name] = None
        for index, point in enumerate(points):
            alerted = (
                point["verdict"] == "ALERT"
                if name == "verdict"
                else paged[index]
                if name == "page"
                else index > 0 and paged[index - 1] and paged[index]
                if name == "confirmed_page"
                else point["adjusted_pvalues"].get(name, 1.0) < point["alpha"]
            )
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

    from shiftwatch.core.io import atomic_path

    x = list(range(len(points)))
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    estimated = [p.get("estimated_accuracy") for p in points]
    if any(e is not None for e in estimated):
        low = [
            p["interval"][0] if p.get("interval") and p["interval"][0] is not None else e
            for p, e in zip(points, estimated)
        ]
        high = [
            p["interval"][1] if p.get("interval") and p["interval"][1] is not None else e
            for p, e in zip(points, estimated)
        ]
        axes[0].fill_between(x, low, high, color="tab:blue", alpha=0.2, label="90 % interval")
        axes[0].plot(x, estimated, marker="o", markersize=3, label="estimated accuracy (page's estimate)")
        last = points[-1]
        if last.get("reference_accuracy") is not None:
            axes[0].axhline(last["reference_accuracy"], color="black", linestyle=":", label="reference accuracy")
            axes[0].axhline(
                last["reference_accuracy"] - last["page_points"] / 100,
                color="crimson",
                linestyle="--",
                label="page below this",
            )
    axes[0].plot(
        x,
        [p["accuracy_atc"] for p in points],
        marker=".",
        markersize=3,
        color="grey",
        linewidth=0.8,
        label="ATC (for comparison)",
    )
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, ncol=2)
    for name in sorted({d for p in points for d in p["adjusted_pvalues"]}):
        axes[1].plot(
            x, [max(p["adjusted_pvalues"].get(name, 1.0), 1e-12) for p in points], marker="o", markersize=3, label=name
        )
    axes[1].axhline(points[-1]["alpha"], color="black", linestyle=":", label="alert level (alpha)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("Holm-adjusted p-value (change)")
    axes[1].legend(fontsize=7, ncol=2)
    for i, p in enumerate(points):
        colour = "crimson" if p["harmful"] else "orange" if p["verdict"] == "ALERT" else None
        for ax in axes if colour else ():
            ax.axvspan(i - 0.5, i + 0.5, color=colour, alpha=0.1, linewidth=0)
    focus = points[-1]["focus_class"]
    axes[2].plot(x, [p["focus_share_bbse"] for p in points], marker="o", markersize=3)
    axes[2].set_ylabel(f"class {focus} share (BBSE)")
    axes[2].set_xticks(
        x, [p["time"][5:16].replace("T", " ") for p in points], fontsize=7, rotation=60, ha="right"
    )  # MM-DD hh:mm
    axes[2].set_xlabel("batch (time taken); shaded red: PAGE (harmful), orange: changed without harm")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def false_pages_per_week(
    points: list[dict], details_path: Path | None = None, batches_per_day: int = 24
) -> dict | None:
    """How many false pages a week a healthy stream of `batches_per_day` batches of the median
    logged size would get: the no-shift page rate stage `harm` measured at the nearest judged
    n (with its 95 % Wilson upper end), times 7 x batches_per_day; and, for a page confirmed
    by the next batch (two in a row, as `first_alerts` reports it), the square of that rate
    (healthy batches are independent draws). None without harm's details."""
    import json
    import statistics

    from shiftwatch.tracking.store import repo_root

    path = details_path or repo_root(Path.cwd()) / "metrics" / "harm_details.json"
    try:
        draws = json.loads(path.read_text())["cells"]["no_shift"]["draws"]
    except (OSError, ValueError, KeyError):
        return None
    size = statistics.median(p["images"] for p in points)
    n = min(draws, key=lambda k: abs(int(k) - size))
    return {
        "batch_images": size,
        "judged_n": int(n),
        **weekly_false_pages(draws[n], batches_per_day),
        "batches_per_day": batches_per_day,
    }


def weekly_false_pages(judged: dict, batches_per_day: int = 24) -> dict:
    """One n of stage harm's no-shift draws as false pages a week: single pages (rate and its 95 %
    Wilson upper end, times 7 x batches_per_day) and pages confirmed by the next batch (their
    squares: independent healthy batches), with the confirmed pages seen in the draws."""
    per_week = 7 * batches_per_day
    return {
        "page_rate": judged["page_rate"],
        "draws": judged.get("repetitions"),
        "per_week": per_week * judged["page_rate"],
        "per_week_upper": per_week * judged["ci_high"],
        "confirmed_per_week": per_week * judged["page_rate"] ** 2,
        "confirmed_per_week_upper": per_week * judged["ci_high"] ** 2,
        # seen, not assumed: draws that paged right after a draw that paged
        "confirmed_seen": judged.get("confirmed_pages"),
    }


def format_summary(summary: dict[str, dict | None], batches: int, false_pages: dict | None = None) -> str:
    lines = []
    if false_pages is not None:
        lines.append(
            f"healthy stream, {false_pages['batches_per_day']} batches a day of "
            f"~{false_pages['batch_images']:g} images: {false_pages['per_week']:.1f} false pages a week "
            f"(95 % upper "
            f"{false_pages['per_week_upper']:.1f}; no-shift page rate {false_pages['page_rate']:.3f} in "
            f"{false_pages['draws']} draws at n = {false_pages['judged_n']}, stage harm); a page confirmed "
            f"by the next batch (check --confirm-with): {false_pages['confirmed_per_week']:.2f} a week "
            f"(95 % upper {false_pages['confirmed_per_week_upper']:.2f}"
            + (
                ""
                if false_pages["confirmed_seen"] is None
                else f"; {false_pages['confirmed_seen']} confirmed pages seen in those draws"
            )
            + ")"
        )
    lines.append(f"{batches} logged batches; first page and first alerts:")
    for name, first in summary.items():
        where = "never" if first is None else f"batch {first['index']} ({first['time']})"
        lines.append(f"  {name:<18} {where}")
    return "\n".join(lines)


def write_html(path: Path, png: Path, summary: dict[str, dict | None], batches: int) -> None:
    import html

    from shiftwatch.core.io import atomic_path
    from shiftwatch.operations.html_report import img_tag

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'never' if f is None else f['index']}</td>"
        f"<td>{'' if f is None else html.escape(f['time'])}</td></tr>"
        for name, f in summary.items()
    )
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

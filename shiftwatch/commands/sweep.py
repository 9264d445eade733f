"""Severity sweeps: read the MLflow pipeline runs of a sweep and draw scores against accuracy.

    dvc exp run --queue -S 'shift.brightness=0,0.02,0.05,0.1,0.2' && dvc queue start
    python -m shiftwatch.commands.sweep shift.brightness

For each value of the swept parameter (latest pipeline run per value), prints and plots the
detectors' scores on b_shift and the label-free accuracy estimates against the true accuracy,
so an alert threshold can be chosen to match the accuracy loss a team cares about.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shiftwatch import ShiftwatchError

# label in the table -> metric of the pipeline run: its parent's headline metrics, or the
# detailed ones of its stage runs (missing where DVC skipped that stage)
SCORES = {
    "KS": "detect.{set}.ks_statistic",
    "KL": "detect.{set}.kl_divergence",
    "AUC": "detect.{set}.domain_auc",
    "BBSD-KS": "monitor.{set}.tests.bbsd_ks.statistic",
    "MMD emb.": "monitor.{set}.tests.mmd_embedding.statistic",
}
ACCURACY = {
    "true acc.": "evaluate.accuracy.{set}",
    "page est.": "monitor.{set}.page.accuracy",
    "ATC": "monitor.{set}.accuracy.atc",
    "avg. conf.": "monitor.{set}.accuracy.average_confidence",
}


def sweep_rows(param: str, deployment_set: str = "b_shift") -> list[dict]:
    """One row per value of `param`: the latest pipeline run's scores and accuracies."""
    from shiftwatch.tracking.store import EXPERIMENT, store_client, tracking_uri

    client = store_client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise ShiftwatchError(f"no MLflow experiment '{EXPERIMENT}' at {tracking_uri()}; run `dvc repro` first")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`shiftwatch.role` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    rows: dict[str, dict] = {}
    for run in runs:
        value = run.data.params.get(param)
        if value is None or value in rows:
            continue
        logged = {**_stage_metrics(client, run), **run.data.metrics}
        metrics = {label: logged.get(key.format(set=deployment_set)) for label, key in {**SCORES, **ACCURACY}.items()}
        if metrics["true acc."] is not None:
            rows[value] = {param: value, "run": run.data.tags.get("dvc.exp_name", ""), **metrics}
    if not rows:
        raise ShiftwatchError(
            f"no pipeline run in MLflow logs param '{param}' with evaluate results; "
            f'run a sweep first (see docs/extending.md, "Severity sweeps")'
        )
    return sorted(rows.values(), key=lambda row: float(row[param]))


def _stage_metrics(client, parent) -> dict[str, float]:
    """The detailed numbers of a pipeline run's stage runs (children), merged: their details/*.json,
    or their metrics where they were logged as metrics (runs from before the artifacts)."""
    from shiftwatch.tracking.runs import stage_details

    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=100,
    )
    merged: dict[str, float] = {}
    for child in children:
        merged.update(child.data.metrics)
        merged.update(stage_details(client, child.info.run_id))
    return merged


def format_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [
        " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v if v is not None else "—") for v in row.values())
        for row in rows
    ]
    return "\n".join(lines)


def plot(rows: list[dict], param: str, path: Path) -> None:
    from shiftwatch.core.plots import _save, plt

    values = [float(row[param]) for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label in SCORES:
        left.plot(values, [row[label] for row in rows], marker="o", label=label)
    left.set_xlabel(param)
    left.set_title("detector scores on b_shift")
    truth = [row["true acc."] for row in rows]
    for label in ACCURACY:
        right.plot(truth, [row[label] for row in rows], marker="o", label=label)
    right.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    right.set_xlabel("true accuracy on b_shift")
    right.set_ylabel("estimate")
    right.set_title("label-free accuracy estimates vs truth")
    for ax in (left, right):
        ax.legend(fontsize=8)
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shiftwatch.commands.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("param", help="the swept parameter, as in params.yaml (e.g. shift.brightness)")
    parser.add_argument("--set", default="b_shift", help="deployment set to report (default b_shift)")
    parser.add_argument("--out", type=Path, help="PNG path (default metrics/plots/sweep_<param>.png)")
    args = parser.parse_args(argv)
    try:
        rows = sweep_rows(args.param, args.set)
    except ShiftwatchError as err:
        print(f"shiftwatch report: error: {err}", file=sys.stderr)
        return 2
    out = args.out or Path(f"metrics/plots/sweep_{args.param}.png")
    plot(rows, args.param, out)
    print(format_table(rows))
    print(f"\nplot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

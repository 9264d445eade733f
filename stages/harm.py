"""harm: fit the label-free accuracy estimate on shifts of known cost, and judge the page.

Once per model (reads no `shift.*` but the class a label shift thins out). Every cell is a
seeded subset of harm.pool_images pool images (the power stage's corruption rows: the harm
table's images) under one shift, with the deployed model's and the fine-tuned model's outputs
on each. The estimator's weights are fitted on the design cells (harm.design: the corruption
library, the study's brightness and blur, the label shift, and B_shift's combination); each
design family is judged with a fit that left it out (leave-one-family-out), the held-out
families (harm.held_out, fixed in a commit before their first run) and the everyday pipeline
operations (harm.everyday) with the fit on every design family (or, where an everyday cell
belongs to a design family, with that family left out).

Judged as `check` runs it: per cell and n in harm.sizes, harm.repetitions independent draws of
n shifted images, each against a fresh reference of harm.reference_images pool images outside
the draw; per draw the estimate, the page (estimated loss >= harm.page_points) and whether the
interval holds the draw's own accuracy. The null is the clean cell, with harm.null_repetitions
draws per n: its false-page rate, times 168 batches a week, is a claim `timeline` states.

Reads params: seed, shift.label_class, evaluate, power.corruption_pool_images, harm.
Writes models/accuracy_estimator.json (the fit and its summary of the test set, read by
`shiftwatch check`, `serve` and `monitor`), metrics/harm.json (headline at n = 200: the lowest
page rate on a harmful cell, the highest on a harmless one (< 1 point) and on no shift; the
estimate's median and worst error on held-out families and its worst coverage there at n = 100
and 1,000), metrics/harm_details.json (the same at every n, the worst coverage over every cell,
and every cell), metrics/plots/page.png.
"""

import time

import numpy as np

from shiftwatch.core.io import write_json
from shiftwatch.core.lineage import file_md5
from shiftwatch.core.params import load_params
from shiftwatch.core.plots import page_plot
from shiftwatch.core.stage import run_stage
from shiftwatch.core.workers import fork_map
from shiftwatch.data.corruptions import check_severity, corrupt
from shiftwatch.data.shift import degrade_images
from shiftwatch.detection.power import corruption_rows
from shiftwatch.detection.power_design import unseen_pool
from shiftwatch.detection.verdict import verdict_alarms
from shiftwatch.estimation.accuracy import clear_border, reference_summary
from shiftwatch.estimation.harm import (
    NULL_CELL,
    Cell,
    ChangeJudge,
    design_fits,
    headline,
    judge_cell,
    population_error,
    summary,
    survey,
    thin_grid,
)
from shiftwatch.model import DEPLOYED_MODEL, FINETUNED_MODEL
from shiftwatch.model.features import Features, load_features, model_features
from shiftwatch.model.network import load_model, pick_device, predict_proba
from shiftwatch.tracking.runs import stage_run

ESTIMATOR = "models/accuracy_estimator.json"
FIGURE = "metrics/plots/page.png"
HEADLINE_N = 200  # the targets are set at n = 200
CLEAN = NULL_CELL


def main() -> None:
    params = load_params()
    harm = params.harm
    for group in (harm.design, harm.held_out, harm.everyday):
        for family, severities in group.items():
            for severity in severities:
                _check(family, severity)
    with stage_run("harm", params) as run:
        started = time.perf_counter()
        pool, labels, images, test_size = _pool()
        rows = corruption_rows(len(labels), params.seed, params.power.corruption_pool_images)
        base, aux = load_model(DEPLOYED_MODEL), load_model(FINETUNED_MODEL)
        device, evaluate = pick_device(), params.evaluate

        def aux_outputs(shifted_images, name):
            return predict_proba(
                aux,
                shifted_images,
                evaluate.batch_size,
                device,
                desc=name,
                progress=False,
                precision=evaluate.precision,
            )

        def outputs(shifted_images, name):
            """The deployed model's view (the change verdict's too) and the fine-tuned model's outputs."""
            view = model_features(base, shifted_images, evaluate.batch_size, device, evaluate.precision, desc=name)
            return view, aux_outputs(shifted_images, name)

        pool_aux, pool_clear = aux_outputs(images, "pool"), clear_border(pool.pixels)
        clean = Cell(CLEAN, pool.probabilities[rows], pool_aux[rows], rows, labels[rows], clear=pool_clear[rows])
        views = {CLEAN: pool.subset(rows)}  # the deployed model's view of each cell's images
        groups = {"design": {}, "held_out": {}, "everyday": {}}
        for group in groups:
            for family, severities in getattr(harm, group).items():
                for severity in severities:
                    name = f"{family}_{severity:g}"
                    groups[group][name], views[name] = _cell(
                        family, severity, clean, views[CLEAN], images[rows], outputs, params
                    )
        print(
            f"harm: the models' outputs on {sum(map(len, groups.values()))} cells in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )

        warning = thin_grid(groups["design"], harm.signals)
        if warning:
            print(f"harm: warning: {warning}", flush=True)
        fit, fits, lofo = design_fits(groups["design"], clean, harm.signals, harm.harm_points)
        cells = {
            CLEAN: ("null", clean),
            **{name: (group, cell) for group, members in groups.items() for name, cell in members.items()},
        }

        def judged(name: str) -> dict:
            group, cell = cells[name]
            used = fits.get(cell.family, fit)  # a design family is judged by the fit without it
            return {
                "group": group,
                "family": cell.family,
                "loss_points": 100 * (clean.accuracy() - cell.accuracy()),
                "population_error_points": population_error(used, cell, clean) if name != CLEAN else 0.0,
                "left_out": cell.family if cell.family in fits else None,
                "draws": judge_cell(
                    cell,
                    pool.probabilities,
                    pool_aux,
                    labels,
                    used,
                    sizes=harm.sizes,
                    repetitions=harm.null_repetitions if name == CLEAN else harm.repetitions,
                    reference_size=harm.reference_images,
                    page_points=harm.page_points,
                    seed=params.seed,
                    change=_change_judge(pool, views[name], params),
                    pool_clear=pool_clear,
                ),
            }

        details = dict(zip(cells, fork_map(judged, list(cells))))
        reference = reference_summary(
            pool.probabilities[:test_size], labels[:test_size], pool_aux[:test_size], fit, pool_clear[:test_size]
        )
        write_json(
            ESTIMATOR,
            {
                **fit.as_dict(),
                "page_points": harm.page_points,
                "harm_points": harm.harm_points,
                "reference": {
                    **reference.as_dict(),
                    "path": "data/reference/test.npz",
                    "model_md5": file_md5(DEPLOYED_MODEL),
                    "finetuned_md5": file_md5(FINETUNED_MODEL),
                },
            },
        )
        surveyed = survey(groups["design"], {**groups["held_out"], **groups["everyday"]}, clean)
        summarised = summary(details, harm.harm_points, harm.sizes, HEADLINE_N)
        results = {
            "harm_points": harm.harm_points,
            "page_points": harm.page_points,
            "summary": summarised,
            "estimator": fit.as_dict(),
            "leave_one_family_out_points": lofo,
            "survey_points": surveyed,
            "clean_accuracy": clean.accuracy(),
            "cells": details,
        }
        write_json("metrics/harm_details.json", results)
        page_plot(details, harm.harm_points, harm.page_points, [str(n) for n in harm.sizes], FIGURE)
        write_json("metrics/harm.json", headline(summarised))
        run.log_metric_tree("harm", headline(summarised))
        run.log_artifact("metrics/harm_details.json")
        run.log_artifact(ESTIMATOR)
        run.log_artifact(FIGURE, "plots")
    print(
        f"harm: {len(cells)} cells judged in {time.perf_counter() - started:.0f} s; "
        f"weights {dict(zip(fit.signals, np.round(fit.weights, 3).tolist()))}, fit error "
        f"{100 * fit.model_error:.2f} points + {fit.relative_error:.2f} x loss"
    )


def _check(family: str, severity: float) -> None:
    if family in ("brightness", "downsample", "label_keep"):
        return
    check_severity(family, severity)


def _pool() -> tuple[Features, np.ndarray, np.ndarray, int]:
    """The deployed model's view, labels and images of the unseen pool (test + domain B), and
    how many of its first rows are the test set (the monitor's reference)."""
    view, labels, images = unseen_pool()
    return view, labels, images, len(load_features("data/reference/test.npz")[1])


def _cell(
    family: str, severity: float, clean: Cell, clean_view: Features, images: np.ndarray, outputs, params
) -> tuple[Cell, Features]:
    """The clean cell's images under one shift, through both models, and the deployed model's
    view of them (a label shift reuses the clean outputs and thins class shift.label_class out)."""
    if family == "label_keep":
        cell = Cell(
            family,
            clean.probabilities,
            clean.aux_probabilities,
            clean.rows,
            clean.labels,
            keep=severity,
            label_class=params.shift.label_class,
            clear=clean.clear,
        )
        return cell, clean_view
    if family == "brightness":
        shifted = degrade_images(images, 28, severity)
    elif family == "downsample":
        shifted = degrade_images(images, int(severity), 0.0)
    else:
        shifted = corrupt(images, family, severity, seed=params.seed)
    view, aux = outputs(shifted, f"{family}_{severity:g}")
    return Cell(family, view.probabilities, aux, clean.rows, clean.labels, clear=clear_border(view.pixels)), view


def _change_judge(pool: Features, view: Features, params) -> ChangeJudge:
    """The change verdict as `check` runs it (its MMD on monitor.mmd_max_per_side reference
    images), on a draw's reference rows of the pool and positions in the cell's view."""
    harm, monitor = params.harm, params.monitor

    def alarms(reference_rows: np.ndarray, picked: np.ndarray, seed: int) -> bool:
        return verdict_alarms(
            pool.subset(reference_rows),
            view.subset(picked),
            seed=seed,
            alpha=monitor.alpha,
            mmd_permutations=monitor.mmd_permutations,
            mmd_max_per_side=monitor.mmd_max_per_side,
        )

    return ChangeJudge(alarms, harm.change_sizes, harm.change_repetitions, harm.change_first_look)


if __name__ == "__main__":
    run_stage("harm", main)

"""monitor: label-free, model-based monitoring of each deployment set against the held-out test set.

Two answers per set, as `check` gives them (shiftwatch/operations/page.py): harmful (the page: the
accuracy estimate of stage `harm` says the set loses at least harm.page_points) and changed
(the Holm verdict of shiftwatch.detection.verdict.VERDICT).
Reads params: seed, shift.label_class, evaluate, monitor. The deployed model's outputs come
from `reference` (test set, domain B) and `evaluate` (b_covariate); the fine-tuned model's
from `finetune` (domain B) and one pass over b_covariate here.
Writes metrics/monitor.json (headline per shifted set: page, estimated loss, the change
verdict, class-7 share), metrics/monitor_details.json (every detector's p-value and the Holm
verdict, estimated class mix with its trust flag, the page's estimate and ATC next to the
truth), a figure.
Deployment labels are read only to report the truth beside the estimates.
"""

from pathlib import Path

import numpy as np

from shiftwatch import DEPLOYMENT_SETS, SHIFTED_SETS
from shiftwatch.core.io import load_predictions, load_set, rows_matching, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.plots import estimates_vs_truth
from shiftwatch.core.stage import run_stage
from shiftwatch.core.workers import fork_map
from shiftwatch.detection.basic import domain_classifier_test
from shiftwatch.detection.holm import check_permutations_for_holm
from shiftwatch.detection.mmd import mmd_test
from shiftwatch.detection.verdict import FEATURE_DETECTORS, accuracy_report, label_shift_report, run_detectors
from shiftwatch.estimation.accuracy import border_values, estimate
from shiftwatch.model.features import deployment_views, finetuned_outputs, load_features, load_view
from shiftwatch.model.network import pick_device
from shiftwatch.operations.page import load_estimator
from shiftwatch.tracking.runs import stage_run

FIGURE = "metrics/plots/monitor_estimates.png"
ESTIMATOR = "models/accuracy_estimator.json"


def main() -> None:
    params = load_params()
    monitor, focus = params.monitor, params.shift.label_class
    check_permutations_for_holm(
        monitor.mmd_permutations, len(FEATURE_DETECTORS), monitor.alpha, "monitor.mmd_permutations"
    )
    with stage_run("monitor", params) as run:
        test = load_set("data/prepared/test.npz", hint="run `dvc repro prepare`")
        sets = {name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`") for name in DEPLOYMENT_SETS}
        reference, _ = load_features("data/reference/test.npz")
        views = deployment_views(
            load_view("data/reference/domain_b.npz"), load_view("data/features/b_covariate.npz"), sets
        )

        # The pixel-level tests dominate (logistic regressions, MMD permutations): one worker per core.
        pixel_tests = fork_map(lambda name: _pixel_tests(test.images, sets[name].images, params), DEPLOYMENT_SETS)
        fit, summary, estimator = load_estimator(Path(ESTIMATOR))
        aux = {
            **finetuned_outputs(sets, params.evaluate.batch_size, pick_device(), params.evaluate.precision),
            "b_raw": _on_domain_b(sets["b_raw"]),
        }  # the fine-tuned model's outputs, for the page
        results = {}
        for name, extra in zip(DEPLOYMENT_SETS, pixel_tests):
            deployment, labels = views[name], sets[name].labels
            results[name] = {
                **run_detectors(
                    reference,
                    deployment,
                    seed=params.seed,
                    alpha=monitor.alpha,
                    mmd_permutations=monitor.mmd_permutations,
                    mmd_max_per_side=monitor.mmd_max_per_side,
                    diagnostics=extra,
                ),
                "label_shift": label_shift_report(
                    reference.probabilities,
                    test.labels,
                    deployment.probabilities,
                    focus,
                    monitor.trust_tolerance,
                    true_labels=labels,
                    seed=params.seed,
                ),
                "accuracy": accuracy_report(
                    reference.probabilities, test.labels, deployment.probabilities, true_labels=labels
                ),
            }
            clear = border_values(fit, deployment.pixels)
            found = estimate(deployment.probabilities, aux[name], summary, fit, float(estimator["page_points"]), clear)
            results[name]["page"] = {
                **found.as_dict(),
                "true_loss_points": 100 * (found.reference_accuracy - results[name]["accuracy"]["true"]),
            }
            results[name]["mmd_images_tested"] = _tested(len(test), len(deployment), monitor.mmd_max_per_side)
            _print(name, results[name], focus)

        write_json("metrics/monitor.json", _headline(results, focus))
        write_json("metrics/monitor_details.json", results)
        estimates_vs_truth(results, focus, FIGURE)
        run.log_metric_tree("monitor", results)
        run.log_artifact("metrics/monitor_details.json")
        run.log_artifact(FIGURE, "plots")


def _on_domain_b(b_raw) -> np.ndarray:
    """The fine-tuned model's outputs on b_raw (domain B, saved by `finetune`), in b_raw's order."""
    on_b = load_predictions("data/finetuned/domain_b.npz", hint="run `dvc repro finetune`")
    return on_b.probabilities[rows_matching(b_raw.source_index, on_b.source_index)]


def _tested(reference: int, deployment: int, cap: int | None) -> dict:
    """How many images per side the MMD tests saw (a seeded subsample above monitor.mmd_max_per_side)."""
    return {
        "reference": reference if cap is None else min(reference, cap),
        "deployment": deployment if cap is None else min(deployment, cap),
    }


def _pixel_tests(reference_images, images, params) -> dict:
    """Diagnostics that need the images themselves (MMD on pixels, the domain classifier):
    reported beside the verdict, not in it, so that `check` and `power` give the same verdict."""
    monitor = params.monitor
    return {
        "mmd_pixels": mmd_test(
            _flat(reference_images),
            _flat(images),
            seed=params.seed,
            n_permutations=monitor.mmd_permutations,
            max_per_side=monitor.mmd_max_per_side,
        ),
        "domain_classifier": domain_classifier_test(reference_images, images, monitor.classifier_samples, params.seed),
    }


def _headline(results: dict, focus: int) -> dict:
    """Per shifted set: the page and its estimated loss, the change verdict and the estimated
    focus-class share (`dvc exp show` prints every headline number as a column). Everything
    else, the trust flag and ATC included, is in monitor_details.json."""
    return {
        name: {
            "page": int(results[name]["page"]["harmful"]),
            "estimated_loss_points": results[name]["page"]["loss_points"],
            "drift": results[name]["drift"],
            f"class_{focus}_share_bbse": results[name]["label_shift"][f"class_{focus}_share_bbse"],
        }
        for name in SHIFTED_SETS
    }


def _scalars(tree: dict) -> dict:
    """The metrics file keeps numbers only (DVC shows it as columns); lists go to the details file."""
    return {k: _scalars(v) if isinstance(v, dict) else v for k, v in tree.items() if isinstance(v, (dict, int, float))}


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def _print(name: str, result: dict, focus: int) -> None:
    shift, accuracy = result["label_shift"], result["accuracy"]
    page = result["page"]
    print(
        f"monitor: {name:12s} {'PAGE' if page['harmful'] else 'no page'}: estimated accuracy "
        f"{page['accuracy']:.3f} (loss {page['loss_points']:.1f} points, true {page['true_loss_points']:.1f}); "
        f"{'DRIFT' if result['drift'] else 'no drift'} "
        f"({', '.join(result['alerting']) or 'none alerting'}); class {focus} share "
        f"true {shift[f'class_{focus}_share_true']:.3f} BBSE {shift[f'class_{focus}_share_bbse']:.3f} "
        f"EM {shift[f'class_{focus}_share_em']:.3f}{' (untrustworthy)' if shift['untrustworthy'] else ''}; "
        f"accuracy true {accuracy['true']:.3f} ATC {accuracy['atc']:.3f} "
        f"avg-conf {accuracy['average_confidence']:.3f}"
    )


if __name__ == "__main__":
    run_stage("monitor", main)

"""monitor: label-free, model-based monitoring of each deployment set against the held-out test set.

Reads params: seed, shift.label_class, monitor. Runs no network: the
model's outputs come from `reference` (test set, domain B) and `evaluate` (b_covariate).
Writes metrics/monitor.json (headline: the verdict of shiftwatch.monitor.VERDICT, class-7 share, trust flag,
ATC accuracy per
shifted set), metrics/monitor_details.json (every detector's p-value and the Holm verdict,
estimated class mix and accuracy next to the truth), a figure.
Deployment labels are read only to report the truth beside the estimates.
"""
import numpy as np

from shiftwatch import DEPLOYMENT_SETS, SHIFTED_SETS
from shiftwatch.cli import run_stage
from shiftwatch.detectors import domain_classifier_test
from shiftwatch.features import deployment_views, load_features, load_view
from shiftwatch.io import load_set, write_json
from shiftwatch.monitor import FEATURE_DETECTORS, accuracy_report, label_shift_report, run_detectors
from shiftwatch.params import load_params
from shiftwatch.plots import estimates_vs_truth
from shiftwatch.tracking import stage_run
from shiftwatch.twosample import check_permutations_for_holm, mmd_test
from shiftwatch.workers import fork_map

FIGURE = "metrics/plots/monitor_estimates.png"


def main() -> None:
    params = load_params()
    monitor, focus = params.monitor, params.shift.label_class
    check_permutations_for_holm(monitor.mmd_permutations, len(FEATURE_DETECTORS), monitor.alpha,
                                "monitor.mmd_permutations")
    with stage_run("monitor", params) as run:
        test = load_set("data/prepared/test.npz", hint="run `dvc repro prepare`")
        sets = {name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`")
                for name in DEPLOYMENT_SETS}
        reference, _ = load_features("data/reference/test.npz")
        views = deployment_views(load_view("data/reference/domain_b.npz"),
                                 load_view("data/features/b_covariate.npz"), sets)

        # The pixel-level tests dominate (logistic regressions, MMD permutations): one worker per core.
        pixel_tests = fork_map(lambda name: _pixel_tests(test.images, sets[name].images, params),
                               DEPLOYMENT_SETS)
        results = {}
        for name, extra in zip(DEPLOYMENT_SETS, pixel_tests):
            deployment, labels = views[name], sets[name].labels
            results[name] = {
                **run_detectors(reference, deployment, seed=params.seed, alpha=monitor.alpha,
                                mmd_permutations=monitor.mmd_permutations,
                                mmd_max_per_side=monitor.mmd_max_per_side, diagnostics=extra),
                "label_shift": label_shift_report(reference.probabilities, test.labels,
                                                  deployment.probabilities, focus,
                                                  monitor.trust_tolerance, true_labels=labels,
                                                  seed=params.seed),
                "accuracy": accuracy_report(reference.probabilities, test.labels,
                                            deployment.probabilities, true_labels=labels),
            }
            results[name]["mmd_images_tested"] = _tested(len(test), len(deployment), monitor.mmd_max_per_side)
            _print(name, results[name], focus)

        write_json("metrics/monitor.json", _headline(results, focus))
        write_json("metrics/monitor_details.json", results)
        estimates_vs_truth(results, focus, FIGURE)
        run.log_metric_tree("monitor", results)
        run.log_artifact("metrics/monitor_details.json")
        run.log_artifact(FIGURE, "plots")


def _tested(reference: int, deployment: int, cap: int | None) -> dict:
    """How many images per side the MMD tests saw (a seeded subsample above monitor.mmd_max_per_side)."""
    return {"reference": reference if cap is None else min(reference, cap),
            "deployment": deployment if cap is None else min(deployment, cap)}


def _pixel_tests(reference_images, images, params) -> dict:
    """Diagnostics that need the images themselves (MMD on pixels, the domain classifier):
    reported beside the verdict, not in it, so that `check` and `power` give the same verdict."""
    monitor = params.monitor
    return {"mmd_pixels": mmd_test(_flat(reference_images), _flat(images), seed=params.seed,
                                   n_permutations=monitor.mmd_permutations,
                                   max_per_side=monitor.mmd_max_per_side),
            "domain_classifier": domain_classifier_test(reference_images, images, monitor.classifier_samples,
                                                        params.seed)}


def _headline(results: dict, focus: int) -> dict:
    """Per shifted set: the verdict, the estimated focus-class share and whether to trust it,
    and the label-free accuracy estimate (ATC). Everything else is in monitor_details.json."""
    return {name: {"drift": results[name]["drift"],
                   f"class_{focus}_share_bbse": results[name]["label_shift"][f"class_{focus}_share_bbse"],
                   "estimate_untrustworthy": results[name]["label_shift"]["untrustworthy"],
                   "accuracy_atc": results[name]["accuracy"]["atc"]}
            for name in SHIFTED_SETS}


def _scalars(tree: dict) -> dict:
    """The metrics file keeps numbers only (DVC shows it as columns); lists go to the details file."""
    return {k: _scalars(v) if isinstance(v, dict) else v for k, v in tree.items()
            if isinstance(v, (dict, int, float))}


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def _print(name: str, result: dict, focus: int) -> None:
    shift, accuracy = result["label_shift"], result["accuracy"]
    print(f"monitor: {name:12s} {'DRIFT' if result['drift'] else 'no drift'} "
          f"({', '.join(result['alerting']) or 'none alerting'}); class {focus} share "
          f"true {shift[f'class_{focus}_share_true']:.3f} BBSE {shift[f'class_{focus}_share_bbse']:.3f} "
          f"EM {shift[f'class_{focus}_share_em']:.3f}{' (untrustworthy)' if shift['untrustworthy'] else ''}; "
          f"accuracy true {accuracy['true']:.3f} ATC {accuracy['atc']:.3f} "
          f"avg-conf {accuracy['average_confidence']:.3f}")


if __name__ == "__main__":
    run_stage("monitor", main)

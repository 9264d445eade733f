"""monitor: label-free, model-based monitoring of each deployment set against the held-out test set.

Reads params: seed, shift.label_class, detect.classifier_folds, evaluate.batch_size, monitor.
Writes metrics/monitor.json (every detector's p-value and one Holm verdict, estimated class mix
and accuracy next to the truth), data/monitor/<set>.npz (features reused by `power`), figures.
Deployment labels are read only to report the truth beside the estimates.
"""
import numpy as np

from shiftwatch import DEPLOYMENT_SETS
from shiftwatch.cli import run_stage
from shiftwatch.detectors import domain_classifier_test
from shiftwatch.io import load_set, rows_matching, write_json
from shiftwatch.model import load_model, pick_device, predict_with_embeddings
from shiftwatch.monitor import accuracy_report, features, label_shift_report, run_detectors, save_features
from shiftwatch.params import load_params
from shiftwatch.plots import estimates_vs_truth
from shiftwatch.tracking import stage_run
from shiftwatch.twosample import mmd_test

FIGURE = "metrics/plots/monitor_estimates.png"


def main() -> None:
    params = load_params()
    monitor, focus = params.monitor, params.shift.label_class
    model, device = load_model("models/resnet18.pt"), pick_device()
    test = load_set("data/prepared/test.npz", hint="run `dvc repro prepare`")
    sets = {name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`")
            for name in DEPLOYMENT_SETS}

    def view(image_set, name):
        probabilities, embeddings = predict_with_embeddings(model, image_set.images,
                                                            params.evaluate.batch_size, device,
                                                            desc=f"embed {name}")
        return features(image_set.images, probabilities, embeddings)

    reference = view(test, "test")
    views = {"b_raw": view(sets["b_raw"], "b_raw"), "b_covariate": view(sets["b_covariate"], "b_covariate")}
    for name, parent in (("b_label", "b_raw"), ("b_shift", "b_covariate")):
        views[name] = views[parent].subset(rows_matching(sets[name].source_index,
                                                         sets[parent].source_index))

    results = {}
    for name in DEPLOYMENT_SETS:
        deployment, labels = views[name], sets[name].labels
        extra = {
            "mmd_pixels": mmd_test(_flat(test.images), _flat(sets[name].images), seed=params.seed,
                                   n_permutations=monitor.mmd_permutations,
                                   max_per_side=monitor.mmd_max_per_side),
            "domain_classifier": domain_classifier_test(test.images, sets[name].images,
                                                        monitor.classifier_samples,
                                                        params.detect.classifier_folds, params.seed),
        }
        results[name] = {
            **run_detectors(reference, deployment, seed=params.seed, alpha=monitor.alpha,
                            mmd_permutations=monitor.mmd_permutations,
                            mmd_max_per_side=monitor.mmd_max_per_side, extra=extra),
            "label_shift": label_shift_report(reference.probabilities, test.labels,
                                              deployment.probabilities, focus,
                                              monitor.trust_tolerance, true_labels=labels),
            "accuracy": accuracy_report(reference.probabilities, test.labels,
                                        deployment.probabilities, true_labels=labels),
        }
        _print(name, results[name], focus)

    for name, view_ in {"test": reference, **views}.items():
        save_features(f"data/monitor/{name}.npz", view_,
                       test.labels if name == "test" else sets[name].labels)
    write_json("metrics/monitor.json", _scalars(results))
    write_json("metrics/monitor_details.json", results)
    estimates_vs_truth(results, focus, FIGURE)

    with stage_run("monitor", params, sections=("seed", "shift.label_class", "detect.classifier_folds",
                                                "evaluate.batch_size", "monitor")) as run:
        run.log_metric_tree("monitor", results)
        run.log_artifact("metrics/monitor.json")
        run.log_artifact("metrics/monitor_details.json")
        run.log_artifact(FIGURE, "plots")


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

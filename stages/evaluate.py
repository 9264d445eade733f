"""evaluate: what the shift does to the deployed model, set by set.

Reads params: shift.label_class (the class surfaced on top, 7 = sneaker), evaluate, registry
(the model's held-out test accuracy decides whether it becomes the registry's @champion).
Runs the network on b_covariate only (the one set whose images `reference` has not seen) and
writes its Features to data/features/b_covariate.npz for `monitor` and `mitigate`.
Writes metrics/evaluate.json (headline: accuracies, class-7 precision/recall/F1 on b_shift),
metrics/evaluate_details.json (every set, every class), confusion matrices (CSV for DVC plots, PNG).
"""

import numpy as np

from shiftwatch import CLASS_NAMES, DEPLOYMENT_SETS
from shiftwatch.core.io import atomic_path, load_set, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.plots import confusion_heatmap
from shiftwatch.core.stage import run_stage
from shiftwatch.core.workers import fork_map
from shiftwatch.estimation.metrics import classification_metrics, confusion
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import deployment_views, load_features, load_view, model_features, save_features
from shiftwatch.model.network import load_model, pick_device
from shiftwatch.tracking.runs import stage_run

COVARIATE_FEATURES = "data/features/b_covariate.npz"


def main() -> None:
    params = load_params()
    focus = params.shift.label_class
    with stage_run("evaluate", params) as run:
        sets = {name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`") for name in DEPLOYMENT_SETS}
        covariate = model_features(
            load_model(DEPLOYED_MODEL),
            sets["b_covariate"].images,
            params.evaluate.batch_size,
            pick_device(),
            params.evaluate.precision,
            desc="embed b_covariate",
        )
        save_features(COVARIATE_FEATURES, covariate, sets["b_covariate"].labels, sets["b_covariate"].source_index)
        views = deployment_views(
            load_view("data/reference/domain_b.npz"), (covariate, sets["b_covariate"].source_index), sets
        )
        evaluated = {name: _reference_predictions(name) for name in ("domain_a_train", "test")}
        evaluated.update({name: (sets[name].labels, views[name].probabilities.argmax(1)) for name in DEPLOYMENT_SETS})

        per_set = {
            name: classification_metrics(labels, predicted, focus) for name, (labels, predicted) in evaluated.items()
        }
        focus_key = f"class_{focus}"
        headline = {
            "accuracy": {
                name: per_set[name]["accuracy"]
                for name in ("domain_a_train", "test", "b_covariate", "b_label", "b_shift")
            },
            f"{focus_key}_b_shift": per_set["b_shift"][focus_key],
        }
        write_json("metrics/evaluate.json", headline)
        write_json("metrics/evaluate_details.json", per_set)
        figures = _write_confusions({k: v for k, v in evaluated.items() if k != "domain_a_train"})

        run.log_metric_tree(
            "evaluate", {name: {k: v for k, v in m.items() if k != "per_class"} for name, m in per_set.items()}
        )
        run.log_artifact("metrics/evaluate_details.json")
        run.log_dataset("data/reference/test.npz", "evaluation")
        for name in DEPLOYMENT_SETS:
            run.log_dataset(f"data/shifted/{name}.npz", "evaluation")
        run.promote_champion(
            DEPLOYED_MODEL,
            params.registry.model_name,
            per_set["test"]["accuracy"],
            params.registry.champion_tolerance_points,
            params.registry.promote_from,
        )
        for path in figures:
            run.log_artifact(path, "plots")
    for name, m in per_set.items():
        print(
            f"evaluate: {name:14s} accuracy {m['accuracy']:.4f}  class {focus} "
            f"P/R/F1 {m[focus_key]['precision']:.3f}/{m[focus_key]['recall']:.3f}/{m[focus_key]['f1']:.3f}"
        )


def _reference_predictions(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted) on a set `reference` already ran the model on."""
    view, labels = load_features(f"data/reference/{'domain_a' if name == 'domain_a_train' else name}.npz")
    return labels, view.probabilities.argmax(1)


def _write_confusions(evaluated: dict) -> list[str]:
    """Per-image (actual, predicted) CSVs for DVC's confusion template, and PNG heatmaps
    (drawn one set per core: matplotlib takes ~0.25 s a figure)."""

    def write(name: str) -> str:
        labels, predicted = evaluated[name]
        with atomic_path(f"metrics/confusion/{name}.csv") as tmp:
            rows = "\n".join(f"{CLASS_NAMES[a]},{CLASS_NAMES[p]}" for a, p in zip(labels, predicted))
            tmp.write_text("actual,predicted\n" + rows + "\n")
        figure = f"metrics/plots/confusion/{name}.png"
        confusion_heatmap(confusion(labels, predicted), f"Confusion matrix: {name}", figure)
        return figure

    return fork_map(write, list(evaluated))


if __name__ == "__main__":
    run_stage("evaluate", main)

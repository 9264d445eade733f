"""evaluate: what the shift does to the deployed model, set by set.

Reads params: shift.label_class (the class surfaced on top, 7 = sneaker), evaluate.
Writes metrics/evaluate.json (accuracies, class-7 precision/recall/F1), metrics/evaluate_per_class.json,
confusion matrices (CSV for DVC plots, PNG), data/predictions/<set>.npz.
"""
from shiftwatch import CLASS_NAMES, DEPLOYMENT_SETS
from shiftwatch.cli import run_stage
from shiftwatch.io import (Predictions, atomic_path, load_predictions, load_set, read_json,
                           rows_matching, save_predictions, write_json)
from shiftwatch.metrics import classification_metrics, confusion
from shiftwatch.model import load_model, pick_device, predict_set
from shiftwatch.params import load_params
from shiftwatch.plots import confusion_heatmap
from shiftwatch.tracking import stage_run


def main() -> None:
    params = load_params()
    focus = params.shift.label_class
    in_domain = read_json("metrics/train.json", hint="run `dvc repro train`")
    predictions = {"test": load_predictions("data/predictions/test.npz", hint="run `dvc repro train`"),
                   **_deployment_predictions(params.evaluate.batch_size)}
    for name in DEPLOYMENT_SETS:
        save_predictions(f"data/predictions/{name}.npz", predictions[name])
    evaluated = {name: (p.labels, p.predicted) for name, p in predictions.items()}

    per_set = {name: classification_metrics(labels, predicted, focus)
               for name, (labels, predicted) in evaluated.items()}
    focus_key = f"class_{focus}"
    summary = {
        "accuracy": {"domain_a_train": in_domain["accuracy_domain_a_train"],
                     **{name: m["accuracy"] for name, m in per_set.items()}},
        "accuracy_drop_test_to_b_shift": per_set["test"]["accuracy"] - per_set["b_shift"]["accuracy"],
        focus_key: {name: m[focus_key] for name, m in per_set.items()},
    }
    write_json("metrics/evaluate.json", summary)
    write_json("metrics/evaluate_per_class.json", {name: m["per_class"] for name, m in per_set.items()})
    figures = _write_confusions(evaluated)

    with stage_run("evaluate", params, sections=("shift.label_class", "evaluate")) as run:
        run.log_metric_tree("evaluate", summary)
        run.log_artifact("metrics/evaluate.json")
        run.log_artifact("metrics/evaluate_per_class.json")
        for path in figures:
            run.log_artifact(path, "plots")
    for name, m in per_set.items():
        print(f"evaluate: {name:12s} accuracy {m['accuracy']:.4f}  class {focus} "
              f"P/R/F1 {m[focus_key]['precision']:.3f}/{m[focus_key]['recall']:.3f}/{m[focus_key]['f1']:.3f}")


def _deployment_predictions(batch_size: int) -> dict[str, Predictions]:
    """Softmax outputs on the four deployment sets; only b_covariate goes through the network.

    b_raw is domain B, predicted once by `train`; b_label and b_shift are subsets of b_raw
    and b_covariate, so their predictions are rows of those.
    """
    domain_b = load_predictions("data/predictions/domain_b.npz", hint="run `dvc repro train`")
    sets = {name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`")
            for name in DEPLOYMENT_SETS}
    covariate = predict_set(load_model("models/resnet18.pt"), sets["b_covariate"], batch_size,
                            pick_device(), desc="predict b_covariate")
    return {
        "b_raw": domain_b.subset(rows_matching(sets["b_raw"].source_index, domain_b.source_index)),
        "b_covariate": covariate,
        "b_label": domain_b.subset(rows_matching(sets["b_label"].source_index, domain_b.source_index)),
        "b_shift": covariate.subset(rows_matching(sets["b_shift"].source_index, covariate.source_index)),
    }


def _write_confusions(evaluated: dict) -> list[str]:
    """Per-image (actual, predicted) CSVs for DVC's confusion template, and PNG heatmaps."""
    figures = []
    for name, (labels, predicted) in evaluated.items():
        with atomic_path(f"metrics/confusion/{name}.csv") as tmp:
            rows = "\n".join(f"{CLASS_NAMES[a]},{CLASS_NAMES[p]}" for a, p in zip(labels, predicted))
            tmp.write_text("actual,predicted\n" + rows + "\n")
        figure = f"metrics/plots/confusion_{name}.png"
        confusion_heatmap(confusion(labels, predicted), f"Confusion matrix: {name}", figure)
        figures.append(figure)
    return figures


if __name__ == "__main__":
    run_stage("evaluate", main)

"""mitigate: what each remedy buys on b_label, b_covariate and b_shift, without deployment labels.

Reads params: seed, shift.label_class, evaluate, mitigate.adabn_images, mitigate.review_threshold.
Reuses the deployed model's outputs (`reference`, `evaluate`) and the fine-tuned model of
`finetune`; runs the networks only where the shift changed the images (b_covariate) and for
AdaBN. Writes metrics/mitigate.json (headline: accuracy on b_shift per method),
metrics/mitigate_details.json (accuracy and class-7 P/R/F1 per set and method, costs),
metrics/mitigate_coverage.csv (selective prediction on b_shift, a DVC plot).
Deployment labels are read only to score the methods.
"""

import csv
import time

import numpy as np

from shiftwatch import SHIFTED_SETS
from shiftwatch.core.io import atomic_path, load_set, read_json, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.stage import run_stage
from shiftwatch.estimation.metrics import classification_metrics
from shiftwatch.estimation.mitigate import adapt_batchnorm, correct_label_shift, coverage_curve, selective_prediction
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import deployment_views, finetuned_outputs, load_features, load_view
from shiftwatch.model.network import load_model, pick_device, predict_proba
from shiftwatch.tracking.runs import stage_run

COVERAGE_CSV = "metrics/mitigate_coverage.csv"
METHODS = ("none", "label_shift_bbse", "label_shift_em", "adabn", "finetune_augmented")


def main() -> None:
    params = load_params()
    mitigate, focus = params.mitigate, params.shift.label_class
    batch, precision, device = params.evaluate.batch_size, params.evaluate.precision, pick_device()
    with stage_run("mitigate", params) as run:
        sets = {
            name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`")
            for name in ("b_raw", *SHIFTED_SETS)
        }
        views = deployment_views(
            load_view("data/reference/domain_b.npz"), load_view("data/features/b_covariate.npz"), sets
        )
        _, reference_labels = load_features("data/reference/test.npz")
        source_priors = np.bincount(reference_labels, minlength=10) / len(reference_labels)
        monitor = read_json("metrics/monitor_details.json", hint="run `dvc repro monitor`")
        model = load_model(DEPLOYED_MODEL)
        augmented = finetuned_outputs(sets, batch, device, precision)

        results, costs = {}, {}
        for name in SHIFTED_SETS:
            labels, probabilities = sets[name].labels, views[name].probabilities
            score = lambda predicted: _score(labels, predicted, focus)
            results[name] = {"none": score(probabilities.argmax(1))}
            # The prior correction assumes the images of each class did not change; where the
            # monitor flagged its class-mix estimate untrustworthy it is not applied (the
            # deployed model's predictions stand) and what it would have given is kept beside.
            trusted = not monitor[name]["label_shift"]["untrustworthy"]
            for estimator in ("bbse", "em"):
                estimated = np.asarray(monitor[name]["label_shift"][estimator])
                corrected = score(correct_label_shift(probabilities, source_priors, estimated))
                results[name][f"label_shift_{estimator}"] = (
                    {**corrected, "applied": 1}
                    if trusted
                    else {
                        **results[name]["none"],
                        "applied": 0,
                        "if_applied": corrected,
                        "reason": "monitor flagged the class-mix estimate untrustworthy",
                    }
                )
            # AdaBN is transductive: BatchNorm statistics from the batch it then predicts. Here the
            # batch is a seeded draw of at most mitigate.adabn_images images of the set, scored on
            # its own labels (n in the details), not the whole set: 3x less network time.
            started = time.perf_counter()
            rows = _seeded_rows(len(sets[name]), mitigate.adabn_images, params.seed)
            adapted = adapt_batchnorm(model, sets[name].images[rows], batch, device, precision)
            predicted = predict_proba(
                adapted, sets[name].images[rows], batch, device, desc=f"AdaBN {name}", precision=precision
            ).argmax(1)
            results[name]["adabn"] = {**_score(labels[rows], predicted, focus), "n": len(rows)}
            costs[f"adabn_{name}_seconds"] = time.perf_counter() - started
            results[name]["finetune_augmented"] = score(augmented[name].argmax(1))
            results[name]["selective"] = selective_prediction(probabilities, labels, mitigate.review_threshold)
            results[name]["selective_augmented"] = selective_prediction(
                augmented[name], labels, mitigate.review_threshold
            )
            _print(name, results[name], focus)

        _write_coverage(sets["b_shift"].labels, views["b_shift"].probabilities)
        write_json(
            "metrics/mitigate.json", {"b_shift_accuracy": {m: results["b_shift"][m]["accuracy"] for m in METHODS}}
        )
        write_json("metrics/mitigate_details.json", {**results, "cost": costs})
        run.log_metric_tree("mitigate", {**results, "cost": costs})
        run.log_artifact("metrics/mitigate_details.json")
        run.log_artifact(COVERAGE_CSV)


def _seeded_rows(size: int, limit: int, seed: int) -> np.ndarray:
    """All rows, or a seeded draw of `limit` of them (sorted)."""
    if size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, limit, replace=False))


def _score(labels, predicted, focus) -> dict:
    m = classification_metrics(labels, predicted, focus)
    return {"accuracy": m["accuracy"], **{f"class_{focus}_{k}": v for k, v in m[f"class_{focus}"].items()}}


def _write_coverage(labels, probabilities) -> None:
    with atomic_path(COVERAGE_CSV) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["coverage", "accuracy"])
        writer.writeheader()
        writer.writerows(coverage_curve(probabilities, labels))


def _print(name: str, result: dict, focus: int) -> None:
    for method, m in result.items():
        if m.get("applied") == 0:
            print(
                f"mitigate: {name:12s} {method:20s} not applied ({m['reason']}); would give accuracy "
                f"{m['if_applied']['accuracy']:.4f}, "
                f"class {focus} recall {m['if_applied'][f'class_{focus}_recall']:.3f}"
            )
        elif "accuracy" in m:
            print(
                f"mitigate: {name:12s} {method:20s} accuracy {m['accuracy']:.4f}  class {focus} "
                f"recall {m[f'class_{focus}_recall']:.3f} precision {m[f'class_{focus}_precision']:.3f}"
            )
        else:
            print(
                f"mitigate: {name:12s} {method:20s} flagged {m['flagged_share']:.3f}, "
                f"accuracy on the rest {m['accuracy_kept']}"
            )


if __name__ == "__main__":
    run_stage("mitigate", main)

"""mitigate: what each remedy buys on b_label, b_covariate and b_shift, without deployment labels.

Reads params: seed, shift.label_class, evaluate.batch_size, train.lr, train.batch_size, mitigate.
Writes metrics/mitigate.json (accuracy and class-7 P/R/F1 before and after each method, its cost),
metrics/mitigate_coverage.csv (selective prediction on b_shift, a DVC plot), models/resnet18_augmented.pt.
Deployment labels are read only to score the methods.
"""
import copy
import csv
import time

import numpy as np

from shiftwatch.cli import run_stage
from shiftwatch.io import atomic_path, load_set, read_json, write_json
from shiftwatch.metrics import classification_metrics
from shiftwatch.mitigate import (adapt_batchnorm, augment_images, correct_label_shift, coverage_curve,
                                 oversample_rows, selective_prediction)
from shiftwatch.model import load_model, pick_device, predict_proba, save_state_dict, train
from shiftwatch.monitor import load_features
from shiftwatch.params import load_params
from shiftwatch.tracking import stage_run

SETS = ("b_label", "b_covariate", "b_shift")
COVERAGE_CSV = "metrics/mitigate_coverage.csv"


def main() -> None:
    params = load_params()
    mitigate, focus, batch = params.mitigate, params.shift.label_class, params.evaluate.batch_size
    device = pick_device()
    model = load_model("models/resnet18.pt")
    _, reference_labels = load_features("data/monitor/test.npz")
    source_priors = np.bincount(reference_labels, minlength=10) / len(reference_labels)
    monitor = _monitor_details()
    sets = {name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`") for name in SETS}
    outputs = {name: load_features(f"data/monitor/{name}.npz")[0] for name in SETS}

    started = time.perf_counter()
    augmented_model = _finetune_augmented(model, params)
    finetune_seconds = time.perf_counter() - started

    results, costs = {}, {"finetune_augmented_seconds": finetune_seconds}
    for name in SETS:
        labels, probabilities = sets[name].labels, outputs[name].probabilities
        score = lambda predicted: _score(labels, predicted, focus)  # noqa: E731
        results[name] = {"none": score(probabilities.argmax(1))}
        for estimator in ("bbse", "em"):
            estimated = np.asarray(monitor[name]["label_shift"][estimator])
            results[name][f"label_shift_{estimator}"] = score(
                correct_label_shift(probabilities, source_priors, estimated))
        started = time.perf_counter()
        adapted = adapt_batchnorm(model, sets[name].images, batch, device)
        results[name]["adabn"] = score(predict_proba(adapted, sets[name].images, batch, device,
                                                     desc=f"AdaBN {name}").argmax(1))
        costs[f"adabn_{name}_seconds"] = time.perf_counter() - started
        augmented = predict_proba(augmented_model, sets[name].images, batch, device,
                                  desc=f"augmented model {name}")
        results[name]["finetune_augmented"] = score(augmented.argmax(1))
        results[name]["selective"] = selective_prediction(probabilities, labels, mitigate.review_threshold)
        results[name]["selective_augmented"] = selective_prediction(augmented, labels,
                                                                    mitigate.review_threshold)
        _print(name, results[name], focus)

    save_state_dict(augmented_model, "models/resnet18_augmented.pt")
    _write_coverage(sets["b_shift"].labels, outputs["b_shift"].probabilities)
    write_json("metrics/mitigate.json", {**results, "cost": costs})

    with stage_run("mitigate", params, sections=("seed", "shift.label_class", "evaluate.batch_size",
                                                 "train.lr", "train.batch_size", "mitigate")) as run:
        run.log_metric_tree("mitigate", {**results, "cost": costs})
        run.log_artifact("metrics/mitigate.json")
        run.log_artifact(COVERAGE_CSV)


def _finetune_augmented(model, params):
    """Fine-tune a copy on domain A only (no deployment images or labels) with random blur and
    brightness, optionally oversampling the label-shift class."""
    mitigate = params.mitigate
    domain_a = load_set("data/prepared/domain_a.npz", hint="run `dvc repro prepare`")
    rows = oversample_rows(domain_a.labels, params.shift.label_class, mitigate.oversample_factor,
                           params.seed)
    images = augment_images(domain_a.images[rows], mitigate.augment_downsample,
                            tuple(mitigate.augment_brightness), params.seed)
    tuned = copy.deepcopy(model)
    train(tuned, images, domain_a.labels[rows], epochs=mitigate.finetune_epochs,
          batch_size=params.train.batch_size, lr=params.train.lr, seed=params.seed, device=pick_device())
    return tuned


def _score(labels, predicted, focus) -> dict:
    m = classification_metrics(labels, predicted, focus)
    return {"accuracy": m["accuracy"], **{f"class_{focus}_{k}": v for k, v in m[f"class_{focus}"].items()}}


def _monitor_details() -> dict:
    return read_json("metrics/monitor_details.json", hint="run `dvc repro monitor`")


def _write_coverage(labels, probabilities) -> None:
    with atomic_path(COVERAGE_CSV) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["coverage", "accuracy"])
        writer.writeheader()
        writer.writerows(coverage_curve(probabilities, labels))


def _print(name: str, result: dict, focus: int) -> None:
    for method, m in result.items():
        if "accuracy" in m:
            print(f"mitigate: {name:12s} {method:20s} accuracy {m['accuracy']:.4f}  class {focus} "
                  f"recall {m[f'class_{focus}_recall']:.3f} precision {m[f'class_{focus}_precision']:.3f}")
        else:
            print(f"mitigate: {name:12s} {method:20s} flagged {m['flagged_share']:.3f}, "
                  f"accuracy on the rest {m['accuracy_kept']}")


if __name__ == "__main__":
    run_stage("mitigate", main)

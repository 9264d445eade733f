"""train: ResNet-18 on domain A, then its predictions on the sets the shift never touches.

Reads params: seed, train, evaluate.batch_size. Writes models/resnet18.pt (state_dict),
metrics/train.json (in-domain accuracies), metrics/train_history.csv, and the softmax outputs
on domain A, the held-out test set and domain B (= b_raw) in data/predictions/, so that
changing shift.* only re-predicts the shifted images.
"""
import csv
import time

import numpy as np

from shiftwatch.cli import run_stage
from shiftwatch.io import atomic_path, load_set, save_predictions, write_json
from shiftwatch.model import build_resnet18, pick_device, predict_set, save_state_dict, train
from shiftwatch.params import load_params
from shiftwatch.tracking import stage_run

MODEL = "models/resnet18.pt"
HISTORY = "metrics/train_history.csv"
PREDICTED_SETS = ("domain_a", "test", "domain_b")


def main() -> None:
    params = load_params()
    sets = {name: load_set(f"data/prepared/{name}.npz", hint="run `dvc repro prepare`")
            for name in PREDICTED_SETS}
    device = pick_device()
    model = build_resnet18(params.train.weights, seed=params.seed)
    domain_a = sets["domain_a"]

    started = time.perf_counter()
    history = train(model, domain_a.images, domain_a.labels, epochs=params.train.epochs,
                    batch_size=params.train.batch_size, lr=params.train.lr, seed=params.seed,
                    device=device)
    train_seconds = time.perf_counter() - started
    predictions = {name: predict_set(model, image_set, params.evaluate.batch_size, device,
                                     desc=f"predict {name}")
                   for name, image_set in sets.items()}
    accuracy = {name: float(np.mean(p.predicted == p.labels)) for name, p in predictions.items()}
    summary = {
        # On A's own training images: the study's "in-domain" number, optimistic by construction.
        "accuracy_domain_a_train": accuracy["domain_a"],
        # On the official test images the model never saw: the honest in-domain number.
        "accuracy_test": accuracy["test"],
        "final_loss": history[-1]["loss"],
        "train_seconds": train_seconds,
        "images_per_second": float(np.median([row["images_per_second"] for row in history])),
    }

    save_state_dict(model, MODEL)
    for name, p in predictions.items():
        save_predictions(f"data/predictions/{name}.npz", p)
    with atomic_path(HISTORY) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    write_json("metrics/train.json", summary)

    with stage_run("train", params, sections=("seed", "train", "evaluate.batch_size")) as run:
        run.set_tag("device", device.type)
        for row in history:
            run.log_metrics({f"train.epoch_{k}": v for k, v in row.items() if k != "epoch"},
                            step=row["epoch"])
        run.log_metric_tree("train", summary)
        run.log_artifact(HISTORY)
        run.log_model(model.cpu(), input_example=domain_a.images[:2, None])
    print(f"train: {params.train.epochs} epochs in {train_seconds:.0f} s on {device.type}; "
          f"accuracy on A (training) {accuracy['domain_a']:.4f}, on held-out test {accuracy['test']:.4f}")


if __name__ == "__main__":
    run_stage("train", main)

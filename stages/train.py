"""train: ResNet-18 on domain A. Nothing else: predictions belong to `reference`.

Reads params: train (train.seed seeds initialisation and shuffling; the data seed is not read),
registry.model_name. Writes models/resnet18.pt (state_dict), metrics/train.json (final loss and
accuracy on the fly), metrics/train_history.csv (per epoch, with images/s). Registers the model
in MLflow's model registry (a new version unless one with the same md5 exists).
"""

import csv
import time

from shiftwatch.core.io import atomic_path, load_set, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.stage import run_stage
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.network import build_resnet18, pick_device, save_state_dict, train
from shiftwatch.tracking.runs import stage_run

HISTORY = "metrics/train_history.csv"


def main() -> None:
    params = load_params()
    with stage_run("train", params) as run:
        domain_a = load_set("data/prepared/domain_a.npz", hint="run `dvc repro prepare`")
        device = pick_device()
        model = build_resnet18(params.train.weights, seed=params.train.seed)
        started = time.perf_counter()
        history = train(
            model,
            domain_a.images,
            domain_a.labels,
            epochs=params.train.epochs,
            batch_size=params.train.batch_size,
            lr=params.train.lr,
            seed=params.train.seed,
            device=device,
            precision=params.train.precision,
        )
        train_seconds = time.perf_counter() - started

        save_state_dict(model, DEPLOYED_MODEL)
        with atomic_path(HISTORY) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)
        # Headline only (a DVC metric): timings vary by machine and stay in MLflow.
        write_json(
            "metrics/train.json",
            {"final_loss": history[-1]["loss"], "final_accuracy_on_the_fly": history[-1]["accuracy"]},
        )

        run.set_tag("device", device.type)
        for row in history:
            run.log_metrics({f"train.epoch_{k}": v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        run.log_metrics({"train.seconds": train_seconds, "train.final_loss": history[-1]["loss"]})
        run.log_artifact(HISTORY)
        run.log_model(model.cpu(), input_example=domain_a.images[:2, None])
        run.log_dataset("data/prepared/domain_a.npz", "training")
        run.register_model(DEPLOYED_MODEL, params.registry.model_name)
    print(
        f"train: {params.train.epochs} epochs in {train_seconds:.0f} s on {device.type} "
        f"({history[-1]['images_per_second']:.0f} images/s), final loss {history[-1]['loss']:.4f}"
    )


if __name__ == "__main__":
    run_stage("train", main)

"""finetune: a remedy trained once per model, not per shift experiment.

Fine-tunes a copy of the deployed model on domain A only (no deployment images, no labels of
them) with shift-aware augmentation: each image gets a random blur (downsample to one of
`mitigate.augment_downsample` px and back) and a random brightness offset; class
`shift.label_class` is oversampled `mitigate.oversample_factor` times (1 = off).
Reads params: train.seed, shift.label_class, train.lr, train.batch_size, train.precision, evaluate,
mitigate.finetune_epochs,
mitigate.augment_*, mitigate.oversample_factor. Writes models/resnet18_augmented.pt and its
softmax outputs on domain B (b_raw; b_label is a subset) in data/finetuned/domain_b.npz.
"""

import copy
import time

from shiftwatch.core.io import load_set, save_predictions
from shiftwatch.core.params import load_params
from shiftwatch.core.stage import run_stage
from shiftwatch.estimation.mitigate import augment_images, oversample_rows
from shiftwatch.model import DEPLOYED_MODEL, FINETUNED_MODEL
from shiftwatch.model.network import load_model, pick_device, predict_set, save_state_dict, train
from shiftwatch.tracking.runs import stage_run


def main() -> None:
    params = load_params()
    mitigate = params.mitigate
    with stage_run("finetune", params) as run:
        domain_a = load_set("data/prepared/domain_a.npz", hint="run `dvc repro prepare`")
        domain_b = load_set("data/prepared/domain_b.npz", hint="run `dvc repro prepare`")
        rows = oversample_rows(domain_a.labels, params.shift.label_class, mitigate.oversample_factor, params.train.seed)
        images = augment_images(
            domain_a.images[rows], mitigate.augment_downsample, tuple(mitigate.augment_brightness), params.train.seed
        )
        device = pick_device()
        tuned = copy.deepcopy(load_model(DEPLOYED_MODEL))
        started = time.perf_counter()
        history = train(
            tuned,
            images,
            domain_a.labels[rows],
            epochs=mitigate.finetune_epochs,
            batch_size=params.train.batch_size,
            lr=params.train.lr,
            seed=params.train.seed,
            device=device,
            precision=params.train.precision,
        )
        seconds = time.perf_counter() - started
        save_state_dict(tuned, FINETUNED_MODEL)
        save_predictions(
            "data/finetuned/domain_b.npz",
            predict_set(
                tuned,
                domain_b,
                params.evaluate.batch_size,
                device,
                desc="augmented model on domain B",
                precision=params.evaluate.precision,
            ),
        )
        run.log_metrics({"finetune.seconds": seconds, "finetune.final_loss": history[-1]["loss"]})
    print(
        f"finetune: {mitigate.finetune_epochs} epoch(s) on augmented domain A in {seconds:.0f} s, "
        f"final loss {history[-1]['loss']:.4f}"
    )


if __name__ == "__main__":
    run_stage("finetune", main)

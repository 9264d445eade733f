"""shift: build the four deployment sets from domain B only.

Reads params: seed, shift. Writes data/shifted/{b_raw,b_covariate,b_label,b_shift}.npz,
metrics/shift.json (sizes, class shares, mean pixel), metrics/plots/samples.png.
"""

from pathlib import Path

import numpy as np

from shiftwatch import CLASS_NAMES, NUM_CLASSES
from shiftwatch.core.io import atomic_folder, load_set, save_set, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.plots import sample_grid
from shiftwatch.core.stage import run_stage
from shiftwatch.data.shift import make_deployment_sets
from shiftwatch.tracking.runs import stage_run

OUT = Path("data/shifted")
SAMPLES_PNG = "metrics/plots/samples.png"


def main() -> None:
    params = load_params()
    shift = params.shift
    with stage_run("shift", params) as run:
        domain_a = load_set("data/prepared/domain_a.npz", hint="run `dvc repro prepare`")
        domain_b = load_set("data/prepared/domain_b.npz", hint="run `dvc repro prepare`")
        deployment = make_deployment_sets(
            domain_b, shift.downsample, shift.brightness, shift.label_class, shift.label_keep, params.seed
        )
        summary = {
            name: {
                "n": len(s),
                f"class_{shift.label_class}_share": float(np.mean(s.labels == shift.label_class)),
                "mean_pixel": float(s.images.mean()),
            }
            for name, s in deployment.items()
        }
        with atomic_folder(OUT) as folder:  # all the sets, or the previous ones
            for name, image_set in deployment.items():
                save_set(folder / f"{name}.npz", image_set, as_uint8=(name in ("b_raw", "b_label")))
        write_json("metrics/shift.json", summary)
        _draw_samples(domain_a, deployment, params.seed)

        run.log_metric_tree("shift", summary)
        run.log_artifact("metrics/shift.json")
        run.log_artifact(SAMPLES_PNG, "plots")
    print("shift: " + ", ".join(f"{name} {len(s):,}" for name, s in deployment.items()) + " images")


def _draw_samples(domain_a, deployment, seed: int) -> None:
    """One image per class: a random A image, and the same B image before and after the shift."""
    rng = np.random.default_rng(seed)
    b_label, b_shift = deployment["b_label"], deployment["b_shift"]
    rows_a = [
        rng.choice(np.flatnonzero(domain_a.labels == c)) for c in range(NUM_CLASSES) if (domain_a.labels == c).any()
    ]
    rows_b = [
        rng.choice(np.flatnonzero(b_label.labels == c)) for c in range(NUM_CLASSES) if (b_label.labels == c).any()
    ]
    sample_grid(
        {"A": domain_a.images[rows_a], "B_raw": b_label.images[rows_b], "B_shift": b_shift.images[rows_b]},
        titles=[CLASS_NAMES[b_label.labels[r]] for r in rows_b],
        path=SAMPLES_PNG,
    )


if __name__ == "__main__":
    run_stage("shift", main)

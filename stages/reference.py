"""reference: what the deployed model makes of the images no shift touches, computed once.

Reads params: evaluate (batch size, precision). Writes data/reference/{test,domain_a,domain_b}.npz:
per image the softmax outputs, penultimate-layer embeddings and image statistics (`Features`),
with labels, source indices and the md5 of the model that made them (`check` refuses a reference
made by another model). The test set is the monitoring reference (`monitor`, `check`);
domain B is b_raw, and b_label is a subset of it, so shift experiments never run the network
on unshifted images; domain A's own training images give the study's "in-domain" accuracy.
"""

import numpy as np

from shiftwatch.core.io import load_set
from shiftwatch.core.lineage import file_md5
from shiftwatch.core.params import load_params
from shiftwatch.core.stage import run_stage
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import model_features, save_features
from shiftwatch.model.network import load_model, pick_device
from shiftwatch.tracking.runs import stage_run

SETS = ("test", "domain_a", "domain_b")


def main() -> None:
    params = load_params()
    with stage_run("reference", params) as run:
        model, device = load_model(DEPLOYED_MODEL), pick_device()
        model_md5 = file_md5(DEPLOYED_MODEL)  # `check` refuses this reference with any other model
        accuracy = {}
        for name in SETS:
            image_set = load_set(f"data/prepared/{name}.npz", hint="run `dvc repro prepare`")
            view = model_features(
                model,
                image_set.images,
                params.evaluate.batch_size,
                device,
                params.evaluate.precision,
                desc=f"embed {name}",
            )
            save_features(
                f"data/reference/{name}.npz", view, image_set.labels, image_set.source_index, model_md5=model_md5
            )
            accuracy[name] = float(np.mean(view.probabilities.argmax(1) == image_set.labels))
        run.log_metric_tree("reference.accuracy", accuracy)
    print("reference: accuracy " + ", ".join(f"{name} {a:.4f}" for name, a in accuracy.items()))


if __name__ == "__main__":
    run_stage("reference", main)

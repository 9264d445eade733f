"""prepare: real FashionMNIST -> domain A (training), domain B (deployment), held-out test.

Reads params: seed, data. Writes data/prepared/{domain_a,domain_b,test}.npz,
metrics/prepare.json (sizes and A-vs-B similarity checks), metrics/class_counts.json.
"""

from pathlib import Path

import numpy as np

from shiftwatch import NUM_CLASSES
from shiftwatch.core.io import atomic_folder, save_set, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.stage import run_stage
from shiftwatch.data.fashion_mnist import DEBIAN_DIR, find_source, load_fashion_mnist, split_domains, subsample
from shiftwatch.detection.basic import ks_test, label_proportion_test, mean_pixel
from shiftwatch.tracking.runs import stage_run

OUT = Path("data/prepared")


def main() -> None:
    params = load_params()
    with stage_run("prepare", params) as run:
        source = find_source(params.data.source, download_root=Path("data/raw"))
        train, test = load_fashion_mnist(source)
        train = subsample(train, params.data.max_train_images, params.seed)
        test = subsample(test, params.data.max_test_images, params.seed)
        domain_a, domain_b = split_domains(train, params.data.domain_b_fraction, params.seed)

        labels_alike = label_proportion_test(domain_a.labels, domain_b.labels, NUM_CLASSES)
        pixels_alike = ks_test(mean_pixel(domain_a.images), mean_pixel(domain_b.images))
        summary = {
            "n": {"domain_a": len(domain_a), "domain_b": len(domain_b), "test": len(test)},
            "overlap_a_b": int(np.intersect1d(domain_a.source_index, domain_b.source_index).size),
            "a_vs_b": {
                "label_chi2": labels_alike.statistic,
                "label_chi2_pvalue": labels_alike.pvalue,
                "ks_mean_pixel": pixels_alike.statistic,
                "ks_mean_pixel_pvalue": pixels_alike.pvalue,
            },
        }
        class_counts = {
            name: np.bincount(s.labels, minlength=NUM_CLASSES).tolist()
            for name, s in (("domain_a", domain_a), ("domain_b", domain_b), ("test", test))
        }

        with atomic_folder(OUT) as folder:  # all the sets, or the previous ones
            for name, image_set in (("domain_a", domain_a), ("domain_b", domain_b), ("test", test)):
                save_set(folder / f"{name}.npz", image_set, as_uint8=True)
        write_json("metrics/prepare.json", summary)
        write_json("metrics/class_counts.json", class_counts)

        run.set_tag(
            "data.source_used",
            "debian-package"
            if source == DEBIAN_DIR
            else ("data.source" if params.data.source else "torchvision-download"),
        )
        run.log_metric_tree("prepare", summary)
        run.log_artifact("metrics/prepare.json")
        run.log_artifact("metrics/class_counts.json")
    print(
        f"prepare: domain A {len(domain_a):,}, domain B {len(domain_b):,}, test {len(test):,} images; "
        f"A vs B labels chi2 p={labels_alike.pvalue:.3f}, mean-pixel KS p={pixels_alike.pvalue:.3f}"
    )


if __name__ == "__main__":
    run_stage("prepare", main)

"""detect: is each deployment set different from domain A? No model, no labels.

Reads params: seed, detect. Writes metrics/detect.json (headline: KS, KL, AUC and verdict per shifted set),
metrics/detect_details.json (everything, b_raw too, and under "registered" every model-free
detector of shiftwatch.detection.registry with its own uncorrected p-value: they do not enter this
stage's verdict, which is the study's), histograms in metrics/plots/mean_pixel/.
"""

from shiftwatch import DEPLOYMENT_SETS, SHIFTED_SETS
from shiftwatch.core.io import load_set, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.plots import mean_pixel_histogram
from shiftwatch.core.stage import run_stage
from shiftwatch.core.workers import fork_map
from shiftwatch.detection.basic import detect_drift, mean_pixel
from shiftwatch.detection.registry import DETECTORS, Settings, bound
from shiftwatch.model.features import image_features
from shiftwatch.tracking.runs import stage_run

# Headline numbers (DVC metrics, MLflow parent) per shifted set; b_raw, p-values and the
# per-detector verdicts are in metrics/detect_details.json.
HEADLINE = ("ks_statistic", "kl_divergence", "domain_auc", "drift")
HISTOGRAM = "metrics/plots/mean_pixel/{name}.png"
MODEL_FREE = tuple(name for name, d in DETECTORS.items() if d.consumes in ("pixels", "image_stats"))


def main() -> None:
    params = load_params()
    detect, thresholds = params.detect, params.detect.thresholds
    with stage_run("detect", params) as run:
        domain_a = load_set("data/prepared/domain_a.npz", hint="run `dvc repro prepare`")
        deployment = {
            name: load_set(f"data/shifted/{name}.npz", hint="run `dvc repro shift`").images for name in DEPLOYMENT_SETS
        }
        # The four comparisons (with their histograms) are independent: one worker per core.
        # Workers run BLAS single-threaded, which moves AUCs by ~1e-5 against a serial run, reproducibly.
        reference_means = mean_pixel(domain_a.images)
        reference_view = image_features(domain_a.images)
        registered = bound(MODEL_FREE, Settings(seed=params.seed))

        def compare(name: str):
            report = detect_drift(
                domain_a.images,
                deployment[name],
                bins=detect.bins,
                smoothing=detect.smoothing,
                classifier_samples=detect.classifier_samples,
                seed=params.seed,
                alpha=thresholds.alpha,
                kl_threshold=thresholds.kl,
                auc_threshold=thresholds.auc,
            )
            _histogram(reference_means, name, deployment[name], report.kl.statistic, detect.bins)
            view = image_features(deployment[name])
            return report, {d: test(reference_view, view).as_dict() for d, test in registered.items()}

        compared = fork_map(compare, DEPLOYMENT_SETS)
        reports = [report for report, _ in compared]
        results = {
            name: {**report.as_metrics(), "registered": others}
            for name, (report, others) in zip(DEPLOYMENT_SETS, compared)
        }
        for name, report in zip(DEPLOYMENT_SETS, reports):
            print(
                f"detect: A vs {name}: KS={report.ks.statistic:.4f} (p={report.ks.pvalue:.3g}), "
                f"KL={report.kl.statistic:.4f}, AUC={report.domain_classifier.statistic:.3f} "
                f"(p={report.domain_classifier.pvalue:.3g}) -> {'DRIFT' if report.drift else 'no drift'}"
            )

        write_json("metrics/detect_details.json", results)
        write_json(
            "metrics/detect.json", {name: {key: results[name][key] for key in HEADLINE} for name in SHIFTED_SETS}
        )
        run.log_metric_tree("detect", results)
        run.log_artifact("metrics/detect_details.json")
        for name in DEPLOYMENT_SETS:
            run.log_artifact(HISTOGRAM.format(name=name), "plots")


def _histogram(reference_means, name: str, images, kl: float, bins: int) -> None:
    mean_pixel_histogram(
        reference_means,
        mean_pixel(images),
        bins,
        ("domain A", name),
        f"Mean pixel intensity: A vs {name} (KL={kl:.3f})",
        HISTOGRAM.format(name=name),
    )


if __name__ == "__main__":
    run_stage("detect", main)

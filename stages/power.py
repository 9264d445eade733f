"""power: how often each detector alarms on a healthy stream, and how many images it needs.

Reads params: seed, monitor.alpha, evaluate.batch_size, power. Reuses the model outputs that
`monitor` saved (the network runs once per image, never per repetition), plus the model on a
seeded pool of B_raw images at each extra covariate severity and on a pool of A's training images.
Writes metrics/power.json, metrics/power/<stream>.csv (DVC plots), metrics/plots/power.png.
"""
import csv

import numpy as np
from joblib import Parallel, delayed

from shiftwatch.cli import run_stage
from shiftwatch.io import atomic_path, load_set, write_json
from shiftwatch.model import load_model, pick_device, predict_with_embeddings
from shiftwatch.monitor import FEATURE_DETECTORS, Features, feature_detector, features, load_features
from shiftwatch.params import load_params
from shiftwatch.plots import power_curves
from shiftwatch.power import detection_rates, false_alarm_rates
from shiftwatch.shift import degrade_images
from shiftwatch.tracking import stage_run

FIGURE = "metrics/plots/power.png"


def main() -> None:
    params = load_params()
    power = params.power
    view = _model_view(params)
    reference = _load_features("test")
    null_streams = {"b_raw": _load_features("b_raw"), "domain_a_train": _domain_a_pool(params, view)}
    shift_streams = {name: _load_features(name) for name in ("b_covariate", "b_label", "b_shift")}
    shift_streams.update(_severity_pools(params, view))

    detectors = {name: feature_detector(name, seed=params.seed, mmd_permutations=power.mmd_permutations,
                                        mmd_max_per_side=power.mmd_max_per_side)
                 for name in FEATURE_DETECTORS}
    jobs = [(kind, name, stream) for kind, streams in (("false_alarms", null_streams),
                                                       ("detection", shift_streams))
            for name, stream in streams.items()]
    # Streams are independent and the tests mostly single-threaded: one worker per core.
    all_rates = Parallel(n_jobs=2)(delayed(_stream_rates)(kind, name, stream, reference, detectors, params)
                                   for kind, name, stream in jobs)
    results = {"false_alarms": {}, "detection": {}}
    for (kind, name, _), rates in zip(jobs, all_rates):
        results[kind][name] = {d: {str(p.n): _point(p) for p in points} for d, points in rates.items()}
        _write_csv(f"metrics/power/{name}.csv", rates)

    write_json("metrics/power.json", results)
    power_curves(results, params.monitor.alpha, FIGURE)
    with stage_run("power", params, sections=("seed", "monitor.alpha", "evaluate.batch_size", "power")) as run:
        run.log_metric_tree("power", {kind: {s: {d: {n: p["rate"] for n, p in points.items()}
                                                 for d, points in by_detector.items()}
                                             for s, by_detector in streams.items()}
                                      for kind, streams in results.items()})
        run.log_artifact("metrics/power.json")
        run.log_artifact(FIGURE, "plots")


def _stream_rates(kind: str, name: str, stream: Features, reference: Features, detectors: dict,
                  params) -> dict:
    sizes = [n for n in params.power.sizes if n <= len(stream)]  # no draws with replacement
    print(f"power: {kind} on {name} ({len(stream):,} images), n = {sizes}", flush=True)
    estimate = false_alarm_rates if kind == "false_alarms" else detection_rates
    return estimate(np.arange(len(reference)), np.arange(len(stream)), _on_rows(reference, stream, detectors),
                    sizes, params.power.repetitions, alpha=params.monitor.alpha, seed=params.seed)


def _on_rows(reference: Features, stream: Features, detectors: dict) -> dict:
    """The power routines draw row indices; each detector looks its features up. The reference
    is used whole (no copy) when all its rows are drawn."""
    def bind(detector):
        def on_rows(ref_rows, dep_rows):
            ref = reference if len(ref_rows) == len(reference) else reference.subset(ref_rows)
            return detector(ref, stream.subset(dep_rows))
        return on_rows
    return {name: bind(detector) for name, detector in detectors.items()}


def _load_features(name: str) -> Features:
    return load_features(f"data/monitor/{name}.npz")[0]


def _model_view(params):
    """images -> Features through the trained model (for pools the pipeline has no set for)."""
    model, device = load_model("models/resnet18.pt"), pick_device()

    def view(images, name):
        probabilities, embeddings = predict_with_embeddings(model, images, params.evaluate.batch_size,
                                                            device, desc=f"embed {name}")
        return features(images, probabilities, embeddings)
    return view


def _seeded_pool(images, size: int, seed: int):
    return images[np.random.default_rng(seed).choice(len(images), min(size, len(images)), replace=False)]


def _domain_a_pool(params, view) -> Features:
    """A's own training images: a healthy stream that shows why the reference must be held out."""
    domain_a = load_set("data/prepared/domain_a.npz", hint="run `dvc repro prepare`")
    return view(_seeded_pool(domain_a.images, params.power.pool, params.seed), "domain_a pool")


def _severity_pools(params, view) -> dict[str, Features]:
    """B_raw images at each extra covariate severity (brightness alone, blur alone)."""
    b_raw = load_set("data/shifted/b_raw.npz", hint="run `dvc repro shift`")
    pool = _seeded_pool(b_raw.images, params.power.pool, params.seed)
    severities = {f"brightness_{b:g}": (28, b) for b in params.power.brightness_levels}
    severities.update({f"downsample_{d}": (d, 0.0) for d in params.power.downsample_levels})
    return {name: view(degrade_images(pool, downsample, brightness), name)
            for name, (downsample, brightness) in severities.items()}


def _point(p) -> dict:
    point = {"rate": p.rate, "ci_low": p.ci_low, "ci_high": p.ci_high}
    if hasattr(p, "miscalibrated"):
        point["miscalibrated"] = int(p.miscalibrated)
    return point


def _write_csv(path: str, rates: dict) -> None:
    """One row per sample size, one column per detector: DVC's linear template draws it."""
    names = list(rates)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["n", *names])
        for i, point in enumerate(rates[names[0]]):
            writer.writerow([point.n, *(f"{rates[d][i].rate:.3f}" for d in names)])


if __name__ == "__main__":
    run_stage("power", main)

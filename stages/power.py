"""power: how often each detector alarms on a healthy stream, and how many images it needs to
see a shift of known severity. A property of the model and the detectors, run once per model:
it reads no `shift.*` setting except the class that the label-shift streams thin out.

Protocol (Rabanser et al. 2019, "Failing Loudly"): the pool is every in-distribution image the
model never trained on, the 10,000 test images and the 18,000 of domain B. Each repetition
draws a fresh reference of n pool images and a fresh deployment sample of n other pool
images (disjoint), with its own seed for the detectors' permutations. Shifted streams apply
the shift to the deployment draw: the model ran once per pool image and severity (never per
repetition), and a draw looks its rows up. Streams: false alarms on no_shift (the null) and on
domain_a_train (the model's own training images as deployment: not a null, the reason the
reference must be held out); detection on brightness_<b>, downsample_<d> and label_keep_<k>
(pool images with only share k of class shift.label_class kept).

Reads params: seed, shift.label_class, evaluate, monitor.alpha, power.
Writes metrics/power.json (headline: worst false-alarm rate per detector on no_shift, smallest
n with power >= 0.9 per stream), metrics/power_details.json (every rate with its Wilson
interval, repetitions and the multiplicity-corrected miscalibration flag), metrics/power/<stream>.csv
(DVC plots), metrics/plots/power.png.
"""
import csv

import numpy as np

from shiftwatch import ShiftwatchError
from shiftwatch.cli import run_stage
from shiftwatch.features import Features, load_features, model_features
from shiftwatch.io import atomic_path, load_set, write_json
from shiftwatch.model import load_model, pick_device
from shiftwatch.monitor import FEATURE_DETECTORS, feature_detector
from shiftwatch.params import load_params
from shiftwatch.plots import power_curves
from shiftwatch.power import (COMBINED, calibration_flags, independent_alarm_rates, pool_sampler,
                              separate_sampler)
from shiftwatch.shift import degrade_images
from shiftwatch.tracking import stage_run
from shiftwatch.twosample import check_permutations_for_holm
from shiftwatch.workers import fork_map

FIGURE = "metrics/plots/power.png"
TARGET_POWER = 0.9
NULL_STREAM = "no_shift"


def main() -> None:
    params = load_params()
    power = params.power
    check_permutations_for_holm(power.mmd_permutations, len(FEATURE_DETECTORS), params.monitor.alpha,
                                "power.mmd_permutations")
    with stage_run("power", params) as run:
        pool, labels, images = _pool()
        largest = max(power.sizes)
        if 2 * largest > len(pool):
            raise ShiftwatchError(f"power.sizes: n = {largest} needs 2n = {2 * largest:,} disjoint pool "
                                  f"images, the pool has {len(pool):,}; use smaller sizes")
        domain_a, _ = load_features("data/reference/domain_a.npz")
        streams = {NULL_STREAM: ("false_alarms", pool_sampler(pool, pool)),
                   "domain_a_train": ("false_alarms", separate_sampler(pool, domain_a))}
        for name, shifted in _severities(images, params).items():
            streams[name] = ("detection", pool_sampler(pool, shifted))
        for keep in power.label_keep_levels:
            streams[f"label_keep_{keep:g}"] = ("detection", pool_sampler(
                pool, pool, labels=labels, label_class=params.shift.label_class, keep=keep))

        detectors = {name: _seeded(name, power.mmd_permutations) for name in FEATURE_DETECTORS}
        alpha = params.monitor.alpha

        def rates(stream: str) -> dict:
            kind, sample = streams[stream]
            print(f"power: {kind} on {stream}, n = {power.sizes}, R = {power.repetitions}", flush=True)
            found = independent_alarm_rates(sample, detectors, power.sizes, power.repetitions,
                                            alpha=alpha, seed=params.seed,
                                            repetitions_for=_repetitions_for(power))
            return calibration_flags(found, alpha) if kind == "false_alarms" else found

        all_rates = fork_map(rates, list(streams))
        results = {"pool": {"images": len(pool), "largest_n_share": 2 * largest / len(pool)},
                   "false_alarms": {}, "detection": {}}
        for stream, found in zip(streams, all_rates):
            results[streams[stream][0]][stream] = {d: {str(p.n): _point(p) for p in points}
                                                   for d, points in found.items()}
            _write_csv(f"metrics/power/{stream}.csv", found)

        write_json("metrics/power_details.json", results)
        write_json("metrics/power.json", _headline(results))
        power_curves({k: results[k] for k in ("false_alarms", "detection")}, alpha, FIGURE)
        run.log_metric_tree("power", {kind: {s: {d: {n: p["rate"] for n, p in points.items()}
                                                 for d, points in by_detector.items()}
                                             for s, by_detector in results[kind].items()}
                                      for kind in ("false_alarms", "detection")})
        run.log_artifact("metrics/power_details.json")
        run.log_artifact(FIGURE, "plots")


def _pool() -> tuple[Features, np.ndarray, np.ndarray]:
    """Features, labels and images of the unseen in-distribution pool: test set + domain B."""
    parts = []
    for name in ("test", "domain_b"):
        view, labels = load_features(f"data/reference/{name}.npz")
        image_set = load_set(f"data/prepared/{name}.npz", hint="run `dvc repro prepare`")
        if not np.array_equal(labels, image_set.labels):
            raise ShiftwatchError(f"data/reference/{name}.npz does not match data/prepared/{name}.npz; "
                                  "run `dvc repro reference`")
        parts.append((view, labels, image_set.images))
    views, labels, images = zip(*parts)
    return Features.concatenate(views), np.concatenate(labels), np.concatenate(images)


def _severities(images: np.ndarray, params) -> dict[str, Features]:
    """The model's features of every pool image at each covariate severity of the grid
    (brightness alone, blur alone): the network runs once per image and severity."""
    power, evaluate = params.power, params.evaluate
    model, device = load_model("models/resnet18.pt"), pick_device()
    severities = {f"brightness_{b:g}": (28, b) for b in power.brightness_levels}
    severities.update({f"downsample_{d}": (d, 0.0) for d in power.downsample_levels})
    return {name: model_features(model, degrade_images(images, downsample, brightness),
                                 evaluate.batch_size, device, evaluate.precision, desc=name)
            for name, (downsample, brightness) in severities.items()}


def _seeded(name: str, permutations: int):
    """The monitor's detector `name` at full size (no MMD subsample), seeded per repetition."""
    def detector(reference: Features, deployment: Features, seed: int):
        return feature_detector(name, seed=seed, mmd_permutations=permutations,
                                mmd_max_per_side=None)(reference, deployment)
    return detector


def _repetitions_for(power):
    """mmd_embedding's repetitions at n >= each key of power.mmd_repetitions (its cost grows
    as n²); every other detector gets power.repetitions."""
    caps = sorted(power.mmd_repetitions.items())

    def repetitions(name: str, n: int) -> int:
        if name != "mmd_embedding":
            return power.repetitions
        return min([power.repetitions] + [r for from_n, r in caps if n >= from_n])
    return repetitions


def _headline(results: dict) -> dict:
    """The power table in a few numbers: each detector's worst false-alarm rate over all n on
    the null stream, and per shifted stream the smallest n at which the combined verdict
    alarms in >= 90 % of draws (null: not reached at any n tried)."""
    healthy = results["false_alarms"][NULL_STREAM]
    return {
        "false_alarm_max": {d: max(p["rate"] for p in points.values()) for d, points in healthy.items()},
        "min_n_power_90": {stream: min((int(n) for n, p in by_detector[COMBINED].items()
                                        if p["rate"] >= TARGET_POWER), default=None)
                           for stream, by_detector in results["detection"].items()},
    }


def _point(p) -> dict:
    point = {"rate": p.rate, "ci_low": p.ci_low, "ci_high": p.ci_high, "repetitions": p.repetitions}
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

"""power: how often each detector alarms on a healthy stream, and how many images it needs to
see a shift of known severity. A property of the model and the detectors, run once per model:
it reads no `shift.*` setting except the class that the label-shift streams thin out.

Reads params: seed, shift.label_class, evaluate, monitor.alpha, power. Reuses the model outputs of
`reference` (the network runs once per image, never per repetition) and runs the model once on a
seeded pool of domain-B images at each covariate severity of the grid.
Streams: false alarms on domain B unshifted (b_raw) and on A's own training images; detection
on brightness_<b>, downsample_<d> (pool of `power.pool` images) and label_keep_<k> (domain B
with only share k of class shift.label_class left).
Writes metrics/power.json (headline: worst false-alarm rate per detector, smallest n with
power >= 0.9 per stream), metrics/power_details.json (every rate with its Wilson interval),
metrics/power/<stream>.csv (DVC plots), metrics/plots/power.png.
"""
import csv

import numpy as np

from shiftwatch.cli import run_stage
from shiftwatch.io import atomic_path, load_set, write_json
from shiftwatch.features import Features, load_features, model_features
from shiftwatch.model import load_model, pick_device
from shiftwatch.monitor import FEATURE_DETECTORS, feature_detector
from shiftwatch.params import load_params
from shiftwatch.plots import power_curves
from shiftwatch.power import COMBINED, detection_rates, false_alarm_rates
from shiftwatch.shift import degrade_images, label_shift_rows
from shiftwatch.tracking import stage_run
from shiftwatch.workers import fork_map

FIGURE = "metrics/plots/power.png"
TARGET_POWER = 0.9


def main() -> None:
    params = load_params()
    power = params.power
    with stage_run("power", params) as run:
        reference, _ = load_features("data/reference/test.npz")
        domain_b, domain_b_labels = load_features("data/reference/domain_b.npz")
        domain_a, _ = load_features("data/reference/domain_a.npz")
        null_streams = {"b_raw": domain_b,
                        "domain_a_train": domain_a.subset(_seeded_rows(len(domain_a), power.pool, params.seed))}
        shift_streams = _severity_pools(params)
        for keep in power.label_keep_levels:
            rows = label_shift_rows(domain_b_labels, params.shift.label_class, keep, params.seed)
            shift_streams[f"label_keep_{keep:g}"] = domain_b.subset(rows)

        detectors = {name: feature_detector(name, seed=params.seed, mmd_permutations=power.mmd_permutations,
                                            mmd_max_per_side=power.mmd_max_per_side)
                     for name in FEATURE_DETECTORS}
        jobs = [(kind, name, stream) for kind, streams in (("false_alarms", null_streams),
                                                           ("detection", shift_streams))
                for name, stream in streams.items()]
        # Streams are independent and the tests mostly single-threaded: one worker per core.
        all_rates = fork_map(lambda job: _stream_rates(*job, reference, detectors, params), jobs)
        results = {"false_alarms": {}, "detection": {}}
        for (kind, name, _), rates in zip(jobs, all_rates):
            results[kind][name] = {d: {str(p.n): _point(p) for p in points} for d, points in rates.items()}
            _write_csv(f"metrics/power/{name}.csv", rates)

        write_json("metrics/power_details.json", results)
        write_json("metrics/power.json", _headline(results))
        power_curves(results, params.monitor.alpha, FIGURE)
        run.log_metric_tree("power", {kind: {s: {d: {n: p["rate"] for n, p in points.items()}
                                                 for d, points in by_detector.items()}
                                             for s, by_detector in streams.items()}
                                      for kind, streams in results.items()})
        run.log_artifact("metrics/power_details.json")
        run.log_artifact(FIGURE, "plots")


def _headline(results: dict) -> dict:
    """The power table in a few numbers: each detector's worst false-alarm rate over all n on
    the healthy deployment stream, and per shifted stream the smallest n at which the combined
    verdict alarms in >= 90 % of draws (null: not reached at any n tried)."""
    healthy = results["false_alarms"]["b_raw"]
    return {
        "false_alarm_max": {d: max(p["rate"] for p in points.values()) for d, points in healthy.items()},
        "min_n_power_90": {stream: min((int(n) for n, p in by_detector[COMBINED].items()
                                        if p["rate"] >= TARGET_POWER), default=None)
                           for stream, by_detector in results["detection"].items()},
    }


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


def _seeded_rows(size: int, pool: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(size, min(pool, size), replace=False)


def _severity_pools(params) -> dict[str, Features]:
    """A seeded pool of domain-B images at each covariate severity of the grid (brightness
    alone, blur alone), through the model once."""
    power, evaluate = params.power, params.evaluate
    domain_b = load_set("data/prepared/domain_b.npz", hint="run `dvc repro prepare`")
    pool = domain_b.images[_seeded_rows(len(domain_b), power.pool, params.seed)]
    model, device = load_model("models/resnet18.pt"), pick_device()
    severities = {f"brightness_{b:g}": (28, b) for b in power.brightness_levels}
    severities.update({f"downsample_{d}": (d, 0.0) for d in power.downsample_levels})
    return {name: model_features(model, degrade_images(pool, downsample, brightness),
                                 evaluate.batch_size, device, evaluate.precision, desc=name)
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

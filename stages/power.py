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
(pool images with only share k of class shift.label_class kept); and detection tied to harm on
the corruption streams <family>_<severity> (shiftwatch/corruptions.py), drawn from a seeded
subset of power.corruption_pool_images pool images, each with the accuracy the model loses on
it: every shift costing >= power.harm_points must be detected at n = power.harm_n with power
>= 0.9. The verdict is the one `monitor` and `check` give (shiftwatch.monitor.VERDICT).
As monitored (power.monitored_reference, the test set's size, as `monitor` and `check` run):
the null and the label shifts at power.monitored_sizes, and every harmful shift at harm_n,
each draw against a fresh reference of that many pool images.

Reads params: seed, shift.label_class, evaluate, monitor.alpha, power.
Writes metrics/power.json (headline: worst false-alarm rate per detector on no_shift, smallest
n with power >= 0.9 per stream except the corruptions, and the harm target in three numbers,
n against n and as monitored),
metrics/power_details.json (every rate with its Wilson
interval, repetitions and the multiplicity-corrected miscalibration flag), metrics/power/<stream>.csv
(DVC plots), metrics/plots/power.png.
"""
import csv
import time
from dataclasses import dataclass

import numpy as np

from shiftwatch import NUM_CLASSES, ShiftwatchError
from shiftwatch.cli import run_stage
from shiftwatch.corruptions import check_severity, corrupt
from shiftwatch.detector_registry import DETECTORS, Settings
from shiftwatch.features import Features, load_features, model_features
from shiftwatch.io import atomic_path, load_set, write_json
from shiftwatch.model import load_model, pick_device
from shiftwatch.monitor import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS, VERDICT
from shiftwatch.params import load_params
from shiftwatch.plots import harm_plot, power_curves
from shiftwatch.power import (
    COMBINED,
    accuracy,
    calibration_flags,
    corruption_rows,
    harm_summary,
    independent_alarm_rates,
    pool_sampler,
    separate_sampler,
    subset_sampler,
)
from shiftwatch.shift import degrade_images
from shiftwatch.tracking import stage_run
from shiftwatch.twosample import check_permutations_for_holm
from shiftwatch.workers import fork_map

FIGURE = "metrics/plots/power.png"
HARM_FIGURE = "metrics/plots/harm.png"
TARGET_POWER = 0.9
NULL_STREAM = "no_shift"
MONITORED = "as_monitored/"  # stream-name prefix of the protocol with the monitor's reference size
MONITORED_HARM = "as_monitored_harm/"  # ... and of a harmful shift's cell at harm_n in that protocol
HARM_KIND = "harm_detection"  # as monitored: the harmful shifts at harm_n, apart from the label streams


def main() -> None:
    params = load_params()
    power = params.power
    check_permutations_for_holm(power.mmd_permutations, len(FEATURE_DETECTORS), params.monitor.alpha,
                                "power.mmd_permutations")
    for family, severities in power.corruptions.items():
        for severity in severities:
            check_severity(family, severity)
    with stage_run("power", params) as run:
        started = time.perf_counter()
        pool, labels, images = _pool()
        for setting, sizes, size_of_pool in (("power.sizes", power.sizes, len(pool)),
                                             ("power.corruption_sizes", power.corruption_sizes,
                                              min(len(pool), power.corruption_pool_images))):
            if 2 * max(sizes) > size_of_pool:
                raise ShiftwatchError(f"{setting}: n = {max(sizes)} needs 2n = {2 * max(sizes):,} disjoint "
                                      f"pool images, the pool has {size_of_pool:,}; use smaller sizes")
        if power.monitored_reference is not None:
            largest = max(power.monitored_sizes + [power.harm_n])
            if power.monitored_reference + largest > len(pool):
                raise ShiftwatchError(f"power.monitored_reference = {power.monitored_reference:,} plus n = "
                                      f"{largest:,} exceeds the pool of {len(pool):,} images; lower one of them")
        domain_a, _ = load_features("data/reference/domain_a.npz")
        model, device = load_model("models/resnet18.pt"), pick_device()
        streams = {NULL_STREAM: Stream("false_alarms", pool_sampler(pool, pool), power.sizes),
                   "domain_a_train": Stream("false_alarms", separate_sampler(pool, domain_a), power.sizes)}
        clean_accuracy = accuracy(pool.probabilities, labels)
        for name, shifted in _severities(model, device, images, params).items():
            loss = clean_accuracy - accuracy(shifted.probabilities, labels)
            streams[name] = Stream("detection", pool_sampler(pool, shifted), power.sizes, loss)
            streams.update(_harm_as_monitored(name, loss, params, lambda size, shifted=shifted: pool_sampler(
                pool, shifted, reference_size=size)))
        for keep in power.label_keep_levels:
            name = f"label_keep_{keep:g}"
            thinned = {"labels": labels, "label_class": params.shift.label_class, "keep": keep}
            loss = clean_accuracy - accuracy(pool.probabilities, labels, _kept(params.shift.label_class, keep))
            streams[name] = Stream("detection", pool_sampler(pool, pool, **thinned), power.sizes, loss)
            streams.update(_harm_as_monitored(name, loss, params, lambda size, thinned=thinned: pool_sampler(
                pool, pool, **thinned, reference_size=size)))  # harmful only for a weak model
        streams.update(_corruption_streams(model, device, pool, labels, images, params))
        streams.update(_monitored_streams(pool, labels, params))
        print(f"power: the model's features of every shifted pool in {time.perf_counter() - started:.0f} s",
              flush=True)

        every = FEATURE_DETECTORS + DIAGNOSTIC_DETECTORS  # the registry's: verdict, then diagnostics
        detectors = {name: _seeded(name, power.mmd_permutations) for name in every}
        as_monitored = {name: _seeded(name, power.mmd_permutations, params.monitor.mmd_max_per_side)
                        for name in FEATURE_DETECTORS}
        alpha = params.monitor.alpha

        def rates(name: str) -> dict:
            stream = streams[name]
            repetitions = stream.repetitions or power.repetitions
            stream_started = time.perf_counter()
            found = independent_alarm_rates(stream.sample, as_monitored if stream.monitored else detectors,
                                            stream.sizes, repetitions, alpha=alpha, seed=params.seed,
                                            repetitions_for=None if stream.monitored else _repetitions_for(power),
                                            verdict=FEATURE_DETECTORS)
            print(f"power: {stream.kind} on {name}, n = {stream.sizes}, R = {repetitions}: "
                  f"{time.perf_counter() - stream_started:.1f} s", flush=True)
            return calibration_flags(found, alpha) if stream.kind == "false_alarms" else found

        # The short corruption streams go last, so they fill in while the long ones finish
        # (the two workers take streams in this order); results do not depend on the order.
        order = sorted(streams, key=lambda name: streams[name].corruption)
        all_rates = dict(zip(order, fork_map(rates, order)))
        results = {"pool": {"images": len(pool), "largest_n_share": 2 * max(power.sizes) / len(pool),
                            "corruption_pool_images": min(len(pool), power.corruption_pool_images)},
                   "verdict": VERDICT, "false_alarms": {}, "detection": {}, "accuracy_loss_points": {}}
        results["as_monitored"] = {"reference_images": power.monitored_reference,
                                   "mmd_max_per_side": params.monitor.mmd_max_per_side,
                                   "false_alarms": {}, "detection": {}, HARM_KIND: {}}
        for name in streams:
            found = all_rates[name]
            table = results["as_monitored"] if streams[name].monitored else results
            table[streams[name].kind][name.split("/", 1)[-1]] = {  # less the as-monitored prefix
                d: {str(p.n): _point(p) for p in points} for d, points in found.items()}
            if streams[name].monitored:
                continue
            if streams[name].accuracy_loss is not None:
                results["accuracy_loss_points"][name] = 100 * streams[name].accuracy_loss
            _write_csv(f"metrics/power/{name}.csv", found)
        monitored = None if power.monitored_reference is None else results["as_monitored"][HARM_KIND]
        results["harm"] = harm_summary(results["detection"], results["accuracy_loss_points"],
                                       power.harm_points, power.harm_n, TARGET_POWER, monitored)

        write_json("metrics/power_details.json", results)
        write_json("metrics/power.json", _headline(results, power))
        power_curves({kind: {s: by for s, by in results[kind].items() if not streams[s].corruption}
                      for kind in ("false_alarms", "detection")}, alpha, FIGURE)
        harm_plot(results, power.harm_points, power.harm_n, TARGET_POWER, HARM_FIGURE)
        run.log_metric_tree("power", {kind: {s: {d: {n: p["rate"] for n, p in points.items()}
                                                 for d, points in by_detector.items()}
                                             for s, by_detector in results[kind].items()}
                                      for kind in ("false_alarms", "detection")})
        run.log_artifact("metrics/power_details.json")
        run.log_artifact(FIGURE, "plots")
        run.log_artifact(HARM_FIGURE, "plots")


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


@dataclass(frozen=True)
class Stream:
    """A stream of (reference, deployment) draws: false alarms or detection, at which sizes,
    and the accuracy points the model loses on it (None for the null streams)."""
    kind: str
    sample: object
    sizes: list[int]
    accuracy_loss: float | None = None
    corruption: bool = False
    monitored: bool = False
    repetitions: int | None = None  # None: power.repetitions


def _severities(model, device, images: np.ndarray, params) -> dict[str, Features]:
    """The model's features of every pool image at each covariate severity of the grid
    (brightness alone, blur alone): the network runs once per image and severity."""
    power, evaluate = params.power, params.evaluate
    severities = {f"brightness_{b:g}": (28, b) for b in power.brightness_levels}
    severities.update({f"downsample_{d}": (d, 0.0) for d in power.downsample_levels})
    return {name: model_features(model, degrade_images(images, downsample, brightness),
                                 evaluate.batch_size, device, evaluate.precision, desc=name)
            for name, (downsample, brightness) in severities.items()}


def _corruption_streams(model, device, pool: Features, labels: np.ndarray, images: np.ndarray,
                        params) -> dict[str, Stream]:
    """One stream per corruption family and severity, on a seeded subset of the pool: reference
    draws from its clean features, deployment draws from its corrupted ones (disjoint rows)."""
    power, evaluate = params.power, params.evaluate
    if not power.corruptions:
        return {}
    rows = corruption_rows(len(pool), params.seed, params.power.corruption_pool_images)
    clean, clean_labels = pool.subset(rows), labels[rows]
    streams = {}
    for family, severities in power.corruptions.items():
        for severity in severities:
            name = f"{family}_{severity:g}"
            shifted = model_features(model, corrupt(images[rows], family, severity, seed=params.seed),
                                     evaluate.batch_size, device, evaluate.precision, desc=name)
            loss = accuracy(clean.probabilities, clean_labels) - accuracy(shifted.probabilities, clean_labels)
            streams[name] = Stream("detection", pool_sampler(clean, shifted), power.corruption_sizes,
                                   loss, corruption=True, repetitions=power.corruption_repetitions)
            streams.update(_harm_as_monitored(name, loss, params, lambda size, shifted=shifted: subset_sampler(
                pool, rows, shifted, size)))
    return streams


def _harm_as_monitored(name: str, accuracy_loss: float, params, sampler) -> dict[str, Stream]:
    """A harmful shift is also judged against the monitor's reference, where there is one:
    `sampler(reference_size)` draws it; n = harm_n only, as many draws as a corruption cell (a
    harm-table cell, sorted with the short streams). Empty for a shift that costs too little."""
    power = params.power
    if power.monitored_reference is None or 100 * accuracy_loss < power.harm_points:
        return {}
    return {MONITORED_HARM + name: Stream(HARM_KIND, sampler(power.monitored_reference), [power.harm_n],
                                          corruption=True, monitored=True, repetitions=power.corruption_repetitions)}


def _monitored_streams(pool: Features, labels: np.ndarray, params) -> dict[str, Stream]:
    """The verdict as `monitor` and `check` run it: each repetition a fresh reference of
    power.monitored_reference pool images (the test set's size), MMD on a subsample of
    monitor.mmd_max_per_side of it, against n disjoint others: the null and the label shifts,
    the streams where the reference's size matters most."""
    power = params.power
    if power.monitored_reference is None:
        return {}
    reference = power.monitored_reference
    streams = {MONITORED + NULL_STREAM: Stream("false_alarms", pool_sampler(pool, pool, reference_size=reference),
                                               power.monitored_sizes, monitored=True)}
    for keep in power.label_keep_levels:
        streams[f"{MONITORED}label_keep_{keep:g}"] = Stream("detection", pool_sampler(
            pool, pool, labels=labels, label_class=params.shift.label_class, keep=keep,
            reference_size=reference), power.monitored_sizes, monitored=True)
    return streams


def _kept(label_class: int, keep: float) -> np.ndarray:
    """Class weights of a label shift: share `keep` of `label_class` left, every other class whole."""
    weights = np.ones(NUM_CLASSES)
    weights[label_class] = keep
    return weights


def _seeded(name: str, permutations: int, mmd_max_per_side: int | None = None):
    """The registered detector `name`, seeded per repetition; MMD at full size unless a cap is given."""
    def detector(reference: Features, deployment: Features, seed: int):
        settings = Settings(seed=seed, permutations=permutations, max_per_side=mmd_max_per_side)
        return DETECTORS[name].bind(settings)(reference, deployment)
    return detector


def _repetitions_for(power):
    """Repetitions per (detector, n): mmd_embedding's at n >= each key of power.mmd_repetitions
    (its cost grows as n²), a diagnostic's at n >= each key of power.diagnostic_repetitions
    (pixel_ks: ~10-20 ms a call at n >= 500, and not part of the verdict); every other
    detector gets power.repetitions."""
    def capped(caps: dict[int, int], n: int) -> int:
        return min([power.repetitions] + [r for from_n, r in caps.items() if n >= from_n])

    def repetitions(name: str, n: int) -> int:
        if name == "mmd_embedding":
            return capped(power.mmd_repetitions, n)
        if not DETECTORS[name].verdict:
            return capped(power.diagnostic_repetitions, n)
        return power.repetitions
    return repetitions


def _headline(results: dict, power) -> dict:
    """The power table in a few numbers: each detector's worst false-alarm rate over all n on
    the null stream; per shifted stream (not the corruptions) the smallest n at which the
    verdict alarms in >= 90 % of draws (null: not reached at any n tried); and the harm target
    (how many harmful corruption shifts, how many detected at harm_n, the weakest power, and
    the same as monitored); the same false-alarm and n-for-0.9 numbers for the verdict as
    monitored (combined only)."""
    healthy, harm = results["false_alarms"][NULL_STREAM], results["harm"]
    corruption_names = {f"{family}_{s:g}" for family, levels in power.corruptions.items() for s in levels}
    return {
        "false_alarm_max": {d: max(p["rate"] for p in points.values()) for d, points in healthy.items()},
        "min_n_power_90": {stream: _min_n(by_detector) for stream, by_detector in results["detection"].items()
                           if stream not in corruption_names},
        "as_monitored": {
            "false_alarm_max": max((p["rate"] for p in results["as_monitored"]["false_alarms"]
                                    .get(NULL_STREAM, {}).get(COMBINED, {}).values()), default=None),
            "min_n_power_90": {stream: _min_n(by_detector)
                               for stream, by_detector in results["as_monitored"]["detection"].items()}},
        "harm": {**_harm_counts(harm),
                 **({"as_monitored": _harm_counts(harm["as_monitored"])} if "as_monitored" in harm else {})},
    }


def _harm_counts(harm: dict) -> dict:
    return {"harmful_shifts": len(harm["harmful"]), "detected": len(harm["harmful"]) - len(harm["missed"]),
            "weakest_power": min(harm["harmful"].values(), default=None)}


def _min_n(by_detector: dict) -> int | None:
    """The smallest n at which the verdict alarms in >= 90 % of draws (None: at no n tried)."""
    return min((int(n) for n, p in by_detector[COMBINED].items() if p["rate"] >= TARGET_POWER), default=None)


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

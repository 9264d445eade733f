"""power: how often each detector alarms on a healthy stream, and how many images it needs to
see a shift of known severity. A property of the model and the detectors, run once per model:
it reads no `shift.*` setting except the class that the label-shift streams thin out.

Protocol (Rabanser et al. 2019, "Failing Loudly"): the pool is every in-distribution image the
model never trained on, the 10,000 test images and the 18,000 of domain B. Each repetition
draws a fresh reference of n pool images and a fresh deployment sample of n other pool
images (disjoint), with its own seed for the detectors' permutations. Streams: false alarms on
no_shift (the null) and on domain_a_train (the model's own training images as deployment: not
a null, the reason the reference must be held out); detection on label_keep_<k> (pool images
with only share k of class shift.label_class kept), on brightness_<b> and downsample_<d>, and,
tied to harm, on the corruption streams <family>_<severity> (shiftwatch/data/corruptions.py).
A covariate shift is applied to a seeded subset of power.corruption_pool_images pool images
(the harm table's images): the model ran once per image and severity (never per repetition),
and a draw takes its reference from the subset's clean rows and its deployment from other
rows' shifted ones. Each shift carries the accuracy the model loses on it: every shift costing
>= power.harm_points must be detected at n = power.harm_n with power >= 0.9. The verdict is
the one `monitor` and `check` give (shiftwatch.detection.verdict.VERDICT). As monitored
(power.monitored_reference, the test set's size, as `monitor` and `check` run): the null and
the label shifts at power.monitored_sizes, and every harmful shift at harm_n, each draw
against a fresh reference of that many pool images; a harmful shift's cell stops at half its
repetitions where they settle the 0.9 target either way (two_look_alarm_rates).

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

from shiftwatch.core.io import atomic_path, write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.plots import harm_plot, power_curves
from shiftwatch.core.stage import run_stage
from shiftwatch.core.workers import fork_map
from shiftwatch.data.corruptions import check_severity
from shiftwatch.detection.holm import check_permutations_for_holm
from shiftwatch.detection.power import calibration_flags
from shiftwatch.detection.power_design import (
    TARGET_POWER,
    Design,
    build_streams,
    check_sizes,
    headline,
    seeded_detector,
    stream_rates,
    tabulate,
    unseen_pool,
)
from shiftwatch.detection.verdict import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS
from shiftwatch.model import DEPLOYED_MODEL
from shiftwatch.model.features import load_features
from shiftwatch.model.network import load_model, pick_device
from shiftwatch.tracking.runs import stage_run

FIGURE = "metrics/plots/power.png"
HARM_FIGURE = "metrics/plots/harm.png"


def main() -> None:
    params = load_params()
    power = params.power
    check_permutations_for_holm(
        power.mmd_permutations, len(FEATURE_DETECTORS), params.monitor.alpha, "power.mmd_permutations"
    )
    for family, severities in power.corruptions.items():
        for severity in severities:
            check_severity(family, severity)
    with stage_run("power", params) as run:
        started = time.perf_counter()
        pool, labels, images = unseen_pool()
        check_sizes(power, len(pool))
        domain_a, _ = load_features("data/reference/domain_a.npz")
        model, device = load_model(DEPLOYED_MODEL), pick_device()
        design = Design(power, params.evaluate, params.shift.label_class, params.seed)
        streams = build_streams(model, device, pool, labels, images, domain_a, design)
        print(f"power: the model's features of every shifted pool in {time.perf_counter() - started:.0f} s", flush=True)

        every = FEATURE_DETECTORS + DIAGNOSTIC_DETECTORS  # the registry's: verdict, then diagnostics
        detectors = {name: seeded_detector(name, power.mmd_permutations) for name in every}
        as_monitored = {
            name: seeded_detector(name, power.mmd_permutations, params.monitor.mmd_max_per_side)
            for name in FEATURE_DETECTORS
        }
        alpha = params.monitor.alpha

        def rates(name: str) -> dict:
            stream, stream_started = streams[name], time.perf_counter()
            found = stream_rates(stream, detectors, as_monitored, power, alpha, params.seed)
            print(
                f"power: {stream.kind} on {name}, n = {stream.sizes}, "
                f"R = {stream.repetitions or power.repetitions}: {time.perf_counter() - stream_started:.1f} s",
                flush=True,
            )
            return calibration_flags(found, alpha) if stream.kind == "false_alarms" else found

        # The short corruption streams go last, so they fill in while the long ones finish
        # (the two workers take streams in this order); results do not depend on the order.
        order = sorted(streams, key=lambda name: streams[name].corruption)
        all_rates = dict(zip(order, fork_map(rates, order)))
        results = tabulate(streams, all_rates, len(pool), power, params.monitor.mmd_max_per_side)
        for name, stream in streams.items():
            if not stream.monitored:
                _write_csv(f"metrics/power/{name}.csv", all_rates[name])

        write_json("metrics/power_details.json", results)
        write_json("metrics/power.json", headline(results, power))
        power_curves(
            {
                kind: {s: by for s, by in results[kind].items() if not streams[s].corruption}
                for kind in ("false_alarms", "detection")
            },
            alpha,
            FIGURE,
        )
        harm_plot(results, power.harm_points, power.harm_n, TARGET_POWER, HARM_FIGURE)
        run.log_metric_tree(
            "power",
            {
                kind: {
                    s: {d: {n: p["rate"] for n, p in points.items()} for d, points in by_detector.items()}
                    for s, by_detector in results[kind].items()
                }
                for kind in ("false_alarms", "detection")
            },
        )
        run.log_artifact("metrics/power_details.json")
        run.log_artifact(FIGURE, "plots")
        run.log_artifact(HARM_FIGURE, "plots")


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

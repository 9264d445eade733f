"""The power stage's experiment design (Rabanser et al. 2019, "Failing Loudly"): which streams
of (reference, deployment) draws it judges, how each detector is seeded and how many
repetitions it gets, and the headline numbers of the result. `stages/power.py` runs it; the
pre-registered studies (studies/verdict_design.py, verdict_weights.py) reuse its pool and
seeded detectors. See stages/power.py for the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shiftwatch import NUM_CLASSES, ShiftwatchError
from shiftwatch.core.io import load_set
from shiftwatch.data.corruptions import corrupt
from shiftwatch.data.shift import degrade_images
from shiftwatch.detection.power import (
    COMBINED,
    Sampler,
    accuracy,
    corruption_rows,
    harm_summary,
    independent_alarm_rates,
    pool_sampler,
    separate_sampler,
    subset_sampler,
    two_look_alarm_rates,
)
from shiftwatch.detection.registry import DETECTORS, Settings
from shiftwatch.detection.verdict import FEATURE_DETECTORS, VERDICT
from shiftwatch.model.features import Features, load_features, model_features

if TYPE_CHECKING:  # the schema's types, for the checker only (the stage passes validated params)
    from shiftwatch.core.params import EvaluateParams, PowerParams

TARGET_POWER = 0.9
NULL_STREAM = "no_shift"
MONITORED = "as_monitored/"  # stream-name prefix of the protocol with the monitor's reference size
MONITORED_HARM = "as_monitored_harm/"  # ... and of a harmful shift's cell at harm_n in that protocol
HARM_KIND = "harm_detection"  # as monitored: the harmful shifts at harm_n, apart from the label streams


def unseen_pool() -> tuple[Features, np.ndarray, np.ndarray]:
    """Features, labels and images of the unseen in-distribution pool: test set + domain B."""
    parts = []
    for name in ("test", "domain_b"):
        view, labels = load_features(f"data/reference/{name}.npz")
        image_set = load_set(f"data/prepared/{name}.npz", hint="run `dvc repro prepare`")
        if not np.array_equal(labels, image_set.labels):
            raise ShiftwatchError(
                f"data/reference/{name}.npz does not match data/prepared/{name}.npz; run `dvc repro reference`"
            )
        parts.append((view, labels, image_set.images))
    views, labels, images = zip(*parts)
    return Features.concatenate(views), np.concatenate(labels), np.concatenate(images)


@dataclass(frozen=True)
class Design:
    """What the grid is built from: the power.* settings, inference settings (evaluate.*), the
    class a label shift thins out, and the seed of the corruption rows and corruptions."""

    power: PowerParams
    evaluate: EvaluateParams
    label_class: int
    seed: int


@dataclass(frozen=True)
class Stream:
    """A stream of (reference, deployment) draws: false alarms or detection, at which sizes,
    and the accuracy points the model loses on it (None for the null streams)."""

    kind: str
    sample: Sampler
    sizes: list[int]
    accuracy_loss: float | None = None
    corruption: bool = False
    monitored: bool = False
    repetitions: int | None = None  # None: power.repetitions (the nulls)


def check_sizes(power, pool_size: int) -> None:
    """Every n of the grid needs 2n disjoint images of the seeded subset the shifts are applied
    to (power.corruption_pool_images; n as monitored: the reference plus n of the pool)."""
    subset = min(pool_size, power.corruption_pool_images)  # the severities' and corruptions' images
    for setting, sizes, size_of_pool in (
        ("power.sizes", power.sizes, subset),
        ("power.corruption_sizes", power.corruption_sizes, subset),
    ):
        if 2 * max(sizes) > size_of_pool:
            raise ShiftwatchError(
                f"{setting}: n = {max(sizes)} needs 2n = {2 * max(sizes):,} disjoint "
                f"pool images, the pool has {size_of_pool:,}; use smaller sizes"
            )
    if power.monitored_reference is not None:
        largest = max([*power.monitored_sizes, power.harm_n])
        if power.monitored_reference + largest > pool_size:
            raise ShiftwatchError(
                f"power.monitored_reference = {power.monitored_reference:,} plus n = "
                f"{largest:,} exceeds the pool of {pool_size:,} images; lower one of them"
            )


def _accuracy(view: Features, labels: np.ndarray, class_weights: np.ndarray | None = None) -> float:
    """The model's accuracy on a view it ran on (so the view has probabilities)."""
    assert view.probabilities is not None, "power's views come from the model"
    return accuracy(view.probabilities, labels, class_weights)


def build_streams(
    model, device, pool: Features, labels: np.ndarray, images: np.ndarray, domain_a: Features, design: Design
) -> dict[str, Stream]:
    """Every stream of the grid, by name: the nulls, the study's covariate and label shifts,
    the corruption cells, and the same as monitored (the model runs once per image and severity
    here; the draws only look rows up)."""
    power = design.power
    streams = {
        NULL_STREAM: Stream("false_alarms", pool_sampler(pool, pool), power.sizes),
        "domain_a_train": Stream("false_alarms", separate_sampler(pool, domain_a), power.sizes),
    }
    subset = _ShiftedSubset.of(model, device, pool, labels, images, design)
    for name, (downsample, brightness) in _severities(power).items():
        shifted = degrade_images(subset.images, downsample, brightness)
        streams.update(subset.streams(name, shifted, power.sizes, power.detection_repetitions))
    clean_accuracy = _accuracy(pool, labels)
    for keep in power.label_keep_levels:
        name = f"label_keep_{keep:g}"
        thinned: dict[str, Any] = {"labels": labels, "label_class": design.label_class, "keep": keep}
        loss = clean_accuracy - _accuracy(pool, labels, _kept(design.label_class, keep))
        streams[name] = Stream(
            "detection", pool_sampler(pool, pool, **thinned), power.sizes, loss, repetitions=power.detection_repetitions
        )
        streams.update(
            _harm_as_monitored(
                name,
                loss,
                design,
                lambda size, thinned=thinned: pool_sampler(pool, pool, **thinned, reference_size=size),
            )
        )  # harmful only for a weak model
    for family, severities in power.corruptions.items():
        for severity in severities:
            shifted = corrupt(subset.images, family, severity, seed=design.seed)
            streams.update(
                subset.streams(
                    f"{family}_{severity:g}", shifted, power.corruption_sizes, power.corruption_repetitions, True
                )
            )
    streams.update(_monitored_streams(pool, labels, design))
    return streams


def _severities(power) -> dict[str, tuple[int, float]]:
    """The study's covariate severities of the grid, one at a time: name -> (downsample, brightness)."""
    severities = {f"brightness_{b:g}": (28, b) for b in power.brightness_levels}
    severities.update({f"downsample_{d}": (d, 0.0) for d in power.downsample_levels})
    return severities


@dataclass(frozen=True)
class _ShiftedSubset:
    """The seeded subset of the pool that every covariate shift is applied to (the harm table's
    images, power.corruption_pool_images), with the model that runs once per image and shift.
    A shift's stream draws its reference from the subset's clean rows and its deployment from
    other rows' shifted ones: 5,000 images give fresh draws at n <= 1,000 a side, and the network
    runs on 25,000 images for the study's five severities instead of 140,000."""

    model: Any
    device: Any
    design: Design
    pool: Features
    rows: np.ndarray
    clean: Features
    labels: np.ndarray
    images: np.ndarray

    @classmethod
    def of(cls, model, device, pool: Features, labels: np.ndarray, images: np.ndarray, design: Design):
        rows = corruption_rows(len(pool), design.seed, design.power.corruption_pool_images)
        return cls(model, device, design, pool, rows, pool.subset(rows), labels[rows], images[rows])

    def streams(
        self, name: str, shifted_images: np.ndarray, sizes: list[int], repetitions: int, corruption: bool = False
    ) -> dict[str, Stream]:
        """The stream of the subset under one shift (`shifted_images`, row-aligned with
        `self.images`), with the accuracy it costs, and its harm cell as monitored."""
        evaluate = self.design.evaluate
        shifted = model_features(
            self.model, shifted_images, evaluate.batch_size, self.device, evaluate.precision, desc=name
        )
        loss = _accuracy(self.clean, self.labels) - _accuracy(shifted, self.labels)
        stream = Stream(
            "detection",
            pool_sampler(self.clean, shifted),
            sizes,
            loss,
            corruption=corruption,
            repetitions=repetitions,
        )
        return {
            name: stream,
            **_harm_as_monitored(
                name,
                loss,
                self.design,
                lambda size: subset_sampler(self.pool, self.rows, shifted, size),
            ),
        }


def _harm_as_monitored(name: str, accuracy_loss: float, design: Design, sampler) -> dict[str, Stream]:
    """A harmful shift is also judged against the monitor's reference, where there is one:
    `sampler(reference_size)` draws it; n = harm_n only, as many draws as a corruption cell (a
    harm-table cell, sorted with the short streams). Empty for a shift that costs too little."""
    power = design.power
    if power.monitored_reference is None or 100 * accuracy_loss < power.harm_points:
        return {}
    return {
        MONITORED_HARM + name: Stream(
            HARM_KIND,
            sampler(power.monitored_reference),
            [power.harm_n],
            corruption=True,
            monitored=True,
            repetitions=power.corruption_repetitions,
        )
    }


def _monitored_streams(pool: Features, labels: np.ndarray, design: Design) -> dict[str, Stream]:
    """The verdict as `monitor` and `check` run it: each repetition a fresh reference of
    power.monitored_reference pool images (the test set's size), MMD on a subsample of
    monitor.mmd_max_per_side of it, against n disjoint others: the null and the label shifts,
    the streams where the reference's size matters most."""
    power = design.power
    if power.monitored_reference is None:
        return {}
    reference = power.monitored_reference
    streams = {
        MONITORED + NULL_STREAM: Stream(
            "false_alarms", pool_sampler(pool, pool, reference_size=reference), power.monitored_sizes, monitored=True
        )
    }
    for keep in power.label_keep_levels:
        streams[f"{MONITORED}label_keep_{keep:g}"] = Stream(
            "detection",
            pool_sampler(
                pool, pool, labels=labels, label_class=design.label_class, keep=keep, reference_size=reference
            ),
            power.monitored_sizes,
            monitored=True,
            repetitions=power.detection_repetitions,
        )
    return streams


def _kept(label_class: int, keep: float) -> np.ndarray:
    """Class weights of a label shift: share `keep` of `label_class` left, every other class whole."""
    weights = np.ones(NUM_CLASSES)
    weights[label_class] = keep
    return weights


def seeded_detector(name: str, permutations: int, mmd_max_per_side: int | None = None):
    """The registered detector `name`, seeded per repetition; MMD at full size unless a cap is given."""

    def detector(reference: Features, deployment: Features, seed: int):
        settings = Settings(seed=seed, permutations=permutations, max_per_side=mmd_max_per_side)
        return DETECTORS[name].bind(settings)(reference, deployment)

    return detector


def stream_rates(stream: Stream, detectors: dict, as_monitored: dict, power, alpha: float, seed: int) -> dict:
    """A stream's alarm rates per detector and n (AlarmRate lists; the verdict under COMBINED).
    A harmful shift judged as monitored stops at half its repetitions where they settle the 0.9
    target (`two_look_alarm_rates`); a stream against the monitor's reference runs every
    repetition for every detector; any other gives the costly ones fewer (`repetitions_rule`)."""
    repetitions = stream.repetitions or power.repetitions
    if stream.kind == HARM_KIND:
        return two_look_alarm_rates(
            stream.sample,
            as_monitored,
            stream.sizes,
            repetitions,
            TARGET_POWER,
            alpha=alpha,
            seed=seed,
            verdict=FEATURE_DETECTORS,
        )
    return independent_alarm_rates(
        stream.sample,
        as_monitored if stream.monitored else detectors,
        stream.sizes,
        repetitions,
        alpha=alpha,
        seed=seed,
        repetitions_for=None if stream.monitored else repetitions_rule(power),
        verdict=FEATURE_DETECTORS,
    )


def repetitions_rule(power):
    """Repetitions per (detector, n), from the registry: a detector registered with
    cost="quadratic" (mmd_embedding) gets power.mmd_repetitions at n >= each of its keys, a
    diagnostic power.diagnostic_repetitions (pixel_ks: ~10-20 ms a call at n >= 500, and not
    part of the verdict); every other detector gets power.repetitions."""

    def capped(caps: dict[int, int], n: int) -> int:
        return min([power.repetitions] + [r for from_n, r in caps.items() if n >= from_n])

    def repetitions(name: str, n: int) -> int:
        detector = DETECTORS[name]
        if detector.cost == "quadratic":
            return capped(power.mmd_repetitions, n)
        if not detector.verdict:
            return capped(power.diagnostic_repetitions, n)
        return power.repetitions

    return repetitions


def tabulate(streams: dict[str, Stream], rates: dict[str, dict], pool_size: int, power, mmd_max_per_side: int) -> dict:
    """The power table from each stream's rates (AlarmRate lists by detector): rates by kind and
    stream (as monitored apart), the accuracy each shift costs, and the harm target's summary."""
    results: dict[str, Any] = {
        "pool": {
            "images": pool_size,
            "largest_n_share": 2 * max(power.sizes) / pool_size,
            "corruption_pool_images": min(pool_size, power.corruption_pool_images),
        },
        "verdict": VERDICT,
        "false_alarms": {},
        "detection": {},
        "accuracy_loss_points": {},
    }
    results["as_monitored"] = {
        "reference_images": power.monitored_reference,
        "mmd_max_per_side": mmd_max_per_side,
        "false_alarms": {},
        "detection": {},
        HARM_KIND: {},
    }
    for name, stream in streams.items():
        table = results["as_monitored"] if stream.monitored else results
        table[stream.kind][name.split("/", 1)[-1]] = {  # less the as-monitored prefix
            d: {str(p.n): point(p) for p in points} for d, points in rates[name].items()
        }
        if not stream.monitored and stream.accuracy_loss is not None:
            results["accuracy_loss_points"][name] = 100 * stream.accuracy_loss
    monitored = None if power.monitored_reference is None else results["as_monitored"][HARM_KIND]
    results["harm"] = harm_summary(
        results["detection"], results["accuracy_loss_points"], power.harm_points, power.harm_n, TARGET_POWER, monitored
    )
    return results


def headline(results: dict, power) -> dict:
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
        "min_n_power_90": {
            stream: _min_n(by_detector)
            for stream, by_detector in results["detection"].items()
            if stream not in corruption_names
        },
        "as_monitored": {
            "false_alarm_max": max(
                (
                    p["rate"]
                    for p in results["as_monitored"]["false_alarms"].get(NULL_STREAM, {}).get(COMBINED, {}).values()
                ),
                default=None,
            ),
            "min_n_power_90": {
                stream: _min_n(by_detector) for stream, by_detector in results["as_monitored"]["detection"].items()
            },
        },
        "harm": {
            **_harm_counts(harm),
            **({"as_monitored": _harm_counts(harm["as_monitored"])} if "as_monitored" in harm else {}),
        },
    }


def _harm_counts(harm: dict) -> dict:
    return {
        "harmful_shifts": len(harm["harmful"]),
        "detected": len(harm["harmful"]) - len(harm["missed"]),
        "weakest_power": min(harm["harmful"].values(), default=None),
    }


def _min_n(by_detector: dict) -> int | None:
    """The smallest n at which the verdict alarms in >= 90 % of draws (None: at no n tried)."""
    return min((int(n) for n, p in by_detector[COMBINED].items() if p["rate"] >= TARGET_POWER), default=None)


def point(p) -> dict:
    point = {"rate": p.rate, "ci_low": p.ci_low, "ci_high": p.ci_high, "repetitions": p.repetitions}
    if hasattr(p, "miscalibrated"):
        point["miscalibrated"] = int(p.miscalibrated)
    return point

"""How often does a detector alarm? Power under a shift, false alarms without one.

A detector here is any callable `detector(reference_sample, deployment_sample)` returning a
p-value (a float, or an object with a `.pvalue` such as DetectorResult). The routines draw
many seeded deployment samples of each size n from precomputed arrays (softmax outputs,
images, features: anything with samples along the first axis), call the detector on each,
and report the share of p-values below alpha with a 95 % Wilson confidence interval.
`detection_rates` / `false_alarm_rates` show every draw to several detectors at once and add
their combined Holm–Bonferroni verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection.holm import holm

Detector = Callable[[np.ndarray, np.ndarray], object]
# Key of the Holm–Bonferroni verdict in `detection_rates` / `false_alarm_rates`.
COMBINED = "combined"
_SINGLE = "detector"


@dataclass(frozen=True)
class AlarmRate:
    """Alarms in `repetitions` draws of `n` deployment rows: rate = alarms / repetitions, with
    its Wilson interval [ci_low, ci_high] at the requested confidence."""

    n: int
    alarms: int
    repetitions: int
    rate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class FalseAlarmRate(AlarmRate):
    """An AlarmRate under no shift, plus the one-sided binomial test of H0: rate ≤ alpha.
    `miscalibrated` means that test rejects at `level`, i.e. the detector alarms too often."""

    alpha: float = 0.05
    excess_pvalue: float = 1.0
    miscalibrated: bool = False


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's binomtest, no continuity
    correction), as (low, high) in [0, 1]. Stays inside [0, 1] and is informative even at 0
    or `trials` successes, unlike the normal (Wald) interval."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ShiftwatchError(
            f"wilson_interval: {successes} successes of {trials} trials; need trials >= 1 and 0 <= successes <= trials"
        )
    interval = stats.binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def detection_rate(
    reference: np.ndarray,
    deployment: np.ndarray,
    detector: Detector,
    ns: Iterable[int],
    repetitions: int,
    alpha: float = 0.05,
    seed: int = 0,
    reference_size: int | None = None,
    confidence: float = 0.95,
) -> list[AlarmRate]:
    """Power curve: for each n in `ns`, the share of `repetitions` draws with p-value < alpha.

    Each draw takes n rows of `deployment` (without replacement; with replacement only when
    n > len(deployment), whose duplicates can upset tests that assume continuous data) and
    calls detector(reference sample, deployment sample). The reference sample is all of
    `reference`, or a fresh draw of `reference_size` rows (same rule) when given. Draws for n
    use np.random.default_rng([seed, n]), so a size's result does not depend on the other
    sizes asked for. With a fixed reference the draws are independent only given that
    reference, so the interval describes the detector *for this reference*.
    `detection_rates` runs several detectors on the same draws.
    """
    return detection_rates(
        reference,
        deployment,
        {_SINGLE: detector},
        ns,
        repetitions,
        alpha,
        seed,
        reference_size,
        confidence,
        combine=None,
    )[_SINGLE]


def false_alarm_rate(
    reference: np.ndarray,
    held_out: np.ndarray,
    detector: Detector,
    ns: Iterable[int],
    repetitions: int,
    alpha: float = 0.05,
    seed: int = 0,
    reference_size: int | None = None,
    confidence: float = 0.95,
    level: float = 0.05,
) -> list[FalseAlarmRate]:
    """Calibration: `detection_rate` with a deployment drawn from the reference distribution.

    `held_out` must come from the same distribution as `reference` but share no rows with
    it (a sample compared with itself alarms too rarely). A calibrated detector alarms in
    about alpha of the draws; each point is flagged `miscalibrated` when a one-sided binomial
    test of H0: rate ≤ alpha rejects at `level` (too many alarms; too few is only a loss of
    power and is not flagged). `false_alarm_rates` runs several detectors on the same draws.
    """
    return false_alarm_rates(
        reference,
        held_out,
        {_SINGLE: detector},
        ns,
        repetitions,
        alpha,
        seed,
        reference_size,
        confidence,
        level,
        combine=None,
    )[_SINGLE]


def detection_rates(
    reference: np.ndarray,
    deployment: np.ndarray,
    detectors: Mapping[str, Detector],
    ns: Iterable[int],
    repetitions: int,
    alpha: float = 0.05,
    seed: int = 0,
    reference_size: int | None = None,
    confidence: float = 0.95,
    combine: str | None = "holm",
) -> dict[str, list[AlarmRate]]:
    """`detection_rate` for several detectors on the very same draws, by detector name.

    Each draw (same sampling and seeding as `detection_rate`: np.random.default_rng([seed, n])
    per size) is shown to every detector, so each detector's alarms are exactly those
    `detection_rate` gives it with the same seed, and the detectors' differences are not
    sampling noise between separate draws. With combine="holm" (default) the result also has
    an entry "combined": a draw alarms when Holm–Bonferroni over that draw's p-values rejects
    at alpha (`shiftwatch.detection.holm.holm`, adjusted p < alpha), the family-wise verdict a
    monitor would raise. combine=None leaves it out.
    """
    names = _names(detectors, combine)
    sizes = _sizes(ns)
    _check_probability(alpha, "alpha")
    if repetitions < 1:
        raise ShiftwatchError(f"repetitions = {repetitions}; pass at least 1")
    for name, array in (("reference", reference), ("deployment", deployment)):
        if np.ndim(array) == 0 or len(array) == 0:
            raise ShiftwatchError(f"{name} is empty; pass at least one sample along the first axis")
    rates: dict[str, list[AlarmRate]] = {name: [] for name in names}
    for n in sizes:
        alarms = _alarm_counts(
            reference, deployment, detectors, n, repetitions, alpha, seed, reference_size, combine is not None
        )
        for name in names:
            low, high = wilson_interval(alarms[name], repetitions, confidence)
            rates[name].append(AlarmRate(n, alarms[name], repetitions, alarms[name] / repetitions, low, high))
    return rates


def false_alarm_rates(
    reference: np.ndarray,
    held_out: np.ndarray,
    detectors: Mapping[str, Detector],
    ns: Iterable[int],
    repetitions: int,
    alpha: float = 0.05,
    seed: int = 0,
    reference_size: int | None = None,
    confidence: float = 0.95,
    level: float = 0.05,
    combine: str | None = "holm",
) -> dict[str, list[FalseAlarmRate]]:
    """`false_alarm_rate` for several detectors on the same draws (see `detection_rates`),
    plus the "combined" Holm verdict unless combine=None. Holm keeps the family-wise error
    of the combined verdict ≤ alpha whatever the dependence between the detectors, so a
    `miscalibrated` "combined" entry means a detector's own p-values are not valid."""
    _check_probability(level, "level")
    rates = detection_rates(
        reference, held_out, detectors, ns, repetitions, alpha, seed, reference_size, confidence, combine
    )
    return {name: [_with_calibration(point, alpha, level) for point in points] for name, points in rates.items()}


def _with_calibration(point: AlarmRate, alpha: float, level: float) -> FalseAlarmRate:
    excess = stats.binomtest(point.alarms, point.repetitions, alpha, alternative="greater").pvalue
    return FalseAlarmRate(**vars(point), alpha=alpha, excess_pvalue=float(excess), miscalibrated=bool(excess < level))


def _alarm_counts(
    reference: np.ndarray,
    deployment: np.ndarray,
    detectors: Mapping[str, Detector],
    n: int,
    repetitions: int,
    alpha: float,
    seed: int,
    reference_size: int | None,
    combined: bool,
) -> dict[str, int]:
    """Alarms per detector, plus COMBINED (Holm) when `combined`, over `repetitions` draws of
    size n, every detector seeing the same draws."""
    rng = np.random.default_rng([seed, n])
    alarms = dict.fromkeys(detectors, 0) | ({COMBINED: 0} if combined else {})  # names differ
    for _ in range(repetitions):
        ref = reference if reference_size is None else _draw(reference, reference_size, rng)
        dep = _draw(deployment, n, rng)
        pvalues = {name: _pvalue(detector(ref, dep)) for name, detector in detectors.items()}
        for name, pvalue in pvalues.items():
            alarms[name] += pvalue < alpha
        if combined:
            alarms[COMBINED] += holm(pvalues, alpha).reject
    return {name: int(count) for name, count in alarms.items()}


def _names(detectors: Mapping[str, Callable[..., object]], combine: str | None) -> list[str]:
    if combine not in (None, "holm"):
        raise ShiftwatchError(f"combine = {combine!r}; use 'holm' or None")
    names = list(detectors)
    if not names:
        raise ShiftwatchError("detectors is empty; pass at least one named detector")
    if combine is not None:
        if COMBINED in names:
            raise ShiftwatchError(
                f"a detector is named {COMBINED!r}, the name of the combined verdict; rename it or pass combine=None"
            )
        names.append(COMBINED)
    return names


def _draw(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if size < 1:
        raise ShiftwatchError(f"sample size {size}; sample sizes must be at least 1")
    return rows[rng.choice(len(rows), size, replace=size > len(rows))]


def _pvalue(result: object) -> float:
    pvalue: Any = getattr(result, "pvalue", result)
    if pvalue is None or not 0 <= float(pvalue) <= 1:  # also catches NaN
        raise ShiftwatchError(
            f"the detector returned p-value {pvalue}; it must return a number "
            "in [0, 1] (a detector without a p-value cannot be calibrated)"
        )
    return float(pvalue)


def _sizes(ns: Iterable[int]) -> list[int]:
    sizes = [int(n) for n in ns]
    if not sizes or min(sizes) < 1:
        raise ShiftwatchError(f"ns = {sizes}; pass one or more sample sizes >= 1")
    return sizes


def _check_probability(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ShiftwatchError(f"{name} = {value}; pass a probability in (0, 1)")


# ---------------------------------------------------------------- independent repetitions

Sampler = Callable[[np.random.Generator, int], tuple[object, object]]
SeededDetector = Callable[[object, object, int], object]


def independent_alarm_rates(
    sample: Sampler,
    detectors: Mapping[str, SeededDetector],
    ns: Iterable[int],
    repetitions: int,
    alpha: float = 0.05,
    seed: int = 0,
    confidence: float = 0.95,
    repetitions_for: Callable[[str, int], int] | None = None,
    verdict: Iterable[str] | None = None,
    start: int = 0,
) -> dict[str, list[AlarmRate]]:
    """Alarm rates from independent repetitions (the protocol of Rabanser et al. 2019).

    Repetition r at size n has its own generator, np.random.default_rng([seed, n, r]):
    `sample(rng, n)` draws a fresh (reference, deployment) pair from it, disjoint from each
    other (the sampler's job), and every detector is called as detector(reference,
    deployment, detector_seed) with a per-repetition seed from the same generator, for its
    permutations or subsamples. So no two repetitions share a reference, a draw or a
    permutation stream, and a size's result does not depend on the other sizes asked for.

    `repetitions_for(name, n)` may give a costly detector fewer repetitions at large n (the
    first ones, on the same draws); its AlarmRate then says how many it got. The "combined"
    entry is the Holm–Bonferroni verdict over the `verdict` detectors (default: all), on the
    repetitions where all of them ran; the others are diagnostics with their own rates.

    `start` skips the first repetitions (r < start), so a later call counts only the draws an
    earlier one did not see (`two_look_alarm_rates`); it takes no `repetitions_for`.
    """
    names = _names(detectors, "holm")
    in_verdict = list(detectors) if verdict is None else list(verdict)
    if not in_verdict or set(in_verdict) - set(detectors):
        raise ShiftwatchError(f"verdict = {in_verdict}: name one or more of the detectors {list(detectors)}")
    sizes = _sizes(ns)
    _check_probability(alpha, "alpha")
    if repetitions < 1:
        raise ShiftwatchError(f"repetitions = {repetitions}; pass at least 1")
    if not 0 <= start < repetitions:
        raise ShiftwatchError(f"start = {start}: skip fewer than the {repetitions} repetitions")
    if start and repetitions_for is not None:
        raise ShiftwatchError("independent_alarm_rates: start > 0 takes no repetitions_for")
    rates: dict[str, list[AlarmRate]] = {name: [] for name in names}
    for n in sizes:
        count = {
            name: repetitions if repetitions_for is None else max(1, min(repetitions, repetitions_for(name, n)))
            for name in detectors
        }
        everyone = min(count[name] for name in in_verdict)
        alarms = dict.fromkeys(names, 0)
        for r in range(start, repetitions):
            pvalues = repetition_pvalues(
                sample, {name: detector for name, detector in detectors.items() if r < count[name]}, n, r, seed
            )
            for name, pvalue in pvalues.items():
                alarms[name] += pvalue < alpha
            if r < everyone:
                alarms[COMBINED] += holm({name: pvalues[name] for name in in_verdict}, alpha).reject
        for name in names:
            trials = (everyone if name == COMBINED else count[name]) - start
            low, high = wilson_interval(int(alarms[name]), trials, confidence)
            rates[name].append(AlarmRate(n, int(alarms[name]), trials, alarms[name] / trials, low, high))
    return rates


def two_look_alarm_rates(
    sample: Sampler,
    detectors: Mapping[str, SeededDetector],
    ns: Iterable[int],
    repetitions: int,
    target: float,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    confidence: float = 0.95,
    verdict: Iterable[str] | None = None,
) -> dict[str, list[AlarmRate]]:
    """`independent_alarm_rates` that stops at half the repetitions where the verdict's Wilson
    interval already lies wholly above or below `target` (e.g. 50 alarms in 50 draws: 0.93 to
    1 against a target of 0.9), and otherwise runs the other half on fresh draws (the same
    draws a single call of all the repetitions would make). The decision on the target is the
    same as with every repetition except where the first half is wrong about it: for a true
    rate of exactly 0.9, 50 alarms in 50 draws happen with probability 0.9^50 = 0.005. The
    rates keep how many repetitions each one had."""
    first_look = repetitions // 2
    if first_look < 1:
        return independent_alarm_rates(sample, detectors, ns, repetitions, alpha, seed, confidence, verdict=verdict)
    rates: dict[str, list[AlarmRate]] = {}
    for n in _sizes(ns):
        first = independent_alarm_rates(sample, detectors, [n], first_look, alpha, seed, confidence, verdict=verdict)
        verdict_rate = first[COMBINED][0]
        if verdict_rate.ci_low <= target <= verdict_rate.ci_high:
            rest = independent_alarm_rates(
                sample, detectors, [n], repetitions, alpha, seed, confidence, verdict=verdict, start=first_look
            )
            first = {name: [_pooled(first[name][0], rest[name][0], confidence)] for name in first}
        for name, points in first.items():
            rates.setdefault(name, []).extend(points)
    return rates


def _pooled(a: AlarmRate, b: AlarmRate, confidence: float) -> AlarmRate:
    """One rate from the alarms of two disjoint sets of repetitions at the same n."""
    alarms, trials = a.alarms + b.alarms, a.repetitions + b.repetitions
    low, high = wilson_interval(alarms, trials, confidence)
    return AlarmRate(a.n, alarms, trials, alarms / trials, low, high)


def repetition_pvalues(
    sample: Sampler, detectors: Mapping[str, SeededDetector], n: int, r: int, seed: int = 0
) -> dict[str, float]:
    """Repetition r at size n of `independent_alarm_rates`: its own generator
    np.random.default_rng([seed, n, r]) draws the (reference, deployment) pair, then the
    detectors' seed; returns each detector's p-value on that draw."""
    rng = np.random.default_rng([seed, n, r])
    reference, deployment = sample(rng, n)
    detector_seed = int(rng.integers(2**32))
    return {name: _pvalue(detector(reference, deployment, detector_seed)) for name, detector in detectors.items()}


def pool_sampler(
    pool,
    deployment,
    labels: np.ndarray | None = None,
    label_class: int | None = None,
    keep: float | None = None,
    reference_size: int | None = None,
) -> Sampler:
    """Sampler for `independent_alarm_rates`: a fresh reference of n rows of `pool` (or of
    `reference_size` rows, e.g. as many as the monitor's reference has) and a disjoint
    deployment of n other rows, looked up in `deployment` (row-aligned with the pool: the
    pool's features under a shift, or the pool itself). With `keep`, the deployment rows of
    `label_class` (per `labels`) are kept with probability `keep` (label shift). Both arguments
    need only len() and .subset(rows)."""

    def sample(rng: np.random.Generator, n: int):
        order = rng.permutation(len(pool))
        size = n if reference_size is None else reference_size
        reference_rows, rest = order[:size], order[size:]
        if keep is not None:
            assert labels is not None, "label shift needs the pool's labels"
            rest = rest[(labels[rest] != label_class) | (rng.random(len(rest)) < keep)]
        return pool.subset(reference_rows), deployment.subset(rest[:n])

    return sample


def subset_sampler(pool, rows: np.ndarray, deployment, reference_size: int) -> Sampler:
    """Sampler: n deployment rows drawn from a subset of the pool, looked up in `deployment`
    (row-aligned with `rows`: the subset under a shift), and a fresh reference of
    `reference_size` pool rows outside those n (it may be larger than the subset). The harm
    table's corruptions judged as `monitor` and `check` run: 10,000 reference images, a
    corruption pool of 5,000."""
    if reference_size + 1 > len(pool):
        raise ShiftwatchError(
            f"a reference of {reference_size:,} rows leaves none of the pool's "
            f"{len(pool):,} for the deployment; use a smaller reference"
        )

    def sample(rng: np.random.Generator, n: int):
        picked = rng.choice(len(rows), n, replace=False)
        outside = np.ones(len(pool), dtype=bool)
        outside[rows[picked]] = False
        reference_rows = rng.choice(np.flatnonzero(outside), reference_size, replace=False)
        return pool.subset(reference_rows), deployment.subset(picked)

    return sample


def separate_sampler(pool, deployment) -> Sampler:
    """Sampler: a fresh reference of n pool rows and n rows of another set (disjoint by
    construction)."""

    def sample(rng: np.random.Generator, n: int):
        return (
            pool.subset(rng.choice(len(pool), n, replace=False)),
            deployment.subset(rng.choice(len(deployment), n, replace=False)),
        )

    return sample


def accuracy(probabilities: np.ndarray, labels: np.ndarray, class_weights: np.ndarray | None = None) -> float:
    """Share of argmax predictions equal to `labels`; with `class_weights` (one per class), the
    accuracy expected once each class's share is scaled by its weight (a label shift), i.e.
    the per-class accuracies weighted by the new class mix."""
    correct = probabilities.argmax(1) == labels
    if class_weights is None:
        return float(np.mean(correct))
    weights = np.asarray(class_weights, dtype=float)[labels]
    return float(np.sum(weights * correct) / np.sum(weights))


def harm_summary(
    detection: Mapping[str, Mapping[str, Mapping[str, dict]]],
    accuracy_loss_points: Mapping[str, float],
    points: float,
    n: int,
    target_power: float,
    monitored_detection: Mapping[str, Mapping[str, Mapping[str, dict]]] | None = None,
) -> dict:
    """The harm target: every stream losing >= `points` accuracy points must be detected by
    the combined verdict at sample size `n` in >= `target_power` of draws. `detection` is
    stream -> detector -> str(n) -> {"rate", ...}. Returns the harmful streams with their
    rates, the ones that miss, and the weakest (lowest rate), plainly; with
    `monitored_detection` (the same streams against the monitor's reference), the same three
    as monitored under "as_monitored", for the harmful streams it has."""
    size = str(n)
    harmful = {
        stream: detection[stream][COMBINED][size]["rate"]
        for stream, loss in accuracy_loss_points.items()
        if loss >= points and size in detection[stream][COMBINED]
    }
    summary = {"points": points, "n": n, "target_power": target_power, **_misses(harmful, target_power)}
    if monitored_detection is not None:
        summary["as_monitored"] = _misses(
            {
                stream: monitored_detection[stream][COMBINED][size]["rate"]
                for stream in harmful
                if size in monitored_detection.get(stream, {}).get(COMBINED, {})
            },
            target_power,
        )
    return summary


def _misses(harmful: Mapping[str, float], target_power: float) -> dict:
    return {
        "harmful": dict(harmful),
        "missed": sorted(s for s, rate in harmful.items() if rate < target_power),
        "weakest": min(harmful, key=lambda shift: harmful[shift], default=None),
    }


def calibration_flags(
    rates: Mapping[str, list[AlarmRate]], alpha: float = 0.05, level: float = 0.05
) -> dict[str, list[FalseAlarmRate]]:
    """False-alarm rates with a miscalibration flag corrected for multiplicity.

    Each cell (detector, n) gets the one-sided binomial test of H0: rate ≤ alpha
    (`excess_pvalue`, uncorrected); `miscalibrated` is set where Holm–Bonferroni over all the
    cells passed in rejects at `level`, so that a table of ~50 calibrated cells shows a flag
    with probability ≤ level, not ~1 - 0.95^50."""
    _check_probability(level, "level")
    excess = {
        (name, i): stats.binomtest(p.alarms, p.repetitions, alpha, alternative="greater").pvalue
        for name, points in rates.items()
        for i, p in enumerate(points)
    }
    verdict = holm({f"{name}@{i}": float(p) for (name, i), p in excess.items()}, level)
    return {
        name: [
            FalseAlarmRate(
                **vars(p),
                alpha=alpha,
                excess_pvalue=float(excess[(name, i)]),
                miscalibrated=f"{name}@{i}" in verdict.rejected,
            )
            for i, p in enumerate(points)
        ]
        for name, points in rates.items()
    }


def corruption_rows(pool_size: int, seed: int, pool_images: int) -> np.ndarray:
    """The pool rows the corruption streams (the harm table) and stage `harm`'s cells draw
    from: a seeded subset of `pool_images` (power.corruption_pool_images), sorted.
    studies/verdict_design.py designs on the others."""
    return np.sort(np.random.default_rng([seed, 1]).choice(pool_size, min(pool_size, pool_images), replace=False))

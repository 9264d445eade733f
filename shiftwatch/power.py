"""How often does a detector alarm? Power under a shift, false alarms without one.

A detector here is any callable `detector(reference_sample, deployment_sample)` returning a
p-value (a float, or an object with a `.pvalue` such as DetectorResult). The routines draw
many seeded deployment samples of each size n from precomputed arrays (softmax outputs,
images, features: anything with samples along the first axis), call the detector on each,
and report the share of p-values below alpha with a 95 % Wilson confidence interval.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from shiftwatch import ShiftwatchError

Detector = Callable[[np.ndarray, np.ndarray], object]


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
        raise ShiftwatchError(f"wilson_interval: {successes} successes of {trials} trials; need "
                              "trials >= 1 and 0 <= successes <= trials")
    interval = stats.binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def detection_rate(reference: np.ndarray, deployment: np.ndarray, detector: Detector,
                   ns: Iterable[int], repetitions: int, alpha: float = 0.05, seed: int = 0,
                   reference_size: int | None = None, confidence: float = 0.95) -> list[AlarmRate]:
    """Power curve: for each n in `ns`, the share of `repetitions` draws with p-value < alpha.

    Each draw takes n rows of `deployment` (without replacement; with replacement only when
    n > len(deployment), whose duplicates can upset tests that assume continuous data) and
    calls detector(reference sample, deployment sample). The reference sample is all of
    `reference`, or a fresh draw of `reference_size` rows (same rule) when given. Draws for n
    use np.random.default_rng([seed, n]), so a size's result does not depend on the other
    sizes asked for. With a fixed reference the draws are independent only given that
    reference, so the interval describes the detector *for this reference*.
    """
    return [_alarm_rate(reference, deployment, detector, n, repetitions, alpha, seed,
                        reference_size, confidence) for n in _sizes(ns)]


def false_alarm_rate(reference: np.ndarray, held_out: np.ndarray, detector: Detector,
                     ns: Iterable[int], repetitions: int, alpha: float = 0.05, seed: int = 0,
                     reference_size: int | None = None, confidence: float = 0.95,
                     level: float = 0.05) -> list[FalseAlarmRate]:
    """Calibration: `detection_rate` with a deployment drawn from the reference distribution.

    `held_out` must come from the same distribution as `reference` but share no rows with
    it (a sample compared with itself alarms too rarely). A calibrated detector alarms in
    about alpha of the draws; each point is flagged `miscalibrated` when a one-sided binomial
    test of H0: rate ≤ alpha rejects at `level` (too many alarms; too few is only a loss of
    power and is not flagged).
    """
    _check_probability(level, "level")
    points = detection_rate(reference, held_out, detector, ns, repetitions, alpha, seed,
                            reference_size, confidence)
    return [_with_calibration(point, alpha, level) for point in points]


def _with_calibration(point: AlarmRate, alpha: float, level: float) -> FalseAlarmRate:
    excess = stats.binomtest(point.alarms, point.repetitions, alpha, alternative="greater").pvalue
    return FalseAlarmRate(**vars(point), alpha=alpha, excess_pvalue=float(excess),
                          miscalibrated=bool(excess < level))


def _alarm_rate(reference: np.ndarray, deployment: np.ndarray, detector: Detector, n: int,
                repetitions: int, alpha: float, seed: int, reference_size: int | None,
                confidence: float) -> AlarmRate:
    _check_probability(alpha, "alpha")
    if repetitions < 1:
        raise ShiftwatchError(f"repetitions = {repetitions}; pass at least 1")
    for name, array in (("reference", reference), ("deployment", deployment)):
        if np.ndim(array) == 0 or len(array) == 0:
            raise ShiftwatchError(f"{name} is empty; pass at least one sample along the first axis")
    rng = np.random.default_rng([seed, n])
    alarms = 0
    for _ in range(repetitions):
        ref = reference if reference_size is None else _draw(reference, reference_size, rng)
        alarms += _pvalue(detector(ref, _draw(deployment, n, rng))) < alpha
    low, high = wilson_interval(alarms, repetitions, confidence)
    return AlarmRate(n, int(alarms), repetitions, alarms / repetitions, low, high)


def _draw(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if size < 1:
        raise ShiftwatchError(f"sample size {size}; sample sizes must be at least 1")
    return rows[rng.choice(len(rows), size, replace=size > len(rows))]


def _pvalue(result: object) -> float:
    pvalue = getattr(result, "pvalue", result)
    if pvalue is None or not 0 <= float(pvalue) <= 1:  # also catches NaN
        raise ShiftwatchError(f"the detector returned p-value {pvalue}; it must return a number "
                              "in [0, 1] (a detector without a p-value cannot be calibrated)")
    return float(pvalue)


def _sizes(ns: Iterable[int]) -> list[int]:
    sizes = [int(n) for n in ns]
    if not sizes or min(sizes) < 1:
        raise ShiftwatchError(f"ns = {sizes}; pass one or more sample sizes >= 1")
    return sizes


def _check_probability(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ShiftwatchError(f"{name} = {value}; pass a probability in (0, 1)")

import numpy as np
import pytest
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection.bbsd import bbsd_ks
from shiftwatch.detection.power import (
    COMBINED,
    AlarmRate,
    FalseAlarmRate,
    calibration_flags,
    detection_rate,
    detection_rates,
    false_alarm_rate,
    false_alarm_rates,
    independent_alarm_rates,
    two_look_alarm_rates,
    wilson_interval,
)

ALPHA = 0.05


def _population(rng, mean, size=100_000):
    """N(mean, 1) draws standardised to exactly that mean and unit variance, so a sample of
    n rows (without replacement, n << size) has a mean distributed as N(mean, 1/n)."""
    values = rng.normal(size=size)
    return (values - values.mean()) / values.std() + mean


def _z_test(_reference, deployment):
    """Two-sided one-sample z-test of H0: mean 0, known sd 1 (ignores the reference)."""
    return 2 * stats.norm.sf(abs(deployment.mean()) * np.sqrt(len(deployment)))


def _z_test_power(shift, n, alpha=ALPHA):
    z, drift = stats.norm.isf(alpha / 2), shift * np.sqrt(n)
    return stats.norm.cdf(drift - z) + stats.norm.cdf(-drift - z)


def test_detection_rate_matches_the_z_test_power_formula(rng):
    reference, shifted = _population(rng, 0.0), _population(rng, 0.3)
    points = detection_rate(reference, shifted, _z_test, ns=(10, 25, 50), repetitions=400, seed=1)
    assert [p.n for p in points] == [10, 25, 50]
    for point in points:
        truth = _z_test_power(0.3, point.n)  # 0.16, 0.32, 0.56
        assert point.ci_low <= truth <= point.ci_high, (point, truth)
        assert point.rate == point.alarms / point.repetitions
    assert points[0].rate < points[1].rate < points[2].rate


def test_false_alarm_rate_of_a_calibrated_test_is_alpha(rng):
    reference, held_out = _population(rng, 0.0), _population(rng, 0.0)
    [point] = false_alarm_rate(reference, held_out, _z_test, ns=[20], repetitions=1000, seed=2)
    assert isinstance(point, FalseAlarmRate)
    assert point.ci_low <= ALPHA <= point.ci_high
    assert not point.miscalibrated and point.excess_pvalue > 0.05


def test_false_alarm_rate_flags_a_miscalibrated_test(rng):
    reference, held_out = _population(rng, 0.0), _population(rng, 0.0)
    halved = lambda a, b: _z_test(a, b) / 2
    [point] = false_alarm_rate(reference, held_out, halved, ns=[20], repetitions=1000, seed=2)
    assert point.miscalibrated and point.excess_pvalue < 1e-6
    assert point.ci_low <= 2 * ALPHA <= point.ci_high


def test_known_alarm_probabilities():
    rows = np.arange(100.0)
    always = detection_rate(rows, rows, lambda a, b: 0.0, ns=[5], repetitions=50)[0]
    never = detection_rate(rows, rows, lambda a, b: 1.0, ns=[5], repetitions=50)[0]
    assert (always.rate, always.ci_high) == (1.0, 1.0)
    assert (never.rate, never.ci_low) == (0.0, 0.0)
    # p = alpha exactly is no alarm: detectors alarm on p < alpha, as detect_drift does
    assert detection_rate(rows, rows, lambda a, b: ALPHA, ns=[5], repetitions=10)[0].alarms == 0


def test_samples_are_drawn_as_documented():
    reference, deployment = np.arange(30.0).reshape(10, 3), np.arange(20.0)
    seen = []

    def spy(ref, dep):
        seen.append((ref.shape, len(np.unique(dep)), len(dep)))
        return 1.0

    detection_rate(reference, deployment, spy, ns=[20], repetitions=3)
    assert seen == [((10, 3), 20, 20)] * 3  # whole reference; n = len: a permutation, no repeats
    seen.clear()
    detection_rate(reference, deployment, spy, ns=[25], repetitions=2, reference_size=4)
    assert [s[0] for s in seen] == [(4, 3)] * 2 and all(s[1] <= 20 and s[2] == 25 for s in seen)


def test_results_are_seeded_and_independent_of_the_other_sizes(rng):
    reference, shifted = _population(rng, 0.0, 1000), _population(rng, 0.2, 1000)
    both = detection_rate(reference, shifted, _z_test, ns=(10, 40), repetitions=100, seed=3)
    alone = detection_rate(reference, shifted, _z_test, ns=[40], repetitions=100, seed=3)
    assert both[1] == alone[0]
    other = detection_rate(reference, shifted, _z_test, ns=[40], repetitions=100, seed=4)
    assert other[0] != alone[0]


def _z_test_first_half(_reference, deployment):
    return _z_test(None, deployment[: len(deployment) // 2])


def _z_test_second_half(_reference, deployment):
    return _z_test(None, deployment[len(deployment) // 2 :])


def test_several_detectors_alarm_exactly_as_each_one_alone(rng):
    reference, shifted = _population(rng, 0.0, 2000), _population(rng, 0.25, 2000)
    halved = lambda a, b: _z_test(a, b) / 2
    detectors = {"z": _z_test, "first": _z_test_first_half, "halved": halved}
    for reference_size in (None, 30):
        kwargs = dict(ns=(10, 40), repetitions=80, seed=5, reference_size=reference_size)
        rates = detection_rates(reference, shifted, detectors, **kwargs)
        assert list(rates) == ["z", "first", "halved", "combined"]
        for name, detector in detectors.items():
            assert rates[name] == detection_rate(reference, shifted, detector, **kwargs)
        calibration = false_alarm_rates(reference, shifted, detectors, **kwargs, combine=None)
        assert list(calibration) == list(detectors)
        for name, detector in detectors.items():
            assert calibration[name] == false_alarm_rate(reference, shifted, detector, **kwargs)


def test_every_detector_sees_the_same_draws():
    reference, deployment = np.arange(40.0).reshape(20, 2), np.arange(50.0)
    seen = {"a": [], "b": []}

    def spy(name):
        def detector(ref, dep):
            seen[name].append((ref.tobytes(), dep.tobytes()))
            return 0.5

        return detector

    detection_rates(reference, deployment, {"a": spy("a"), "b": spy("b")}, ns=[7, 12], repetitions=4, reference_size=5)
    assert len(seen["a"]) == 8 and seen["a"] == seen["b"]
    assert len(set(seen["a"])) == 8  # fresh draws


def test_combined_holm_alarms_when_one_detector_is_certain():
    rows = np.arange(100.0)
    detectors = {"sure": lambda a, b: 0.001, "unsure": lambda a, b: 0.9}
    rates = detection_rates(rows, rows, detectors, ns=[5, 10], repetitions=30)
    assert [p.alarms for p in rates["sure"]] == [30, 30]
    assert [p.alarms for p in rates["unsure"]] == [0, 0]
    assert [(p.n, p.alarms, p.rate) for p in rates["combined"]] == [(5, 30, 1.0), (10, 30, 1.0)]
    # Holm, not "any detector": two p-values of 0.03 each are adjusted to 0.06, no alarm
    both = detection_rates(rows, rows, {"a": lambda a, b: 0.03, "b": lambda a, b: 0.03}, ns=[5], repetitions=10)
    assert both["a"][0].alarms == 10 and both["combined"][0].alarms == 0
    assert "combined" not in detection_rates(rows, rows, detectors, ns=[5], repetitions=3, combine=None)
    # without combining, "combined" is an ordinary detector name
    own = detection_rates(
        rows, rows, {"combined": lambda a, b: 0.9, "x": lambda a, b: 0.001}, ns=[5], repetitions=3, combine=None
    )
    assert list(own) == ["combined", "x"] and own["combined"][0].alarms == 0


def test_combined_false_alarms_of_independent_calibrated_detectors_stay_at_most_alpha(rng):
    reference, held_out = _population(rng, 0.0), _population(rng, 0.0)
    detectors = {"first": _z_test_first_half, "second": _z_test_second_half}
    rates = false_alarm_rates(reference, held_out, detectors, ns=[40], repetitions=1000, seed=6)
    for name in ("first", "second"):
        assert rates[name][0].ci_low <= ALPHA <= rates[name][0].ci_high
    [combined] = rates["combined"]
    assert isinstance(combined, FalseAlarmRate)
    assert combined.ci_low <= ALPHA and not combined.miscalibrated  # 1 - (1 - alpha/2)² ≈ 0.049
    # The check has teeth: alarming when either detector does (no correction) is flagged.
    either = lambda a, b: min(_z_test_first_half(a, b), _z_test_second_half(a, b))
    [uncorrected] = false_alarm_rate(reference, held_out, either, ns=[40], repetitions=1000, seed=6)
    assert uncorrected.miscalibrated and uncorrected.alarms >= combined.alarms


@pytest.mark.parametrize(
    "detectors, kwargs, message",
    [
        ({}, {}, "detectors is empty"),
        ({"combined": lambda a, b: 0.5}, {}, "named 'combined'"),
        ({"a": lambda a, b: 0.5}, {"combine": "fisher"}, "combine"),
        ({"a": lambda a, b: 0.5, "b": lambda a, b: None}, {}, "p-value"),
    ],
)
def test_several_detectors_bad_input_raises_one_line(detectors, kwargs, message):
    for estimate in (detection_rates, false_alarm_rates):
        with pytest.raises(ShiftwatchError, match=message) as err:
            estimate(np.zeros(5), np.zeros(5), detectors, ns=[3], repetitions=2, **kwargs)
        assert "\n" not in str(err.value)


def test_wilson_interval_known_answers():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    k, n, z = 37, 200, stats.norm.isf(0.025)
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4)
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))


def test_works_with_a_real_detector_returning_detector_results():
    rng = np.random.default_rng(4)

    def softmax(n):
        e = np.exp(rng.normal(0, 2, (n, 10)))
        return e / e.sum(axis=1, keepdims=True)

    [point] = false_alarm_rate(softmax(500), softmax(500), bbsd_ks, ns=[50], repetitions=60)
    assert isinstance(point, AlarmRate) and not point.miscalibrated


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ns": []}, "ns"),
        ({"ns": [0]}, "ns"),
        ({"repetitions": 0}, "repetitions"),
        ({"alpha": 1.5}, "alpha"),
        ({"reference_size": 0}, "sample size"),
    ],
)
def test_bad_parameters_raise_one_line(kwargs, message):
    arguments = (
        dict(reference=np.zeros(5), deployment=np.zeros(5), detector=lambda a, b: 0.5, ns=[3], repetitions=2) | kwargs
    )
    with pytest.raises(ShiftwatchError, match=message) as err:
        detection_rate(**arguments)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("pvalue", [None, float("nan"), 1.5])
def test_detector_must_return_a_pvalue(pvalue):
    with pytest.raises(ShiftwatchError, match="p-value"):
        detection_rate(np.zeros(5), np.zeros(5), lambda a, b: pvalue, ns=[3], repetitions=1)


def test_empty_inputs_raise():
    with pytest.raises(ShiftwatchError, match="deployment is empty"):
        detection_rate(np.zeros(5), np.zeros(0), lambda a, b: 0.5, ns=[3], repetitions=1)
    with pytest.raises(ShiftwatchError, match="level"):
        false_alarm_rate(np.zeros(5), np.zeros(5), lambda a, b: 0.5, ns=[3], repetitions=1, level=0)


# ---------------------------------------------------------------- independent repetitions


def _pool_sampler(pool, seen=None):
    """Fresh disjoint reference and deployment rows of `pool` per repetition (records them)."""

    def sample(rng, n):
        order = rng.permutation(len(pool))
        if seen is not None:
            seen.append((order[:n].copy(), order[n : 2 * n].copy()))
        return pool[order[:n]], pool[order[n : 2 * n]]

    return sample


def _ks(reference, deployment, seed):
    return stats.ks_2samp(reference, deployment).pvalue


def test_every_repetition_draws_a_fresh_disjoint_pair_and_its_own_detector_seed():
    pool = np.arange(1000.0)
    seen, seeds = [], []
    detector = lambda ref, dep, seed: seeds.append(seed) or 0.5
    independent_alarm_rates(_pool_sampler(pool, seen), {"d": detector}, [50], repetitions=20, seed=3)
    references = [set(ref) for ref, _ in seen]
    assert all(not set(ref) & set(dep) for ref, dep in seen)  # disjoint within a repetition
    assert len({frozenset(r) for r in references}) == 20  # a new reference every time
    assert len(set(seeds)) == 20
    again = []
    independent_alarm_rates(_pool_sampler(pool, again), {"d": detector}, [10, 50], repetitions=20, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(seen, again[20:], strict=True))  # n=50 ignores n=10


def test_independent_false_alarms_of_a_calibrated_test_are_alpha():
    pool = np.random.default_rng(0).normal(size=50_000)
    rates = independent_alarm_rates(_pool_sampler(pool), {"ks": _ks}, [200], repetitions=1000, seed=1)
    alarms = rates["ks"][0].alarms
    # Binomial(1000, 0.05): 99.9 % of runs fall in [29, 74]; KS is slightly conservative.
    assert 20 <= alarms <= 74
    assert rates[COMBINED][0].alarms == alarms  # one detector: Holm is the detector itself


def test_a_shifted_deployment_is_detected():
    pool = np.random.default_rng(0).normal(size=20_000)

    def shifted(rng, n):
        reference, deployment = _pool_sampler(pool)(rng, n)
        return reference, deployment + 0.5

    rates = independent_alarm_rates(shifted, {"ks": _ks}, [20, 200], repetitions=100, seed=2)
    assert rates["ks"][0].rate < 0.6 < 0.95 < rates["ks"][1].rate


def test_a_costly_detector_can_get_fewer_repetitions_and_combined_uses_the_common_ones():
    pool = np.random.default_rng(0).normal(size=5000)
    calls = {"cheap": 0, "costly": 0}

    def counting(name):
        def detector(ref, dep, seed):
            calls[name] += 1
            return 0.5

        return detector

    rates = independent_alarm_rates(
        _pool_sampler(pool),
        {"cheap": counting("cheap"), "costly": counting("costly")},
        [10, 100],
        repetitions=40,
        seed=0,
        repetitions_for=lambda name, n: 10 if name == "costly" and n >= 100 else 40,
    )
    assert calls == {"cheap": 80, "costly": 50}
    assert [p.repetitions for p in rates["costly"]] == [40, 10]
    assert [p.repetitions for p in rates[COMBINED]] == [40, 10]
    assert rates["cheap"][1].repetitions == 40


def test_start_counts_only_the_later_repetitions_on_the_same_draws():
    pool = np.random.default_rng(0).normal(size=5000)

    def shifted(rng, n):
        reference, deployment = _pool_sampler(pool)(rng, n)
        return reference, deployment + 0.2

    whole = independent_alarm_rates(shifted, {"ks": _ks}, [50], repetitions=40, seed=4)
    head = independent_alarm_rates(shifted, {"ks": _ks}, [50], repetitions=15, seed=4)
    tail = independent_alarm_rates(shifted, {"ks": _ks}, [50], repetitions=40, seed=4, start=15)
    assert tail["ks"][0].repetitions == 25
    assert head["ks"][0].alarms + tail["ks"][0].alarms == whole["ks"][0].alarms
    assert 0 < whole["ks"][0].alarms < 40  # a shift that neither always nor never alarms
    with pytest.raises(ShiftwatchError, match="start = 40"):
        independent_alarm_rates(shifted, {"ks": _ks}, [50], repetitions=40, start=40)


def test_two_looks_stop_where_half_the_draws_settle_the_target_and_else_match_one_call():
    pool = np.random.default_rng(0).normal(size=5000)
    calls = []

    def sampler(offset):
        def sample(rng, n):
            reference, deployment = _pool_sampler(pool)(rng, n)
            return reference, deployment + offset

        return sample

    def counted(reference, deployment, seed):
        calls.append(seed)
        return _ks(reference, deployment, seed)

    # A large shift alarms in all of the first 50 draws (Wilson 0.93-1, above 0.9): stop there;
    # no shift alarms in few of them (upper bound below 0.9): stop there too.
    for offset in (2.0, 0.0):
        calls.clear()
        rates = two_look_alarm_rates(sampler(offset), {"ks": counted}, [100], 100, 0.9, seed=5)
        assert rates[COMBINED][0].repetitions == 50 == len(calls)
    # A shift detected about 0.9 of the time is not settled by 50 draws: all 100, the same
    # numbers as one call of 100 repetitions.
    calls.clear()
    rates = two_look_alarm_rates(sampler(0.6), {"ks": counted}, [100], 100, 0.9, seed=5)
    single = independent_alarm_rates(sampler(0.6), {"ks": _ks}, [100], 100, seed=5)
    assert len(calls) == 100 and rates["ks"] == single["ks"] and rates[COMBINED] == single[COMBINED]
    assert 0.8 < rates[COMBINED][0].rate < 1.0


def test_calibration_flags_are_corrected_for_the_number_of_cells():
    def cell(alarms, n=10):
        low, high = wilson_interval(alarms, 200)
        return AlarmRate(n, alarms, 200, alarms / 200, low, high)

    # 17 alarms in 200 at alpha 0.05: one-sided binomial p ~ 0.03, a flag on its own ...
    assert calibration_flags({"d": [cell(17)]})["d"][0].miscalibrated
    # ... but one such cell among 48 calibrated ones is what chance gives: no flag after Holm.
    table = {f"d{k}": [cell(10, n) for n in (10, 100, 1000)] for k in range(16)}
    table["d0"][0] = cell(17)
    flags = calibration_flags(table)
    assert flags["d0"][0].excess_pvalue < 0.05 and not flags["d0"][0].miscalibrated
    table["d1"][2] = cell(40)  # 20 % false alarms: flagged whatever the table's size
    assert calibration_flags(table)["d1"][2].miscalibrated


def test_accuracy_under_a_label_shift_weights_the_per_class_accuracies():
    from shiftwatch.detection.power import accuracy

    labels = np.array([0, 0, 1, 1])
    probabilities = np.eye(2)[[0, 1, 1, 1]]  # class 0 half right, class 1 all right
    assert accuracy(probabilities, labels) == 0.75
    assert accuracy(probabilities, labels, class_weights=np.array([0.0, 1.0])) == 1.0  # class 0 gone
    assert accuracy(probabilities, labels, class_weights=np.array([1.0, 0.0])) == 0.5


def test_harm_summary_names_the_harmful_streams_that_miss_and_the_weakest():
    from shiftwatch.detection.power import harm_summary

    detection = {s: {"combined": {"100": {"rate": r}}} for s, r in (("a", 0.95), ("b", 0.4), ("c", 1.0))}
    summary = harm_summary(detection, {"a": 12.0, "b": 6.0, "c": 1.0}, points=5, n=100, target_power=0.9)
    assert summary["harmful"] == {"a": 0.95, "b": 0.4}  # c costs too little to count
    assert summary["missed"] == ["b"] and summary["weakest"] == "b"


def test_harm_summary_as_monitored_judges_the_same_harmful_streams():
    from shiftwatch.detection.power import harm_summary

    detection = {s: {"combined": {"100": {"rate": r}}} for s, r in (("a", 0.95), ("b", 0.4), ("c", 1.0))}
    monitored = {s: {"combined": {"100": {"rate": r}}} for s, r in (("a", 1.0), ("b", 0.8), ("c", 0.1))}
    summary = harm_summary(
        detection, {"a": 12.0, "b": 6.0, "c": 1.0}, points=5, n=100, target_power=0.9, monitored_detection=monitored
    )
    assert summary["as_monitored"] == {"harmful": {"a": 1.0, "b": 0.8}, "missed": ["b"], "weakest": "b"}
    assert "as_monitored" not in harm_summary(detection, {"a": 12.0}, points=5, n=100, target_power=0.9)


class _Rows:
    """Stands in for Features: rows of an array, with len() and .subset()."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def __len__(self):
        return len(self.values)

    def subset(self, rows):
        return _Rows(self.values[rows])


def test_subset_sampler_draws_a_reference_larger_than_the_subset_and_disjoint_from_the_draw():
    from shiftwatch.detection.power import subset_sampler

    pool = _Rows(np.arange(3000))
    rows = np.sort(np.random.default_rng(0).choice(3000, 500, replace=False))  # the corruption subset
    shifted = _Rows(-rows)  # row-aligned with `rows`: pool row r corrupted is -r
    sample = subset_sampler(pool, rows, shifted, reference_size=2000)
    references = []
    for seed in range(20):
        reference, deployment = sample(np.random.default_rng(seed), 100)
        drawn = -deployment.values
        assert len(reference) == 2000 and len(set(reference.values)) == 2000
        assert len(set(drawn)) == 100 and set(drawn) <= set(rows)  # corrupted subset rows, no repeats
        assert not set(drawn) & set(reference.values)  # disjoint from its reference
        assert set(reference.values) - set(rows)  # the reference reaches beyond the subset
        references.append(frozenset(reference.values))
    assert len(set(references)) == 20  # a fresh reference every repetition
    with pytest.raises(ShiftwatchError, match="smaller reference"):
        subset_sampler(pool, rows, shifted, reference_size=3000)

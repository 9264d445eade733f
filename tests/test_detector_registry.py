"""The detector registry: one entry per detector, picked up by monitor's verdict and
diagnostics and by power's repetitions; the worked example, a per-pixel KS (alibi-detect's
KSDrift), checked against scipy."""

import numpy as np
import pytest
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection.basic import DetectorResult, per_pixel_ks
from shiftwatch.detection.power import COMBINED, independent_alarm_rates
from shiftwatch.detection.registry import DETECTORS, VIEWS, Settings, register
from shiftwatch.detection.verdict import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS, run_detectors
from shiftwatch.model.features import Features, image_statistics, pixels_8bit


def test_per_pixel_ks_is_scipys_ks_on_every_pixel_with_bonferroni(rng):
    reference = (rng.integers(0, 6, (300, 50)) * 40).astype(np.uint8)
    deployment = (rng.integers(0, 6, (120, 50)) * 40).astype(np.uint8)
    deployment[:, 7] = 200  # one pixel stuck bright
    per_column = [stats.ks_2samp(reference[:, k], deployment[:, k], method="asymp") for k in range(50)]
    result = per_pixel_ks(reference, deployment)
    assert result.statistic == pytest.approx(max(r.statistic for r in per_column))
    assert result.pvalue == pytest.approx(min(1.0, 50 * min(r.pvalue for r in per_column)))
    assert result.pvalue < 1e-3  # the one changed pixel is found
    constant = np.zeros((40, 784), np.uint8)
    assert per_pixel_ks(constant, constant) == DetectorResult(0.0, 1.0)


def test_per_pixel_ks_refuses_floats_and_mismatched_shapes():
    with pytest.raises(ShiftwatchError, match="uint8"):
        per_pixel_ks(np.zeros((5, 784)), np.zeros((5, 784)))
    with pytest.raises(ShiftwatchError, match="same P"):
        per_pixel_ks(np.zeros((5, 784), np.uint8), np.zeros((5, 100), np.uint8))


def test_every_detector_names_a_known_view_and_the_verdict_is_the_seven():
    assert FEATURE_DETECTORS == (
        "ks_mean_pixel",
        "image_stats",
        "frame_span",
        "bbsd_ks",
        "bbsd_chi2",
        "bbsd_class_shares",
        "mmd_embedding",
    )
    assert "pixel_ks" in DIAGNOSTIC_DETECTORS and DETECTORS["pixel_ks"].consumes == "pixels"
    assert all(d.consumes in VIEWS and d.summary for d in DETECTORS.values())


def test_registering_checks_the_name_view_and_settings():
    with pytest.raises(ValueError, match="taken"):
        register("bbsd_ks", consumes="probabilities", verdict=False, summary="again")(lambda r, d, s: None)
    with pytest.raises(ValueError, match="consumes"):
        register("new", consumes="labels", verdict=False, summary="x")
    with pytest.raises(ValueError, match="unknown settings"):
        register("new", consumes="pixels", verdict=False, summary="x", settings=("alpha",))
    with pytest.raises(ValueError, match=r"cost='cubic'; use one of \['cheap', 'quadratic'\]"):
        register("new", consumes="pixels", verdict=False, summary="x", cost="cubic")
    assert "new" not in DETECTORS


def test_power_gives_repetitions_by_the_registered_cost_not_by_name():
    from conftest import REPO

    from shiftwatch.core.params import load_params
    from shiftwatch.detection.power_design import repetitions_rule

    assert {name: d.cost for name, d in DETECTORS.items() if d.cost != "cheap"} == {"mmd_embedding": "quadratic"}
    power = load_params(REPO / "params.yaml").power.model_copy(
        update={"repetitions": 9, "mmd_repetitions": {100: 4}, "diagnostic_repetitions": {50: 6}}
    )
    kernel = register("kernel_diagnostic", consumes="embeddings", verdict=False, summary="x", cost="quadratic")
    kernel(lambda reference, deployment, settings: None)
    try:
        rule = repetitions_rule(power)
        # quadratic: power.mmd_repetitions, diagnostic or not; a cheap diagnostic: its own cap
        assert [rule(name, n) for name in ("kernel_diagnostic", "mmd_embedding") for n in (99, 100)] == [9, 4, 9, 4]
        assert [rule("pixel_ks", n) for n in (49, 50, 100)] == [9, 6, 6]
        assert rule("bbsd_ks", 2000) == 9
    finally:
        del DETECTORS["kernel_diagnostic"]


def _views(rng, n, brightness=0.0):
    images = np.clip(rng.random((n, 28, 28)) * (rng.random((n, 28, 28)) > 0.5) + brightness, 0, 1)
    probabilities = rng.dirichlet(np.ones(10), n)
    return Features(probabilities, rng.normal(size=(n, 8)), image_statistics(images), pixels_8bit(images))


@pytest.fixture()
def extra_detector():
    """A detector added the documented way, removed again after the test."""
    calls = []

    # (not docs/extending.md's example, max_confidence_ks, which tests/test_extending_docs.py adds)
    @register("margin_ks", consumes="probabilities", verdict=False, summary="KS on the top-two softmax margin")
    def margin_ks(reference, deployment, settings):
        calls.append(settings.seed)
        margin = [np.diff(np.sort(side, axis=1)[:, -2:], axis=1)[:, 0] for side in (reference, deployment)]
        return DetectorResult(*stats.ks_2samp(*margin, method="asymp"))

    yield calls
    del DETECTORS["margin_ks"]


def test_a_registered_detector_reaches_monitor_and_power_without_entering_the_verdict(rng, extra_detector):
    import shiftwatch.detection.verdict as monitor

    reference, same = _views(rng, 400), _views(rng, 200)
    names = (*monitor.FEATURE_DETECTORS, "pixel_ks", "margin_ks")
    kwargs = dict(seed=3, alpha=0.05, mmd_permutations=50, mmd_max_per_side=200)
    # monitor: the new one is a diagnostic (monitor's tuples are built at import: pass it in)
    report = run_detectors(reference, same, **kwargs)
    assert set(report["diagnostics"]) == set(DIAGNOSTIC_DETECTORS)
    bound = {name: DETECTORS[name].bind(Settings(seed=3)) for name in names}
    assert set(bound) >= {"pixel_ks", "margin_ks"} and extra_detector == []
    bound["margin_ks"](reference, same)
    assert extra_detector == [3]  # it got the settings

    # power: a row per detector; the combined verdict only over the verdict detectors
    pool = Features.concatenate([_views(rng, 300), _views(rng, 300)])

    def sample(generator, n):
        rows = generator.permutation(len(pool))
        return pool.subset(rows[:n]), pool.subset(rows[n : 2 * n])

    def seeded(name):
        return lambda ref, dep, seed: DETECTORS[name].bind(Settings(seed=seed, permutations=50))(ref, dep)

    every = {name: seeded(name) for name in names}
    rates = independent_alarm_rates(sample, every, [50], 20, seed=1, verdict=monitor.FEATURE_DETECTORS)
    alone = independent_alarm_rates(sample, {n: every[n] for n in monitor.FEATURE_DETECTORS}, [50], 20, seed=1)
    assert set(rates) == set(names) | {COMBINED}
    assert rates[COMBINED] == alone[COMBINED]  # diagnostics do not move the verdict


def test_a_missing_view_is_one_clear_error(rng):
    view = _views(rng, 50)
    without_pixels = Features(view.probabilities, view.embeddings, view.image_stats)
    with pytest.raises(ShiftwatchError, match="pixel_ks needs pixels"):
        DETECTORS["pixel_ks"].bind(Settings())(view, without_pixels)

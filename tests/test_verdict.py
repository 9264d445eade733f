import numpy as np
import pytest

from shiftwatch.detection.verdict import FEATURE_DETECTORS, accuracy_report, label_shift_report, run_detectors
from shiftwatch.model.features import Features, image_statistics, pixels_8bit


def _features(rng, n, brightness=0.0, class_weights=None):
    """Toy model outputs: a 90 %-accurate classifier on balanced (or re-weighted) classes."""
    labels = rng.choice(10, size=n, p=class_weights)
    predicted = np.where(rng.random(n) < 0.9, labels, rng.integers(0, 10, n))
    confidence = rng.uniform(0.3, 0.99, n)
    probabilities = np.repeat(((1 - confidence) / 9)[:, None], 10, axis=1)
    probabilities[np.arange(n), predicted] = confidence
    images = np.clip(rng.random((n, 28, 28)) * (rng.random((n, 28, 28)) > 0.5) + brightness, 0, 1)
    embeddings = np.eye(10)[predicted] + rng.normal(0, 0.1, (n, 10))
    return Features(probabilities, embeddings, image_statistics(images), pixels_8bit(images)), labels


def test_image_statistics_columns(rng):
    images = np.zeros((2, 28, 28))
    images[1] = 0.5
    stats = image_statistics(images)
    np.testing.assert_allclose(stats, [[0, 1, 0, 0, 0], [0.5, 0, 0.5, 0.5, 0.5]])


def test_detectors_quiet_without_shift_and_loud_with_one(rng):
    reference, _ = _features(rng, 1000)
    same, _ = _features(rng, 300)
    brighter, _ = _features(rng, 300, brightness=0.02)
    kwargs = dict(seed=0, alpha=0.05, mmd_permutations=50, mmd_max_per_side=300)
    quiet = run_detectors(reference, same, **kwargs)
    loud = run_detectors(reference, brighter, **kwargs)
    assert set(quiet["tests"]) == set(FEATURE_DETECTORS)
    assert quiet["drift"] == 0
    # A +0.02 brightness the model does not notice: the pixel quantiles see it.
    assert loud["drift"] == 1 and "image_stats" in loud["alerting"]
    assert loud["tests"]["image_stats"]["adjusted_pvalue"] >= loud["tests"]["image_stats"]["pvalue"]


def test_the_verdict_is_holm_over_the_verdict_detectors_only(rng):
    # Diagnostics (monitor's pixel MMD and domain classifier) are reported, never in the verdict,
    # so monitor, power and check give the same verdict on the same features.
    from shiftwatch.detection.basic import DetectorResult
    from shiftwatch.detection.verdict import VERDICT

    reference, _ = _features(rng, 1000)
    same, _ = _features(rng, 300)
    kwargs = dict(seed=0, alpha=0.05, mmd_permutations=50, mmd_max_per_side=300)
    with_diagnostic = run_detectors(
        reference, same, **kwargs, diagnostics={"domain_classifier": DetectorResult(0.9, 0.0)}
    )
    assert with_diagnostic["drift"] == 0 and with_diagnostic["alerting"] == []
    assert with_diagnostic["diagnostics"]["domain_classifier"]["pvalue"] == 0.0
    assert with_diagnostic["tests"] == run_detectors(reference, same, **kwargs)["tests"]
    assert list(with_diagnostic["tests"]) == list(FEATURE_DETECTORS)
    assert all(name in VERDICT for name in FEATURE_DETECTORS)


def test_verdict_alarms_is_run_detectors_drift_without_the_diagnostics(rng):
    # stage harm judges the verdict on thousands of draws with verdict_alarms: it must be the
    # verdict check gives, on a quiet draw and on a loud one
    from shiftwatch.detection.verdict import verdict_alarms

    reference, _ = _features(rng, 1000)
    kwargs = dict(seed=3, alpha=0.05, mmd_permutations=50, mmd_max_per_side=300)
    for brightness in (0.0, 0.02):
        deployment, _ = _features(rng, 300, brightness=brightness)
        assert verdict_alarms(reference, deployment, **kwargs) == bool(
            run_detectors(reference, deployment, **kwargs)["drift"]
        )
    assert verdict_alarms(reference, deployment, **kwargs)  # the brighter one


def test_the_zero_pixel_share_alone_does_not_raise_the_verdict(rng):
    # Benign preprocessing (a resize, JPEG) changes how many pixels are exactly 0 without harm.
    reference, _ = _features(rng, 1000)
    same, _ = _features(rng, 300)
    stats = same.image_stats.copy()
    stats[:, 1] = 0.0  # no exact zeros left, every other statistic as before
    resized = Features(same.probabilities, same.embeddings, stats, same.pixels)
    result = run_detectors(reference, resized, seed=0, alpha=0.05, mmd_permutations=50, mmd_max_per_side=300)
    assert result["drift"] == 0


def test_label_shift_report_recovers_fewer_sneakers(rng):
    reference, reference_labels = _features(rng, 20_000)
    weights = np.full(10, 1.0)
    weights[7] = 0.1
    deployment, labels = _features(rng, 20_000, class_weights=weights / weights.sum())
    report = label_shift_report(
        reference.probabilities,
        reference_labels,
        deployment.probabilities,
        focus_class=7,
        tolerance=0.05,
        true_labels=labels,
    )
    assert report["class_7_share_true"] == pytest.approx(0.1 / 9.1, abs=0.005)
    assert report["class_7_share_bbse"] == pytest.approx(report["class_7_share_true"], abs=0.01)
    assert report["class_7_share_reference"] == pytest.approx(0.1, abs=0.01)
    assert report["untrustworthy"] in (0, 1) and report["tv_bbse_true"] < 0.03
    low, high = report["class_7_share_bbse_interval"]
    assert low <= report["class_7_share_bbse"] <= high and low <= report["class_7_share_true"] <= high
    assert 0 < high - low < 0.02  # 20,000 images per side pin the share to about a point
    assert report["em_converged"] == 1 and 1 <= report["em_iterations"] < 1000
    small = label_shift_report(
        reference.probabilities[:500],
        reference_labels[:500],
        deployment.probabilities[:300],
        focus_class=7,
        tolerance=0.05,
    )
    assert small["class_7_share_bbse_interval"][1] - small["class_7_share_bbse_interval"][0] > high - low


def test_accuracy_report_on_the_reference_itself_is_exact(rng):
    reference, labels = _features(rng, 5000)
    report = accuracy_report(reference.probabilities, labels, reference.probabilities, true_labels=labels)
    assert report["atc"] == pytest.approx(report["true"], abs=0.01)
    assert report["average_confidence"] == pytest.approx(reference.probabilities.max(1).mean())

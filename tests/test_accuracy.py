"""The label-free accuracy estimate: its arithmetic, its fit, its interval on calibrated draws."""

import numpy as np
import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.estimation.accuracy import SIGNALS, EstimatorFit, Reference, estimate, fit_weights, reference_summary


def calibrated(rng, n: int, sharpness: float):
    """Softmax outputs of a calibrated 10-class model and labels drawn from them: the top
    class is right with exactly its probability. Lower `sharpness`, less confident (a shift)."""
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += sharpness
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(10, p=p) for p in probabilities])
    return probabilities, labels


def test_with_confidence_alone_and_weight_one_it_is_difference_of_confidences():
    # Given a reference and a batch, when only the confidence signal counts with weight 1,
    # then the estimate is the reference accuracy moved by the drop in mean confidence (DoC).
    rng = np.random.default_rng(0)
    reference_probs, reference_labels = calibrated(rng, 2000, 4.0)
    batch, _ = calibrated(rng, 300, 2.0)
    fit = EstimatorFit(("confidence",), (1.0,))
    reference = reference_summary(reference_probs, reference_labels, None, fit)
    found = estimate(batch, None, reference, fit, page_points=3)
    accuracy = np.mean(reference_probs.argmax(1) == reference_labels)
    expected = accuracy + batch.max(1).mean() - reference_probs.max(1).mean()
    assert found.accuracy == pytest.approx(expected)
    assert found.loss_points == pytest.approx(100 * (accuracy - expected))
    standard_error = np.sqrt(batch.max(1).var(ddof=1) / 300 + reference_probs.max(1).var(ddof=1) / 2000)
    assert found.standard_error == pytest.approx(standard_error)
    low, high = found.interval
    assert low < found.accuracy < high


def test_the_page_fires_exactly_when_the_estimated_loss_reaches_page_points():
    rng = np.random.default_rng(1)
    reference_probs, reference_labels = calibrated(rng, 2000, 4.0)
    fit = EstimatorFit(("confidence",), (1.0,))
    reference = reference_summary(reference_probs, reference_labels, None, fit)
    milder, _ = calibrated(rng, 500, 3.6)
    harsher, _ = calibrated(rng, 500, 1.0)
    for batch in (milder, harsher):
        found = estimate(batch, None, reference, fit, page_points=3)
        assert found.harmful == (found.loss_points >= 3)
    assert not estimate(milder, None, reference, fit, 50).harmful
    assert estimate(harsher, None, reference, fit, 3).harmful


@pytest.mark.slow  # seconds, not milliseconds: `make test-fast` leaves it out
def test_the_interval_holds_the_batchs_own_accuracy_in_at_least_90_percent_of_independent_draws():
    # Calibrated model, so DoC is unbiased: fresh reference and batch per draw, under no shift
    # and under a shift that costs ~20 points; the interval must hold the draw's own accuracy.
    fit = EstimatorFit(("confidence",), (1.0,))
    for sharpness in (4.0, 2.0):
        for n in (100, 1000):
            held = 0
            for r in range(60):
                rng = np.random.default_rng([n, r, int(10 * sharpness)])
                reference_probs, reference_labels = calibrated(rng, 2000, 4.0)
                batch, labels = calibrated(rng, n, sharpness)
                found = estimate(
                    batch, None, reference_summary(reference_probs, reference_labels, None, fit), fit, page_points=3
                )
                held += found.interval[0] <= np.mean(batch.argmax(1) == labels) <= found.interval[1]
            assert held / 60 >= 0.85, (sharpness, n, held)


def test_fit_weights_recovers_non_negative_weights_and_refuses_no_sets():
    rng = np.random.default_rng(2)
    shifts = rng.normal(0, 0.1, (30, 3))
    weights = fit_weights(shifts, shifts @ np.array([0.5, 0.0, 0.3]))
    np.testing.assert_allclose(weights, [0.5, 0.0, 0.3], atol=1e-9)
    assert np.all(fit_weights(shifts, shifts @ np.array([0.5, -0.4, 0.3])) >= 0)  # never negative
    with pytest.raises(ShiftwatchError, match="harm.design"):
        fit_weights(shifts[:0], np.zeros(0))


def test_the_agreement_signals_need_the_fine_tuned_models_outputs():
    rng = np.random.default_rng(3)
    probabilities, labels = calibrated(rng, 200, 3.0)
    fit = EstimatorFit(SIGNALS[:4], (0.0, 0.5, 0.2, 0.4))  # the four harm.signals uses
    with pytest.raises(ShiftwatchError, match="fine-tuned model"):
        reference_summary(probabilities, labels, None, fit)
    reference = reference_summary(probabilities, labels, probabilities, fit)  # a twin agrees always
    assert reference.means["agreement"] == 1.0
    with pytest.raises(ShiftwatchError, match="same images"):
        estimate(probabilities, probabilities[:10], reference, fit, 3)


def test_a_batch_of_one_image_and_bad_estimator_files_give_one_clear_error():
    rng = np.random.default_rng(4)
    probabilities, labels = calibrated(rng, 200, 3.0)
    fit = EstimatorFit(("confidence",), (1.0,))
    reference = reference_summary(probabilities, labels, None, fit)
    with pytest.raises(ShiftwatchError, match="at least 2"):
        estimate(probabilities[:1], None, reference, fit, 3)
    with pytest.raises(ShiftwatchError, match="known signals"):
        EstimatorFit.from_dict({"signals": ["brightness"], "weights": [1.0]})
    with pytest.raises(ShiftwatchError, match="do not match"):
        EstimatorFit.from_dict({"signals": ["atc", "confidence"], "weights": [1.0]})
    with pytest.raises(ShiftwatchError, match="dvc repro harm"):
        Reference.from_dict({"accuracy": 0.9}, fit)
    again = Reference.from_dict(reference.as_dict(), fit)
    assert estimate(probabilities, None, again, fit, 3) == estimate(probabilities, None, reference, fit, 3)


def test_the_class_mix_signal_is_saved_with_the_reference_only_when_fitted_with_it():
    rng = np.random.default_rng(5)
    probabilities, labels = calibrated(rng, 2_000, 3.0)
    with_mix = EstimatorFit(("confidence", "class_mix"), (0.5, 0.5))
    reference = reference_summary(probabilities, labels, None, with_mix)
    assert len(reference.class_mix) == 10
    assert reference.means["class_mix"] == pytest.approx(reference.accuracy)  # BBSE on its own source
    saved = reference.as_dict()
    again = Reference.from_dict(saved, with_mix)
    assert estimate(probabilities, None, again, with_mix, 3) == estimate(probabilities, None, reference, with_mix, 3)
    del saved["class_mix"]
    with pytest.raises(ShiftwatchError, match="no class_mix scores"):
        Reference.from_dict(saved, with_mix)
    # without the signal the file has no class_mix entry (estimators saved before it read the same)
    assert (
        "class_mix"
        not in reference_summary(probabilities, labels, None, EstimatorFit(("confidence",), (1.0,))).as_dict()
    )


def test_clear_border_is_the_share_of_the_frame_without_ink_whatever_the_contrast():
    from shiftwatch.data.corruptions import corrupt
    from shiftwatch.estimation.accuracy import clear_border
    from shiftwatch.model.features import pixels_8bit

    images = np.zeros((4, 28, 28), np.float32)
    images[1, 8:20, 8:20] = 0.9  # a centred object: the frame is clear
    images[2] = 0.7  # ink everywhere but a dark centre
    images[2, 10:18, 10:18] = 0.0
    images[3, :, 12:16] = 0.8  # a bar through the top and bottom edges: 8 of the frame's 208 pixels, twice
    clear = clear_border(images)
    np.testing.assert_allclose(clear, [1.0, 1.0, 0.0, 1 - 16 / 208])
    # relative to each image's own range: scaled or brightened images read the same
    np.testing.assert_allclose(clear_border(0.3 * images), clear)
    np.testing.assert_allclose(clear_border(np.clip(images + 0.1, 0, 1)), clear)
    np.testing.assert_allclose(clear_border(pixels_8bit(images)), clear)  # 8-bit, flattened
    # a crop that pushes the object past the frame loses clear border
    big = np.zeros((1, 28, 28), np.float32)
    big[:, 3:25, 3:25] = 1.0
    assert clear_border(corrupt(big, "stretch", 0.3, seed=0))[0] < clear_border(big)[0] == 1.0
    with pytest.raises(ShiftwatchError, match="not square"):
        clear_border(np.zeros((2, 780)))


def test_an_estimator_that_reads_the_border_needs_the_batchs_clear_border_values():
    rng = np.random.default_rng(1)
    probabilities, labels = calibrated(rng, 400, 4.0)
    fit = EstimatorFit(("confidence", "clear_border"), (1.0, 0.5))
    clear = rng.uniform(0.8, 1.0, 400)
    reference = reference_summary(probabilities, labels, None, fit, clear)
    assert set(reference.means) == {"confidence", "clear_border"}
    batch, _ = calibrated(rng, 100, 4.0)
    moved = estimate(batch, None, reference, fit, 3, clear=np.full(100, reference.means["clear_border"] - 0.1))
    level = estimate(batch, None, reference, fit, 3, clear=np.full(100, reference.means["clear_border"]))
    assert moved.accuracy == pytest.approx(level.accuracy - 0.05)  # weight 0.5 x 0.1 less clear border
    with pytest.raises(ShiftwatchError, match="clear_border"):
        estimate(batch, None, reference, fit, 3)
    with pytest.raises(ShiftwatchError, match="one per image"):
        estimate(batch, None, reference, fit, 3, clear=np.ones(99))

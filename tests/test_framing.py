"""Objects that span the frame, and the one-sided Fisher test on their share (shiftwatch/detection/framing.py)."""

import numpy as np
import pytest
from conftest import needs_fashion_mnist
from null_checks import ALPHA, calibration_failures
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection.bbsd import _fisher_greater
from shiftwatch.detection.framing import frame_span_test, spans_frame


def test_fisher_greater_matches_scipy(rng):
    for _ in range(200):
        size_a, size_b = rng.integers(1, 150, 2)
        hits_a, hits_b = rng.integers(0, size_a + 1), rng.integers(0, size_b + 1)
        expected = stats.fisher_exact(
            [[hits_a, size_a - hits_a], [hits_b, size_b - hits_b]], alternative="greater"
        ).pvalue
        assert _fisher_greater(hits_a, size_a, hits_b, size_b) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def _framed_box(top, left, height, width, value=200):
    image = np.zeros((28, 28), dtype=np.uint8)
    image[top : top + height, left : left + width] = value
    return image.reshape(-1)


def test_spans_frame_known_answers():
    tall = _framed_box(0, 10, 28, 8)  # a dress: top to bottom
    wide = _framed_box(9, 0, 10, 28)  # a bag: left to right
    faint = _framed_box(0, 10, 28, 8, value=1)  # any ink counts
    moved = _framed_box(1, 10, 27, 8)  # the dress one pixel down: the top row is empty
    small = _framed_box(4, 4, 20, 20)
    pixels = np.stack([tall, wide, faint, moved, small])
    assert spans_frame(pixels).tolist() == [True, True, True, False, False]
    with pytest.raises(ShiftwatchError, match="square images"):
        spans_frame(np.zeros((3, 700), dtype=np.uint8))


def test_frame_span_is_one_sided_and_rejects_empty_batches():
    framed = np.stack([_framed_box(0, 10, 28, 8)] * 60 + [_framed_box(4, 4, 20, 20)] * 40)
    unframed = np.stack([_framed_box(0, 10, 28, 8)] * 20 + [_framed_box(4, 4, 20, 20)] * 80)
    lost = frame_span_test(framed, unframed)
    assert lost.statistic == pytest.approx(0.4) and lost.pvalue < 1e-8
    gained = frame_span_test(unframed, framed)  # more images filling the frame: not this test's alarm
    assert gained.statistic == pytest.approx(-0.4) and gained.pvalue > 0.99
    with pytest.raises(ShiftwatchError, match="at least one image"):
        frame_span_test(framed, framed[:0])


@needs_fashion_mnist
def test_frame_span_is_calibrated_on_real_images_and_sees_a_one_pixel_translation():
    # Given 300 independent draws of two disjoint sets of 100 real FashionMNIST test images
    from shiftwatch.data.corruptions import corrupt
    from shiftwatch.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist
    from shiftwatch.model.features import pixels_8bit

    _, test = load_fashion_mnist(DEBIAN_DIR)
    assert 0.95 < spans_frame(pixels_8bit(test.images)).mean() < 0.99  # the dataset's framing
    rng = np.random.default_rng(2027)
    null, translated, repetitions = [], [], 300
    for repetition in range(repetitions):
        rows = rng.choice(len(test), 200, replace=False)
        reference = pixels_8bit(test.images[rows[:100]])
        null.append(frame_span_test(reference, pixels_8bit(test.images[rows[100:]])).pvalue)
        if repetition < 50:  # each image moved by its own offset in +-1 pixel per axis
            moved = corrupt(test.images[rows[100:]], "translate", 1, seed=repetition)
            translated.append(frame_span_test(reference, pixels_8bit(moved)).pvalue)
    # Then it alarms at most at alpha with no shift (24+ of 300 has probability < 0.05 at a
    # 5 % rate; Fisher's exact test is conservative), and on every translated draw even at the
    # level Holm gives the smallest of seven p-values
    assert sum(p < ALPHA for p in null) <= 23
    assert calibration_failures(null, exact=False) == []
    assert all(p < ALPHA / 7 for p in translated)

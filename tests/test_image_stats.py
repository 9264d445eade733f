"""Per-image pixel statistics and their KS tests (shiftwatch/detection/image_stats.py)."""

import numpy as np
import pytest
from null_checks import calibration_failures, null_pvalues, synthetic_images

from shiftwatch import ShiftwatchError
from shiftwatch.detection.image_stats import image_stats_test, pixel_quantiles, zero_fraction


def test_zero_fraction_and_quantiles_known_answers():
    images = np.zeros((2, 2, 2))
    images[1] = [[0.0, 0.2], [0.4, 1.0]]
    np.testing.assert_allclose(zero_fraction(images), [1.0, 0.25])
    np.testing.assert_allclose(pixel_quantiles(images, qs=(0.0, 0.5, 1.0)), [[0, 0, 0], [0, 0.3, 1.0]])
    assert pixel_quantiles(images).shape == (2, 3)
    assert zero_fraction((images * 255).astype(np.uint8))[1] == 0.25


def test_image_stats_null_pvalues_are_valid():
    rng = np.random.default_rng(10)
    pvalues = null_pvalues(lambda a, b: image_stats_test(a, b).pvalue, lambda r: synthetic_images(r, 60), rng, 150)
    assert calibration_failures(pvalues, exact=False) == []


def test_image_stats_catch_a_small_brightness_shift(rng):
    result = image_stats_test(synthetic_images(rng, 50), synthetic_images(rng, 50, brightness=0.02))
    assert result.statistic == 1.0  # no brightened image has a zero pixel left
    assert result.pvalue < 1e-10


def test_image_stats_reject_bad_input(rng):
    with pytest.raises(ShiftwatchError, match="shape"):
        image_stats_test(synthetic_images(rng, 5), np.zeros((5, 14, 14)))
    with pytest.raises(ShiftwatchError, match="quantiles"):
        pixel_quantiles(synthetic_images(rng, 5), qs=(0.5, 1.5))
    with pytest.raises(ShiftwatchError, match="deployment_images has 0 rows"):
        image_stats_test(synthetic_images(rng, 5), np.zeros((0, 28, 28)))

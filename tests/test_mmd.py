import tracemalloc

import numpy as np
import pytest
from conftest import needs_fashion_mnist
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection.basic import label_proportion_test
from shiftwatch.detection.bbsd import _fisher_greater, bbsd_chi2, bbsd_class_shares, bbsd_ks, bbsd_ks_columns
from shiftwatch.detection.framing import frame_span_test, spans_frame
from shiftwatch.detection.holm import holm
from shiftwatch.detection.image_stats import image_stats_test, pixel_quantiles, zero_fraction
from shiftwatch.detection.mmd import (
    _shifted_kernel,
    _split_mmd2,
    median_bandwidth,
    mmd2_unbiased,
    mmd_test,
    rbf_kernel,
    reference_bandwidth,
)

ALPHA = 0.05


def _softmax(rng, n, classes=10, boost=0.0):
    """Softmax outputs of random logits; `boost` raises class 0's logit (a label shift)."""
    logits = rng.normal(0, 2, (n, classes))
    logits[:, 0] += boost
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _images(rng, n, brightness=0.0):
    """FashionMNIST-like: about half the pixels exactly black, the rest uniform."""
    images = np.where(rng.random((n, 28, 28)) < 0.5, 0.0, rng.random((n, 28, 28)))
    return np.clip(images + brightness, 0, 1)


def _calibration_failures(pvalues, exact):
    """Why these null p-values are not those of a level-alpha test ([] when they are).

    Exact tests must look uniform (two-sided KS); Bonferroni-combined ones are conservative
    by design, so they must only not sit *above* the uniform CDF (one-sided KS).
    """
    pvalues = np.asarray(pvalues)
    failures = []
    if np.mean(pvalues < ALPHA) > 0.1:
        failures.append(f"false-positive rate {np.mean(pvalues < ALPHA):.3f} > 0.1")
    ks = stats.kstest(pvalues, "uniform", alternative="two-sided" if exact else "greater")
    if ks.pvalue < 0.01:
        failures.append(f"p-values not (super-)uniform: KS p = {ks.pvalue:.2g}")
    return failures


def _null_pvalues(test, draw, rng, repetitions):
    return [test(draw(rng), draw(rng)) for _ in range(repetitions)]


# ---------------------------------------------------------------- BBSD

def test_bbsd_ks_is_bonferroni_over_per_class_ks(rng):
    a, b = _softmax(rng, 300), _softmax(rng, 200, boost=0.5)
    per_class = [stats.ks_2samp(a[:, k], b[:, k], method="asymp") for k in range(10)]
    statistics, pvalues = bbsd_ks_columns(a, b)
    np.testing.assert_allclose(pvalues, [r.pvalue for r in per_class])
    result = bbsd_ks(a, b)
    assert result.statistic == pytest.approx(max(r.statistic for r in per_class))
    assert result.pvalue == pytest.approx(min(1.0, 10 * min(r.pvalue for r in per_class)))
    assert bbsd_ks(a, a).pvalue == 1.0  # capped at 1


def test_bbsd_ks_null_pvalues_are_valid_and_the_check_catches_no_bonferroni():
    rng = np.random.default_rng(1)
    draws = [(_softmax(rng, 100), _softmax(rng, 100)) for _ in range(200)]
    corrected = [bbsd_ks(a, b).pvalue for a, b in draws]
    assert _calibration_failures(corrected, exact=False) == []
    uncorrected = [bbsd_ks_columns(a, b)[1].min() for a, b in draws]
    assert _calibration_failures(uncorrected, exact=False)  # the check has teeth


def test_bbsd_chi2_null_pvalues_are_uniform():
    rng = np.random.default_rng(2)
    pvalues = _null_pvalues(lambda a, b: bbsd_chi2(a, b).pvalue, lambda r: _softmax(r, 200),
                            rng, 200)
    assert _calibration_failures(pvalues, exact=True) == []


def test_bbsd_chi2_is_label_proportion_test_on_argmax_and_detects_label_shift(rng):
    a, b = _softmax(rng, 500), _softmax(rng, 500, boost=1.5)
    expected = label_proportion_test(a.argmax(1), b.argmax(1), 10)
    assert bbsd_chi2(a, b) == expected
    assert expected.pvalue < 1e-6


def _thinned(rng, n, label_class=7, keep=0.1):
    """Softmax rows whose argmax is `label_class` kept with probability `keep` (label shift)."""
    probs = _softmax(rng, 4 * n)
    kept = probs[(probs.argmax(1) != label_class) | (rng.random(len(probs)) < keep)]
    return kept[:n]


def test_bbsd_class_shares_is_bonferroni_over_per_class_fisher_tests(rng):
    a, b = _softmax(rng, 300), _thinned(rng, 200)
    per_class = [stats.fisher_exact([[np.sum(a.argmax(1) == c), np.sum(a.argmax(1) != c)],
                                     [np.sum(b.argmax(1) == c), np.sum(b.argmax(1) != c)]]).pvalue
                 for c in range(10)]
    result = bbsd_class_shares(a, b)
    assert result.pvalue == pytest.approx(min(1.0, 10 * min(per_class)))
    share_gap = abs(np.mean(a.argmax(1) == 7) - np.mean(b.argmax(1) == 7))
    assert result.statistic >= share_gap - 1e-12


def test_bbsd_class_shares_null_pvalues_are_valid():
    rng = np.random.default_rng(4)
    pvalues = _null_pvalues(lambda a, b: bbsd_class_shares(a, b).pvalue, lambda r: _softmax(r, 100),
                            rng, 300)
    assert _calibration_failures(pvalues, exact=False) == []


def test_bbsd_class_shares_beats_chi2_when_one_class_thins_out():
    # The reason it is in the verdict: a sparse change in the mix (one class of ten, 10 % kept),
    # 100 deployment images against a reference as large as monitoring uses, where the
    # 9-degree-of-freedom omnibus test spreads its power (measured: 0.85 vs 0.53; with 100
    # reference images both are limited by the reference's own noise, 0.44 vs 0.45).
    rng = np.random.default_rng(5)
    draws = [(_softmax(rng, 2000), _thinned(rng, 100)) for _ in range(100)]
    shares = np.mean([bbsd_class_shares(a, b).pvalue < ALPHA for a, b in draws])
    chi2 = np.mean([bbsd_chi2(a, b).pvalue < ALPHA for a, b in draws])
    assert shares > chi2 + 0.1, (shares, chi2)


def test_bbsd_detects_label_shift_the_ks_way(rng):
    assert bbsd_ks(_softmax(rng, 500), _softmax(rng, 500, boost=1.0)).pvalue < 1e-4


@pytest.mark.parametrize("a, b, message", [
    (np.ones(5), np.ones((5, 2)), "2-D"),
    (np.ones((5, 3)), np.ones((5, 2)), "3 and 2 classes"),
    (np.ones((0, 3)), np.ones((5, 3)), "0 rows"),
    (np.full((5, 3), np.nan), np.ones((5, 3)), "NaN"),
])
def test_bbsd_rejects_bad_input_with_one_line(a, b, message):
    for test in (bbsd_ks, bbsd_chi2, bbsd_class_shares):
        with pytest.raises(ShiftwatchError, match=message) as err:
            test(a, b)
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- MMD

def _double_loop_mmd2(x, y, bandwidth):
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * bandwidth ** 2))  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_unbiased_matches_double_loop(rng):
    x, y = rng.normal(size=(15, 4)), rng.normal(0.4, 1.0, size=(12, 4))
    for bandwidth in (0.5, 2.0):
        expected = _double_loop_mmd2(x, y, bandwidth)
        assert mmd2_unbiased(x, y, bandwidth) == pytest.approx(expected, rel=1e-10)
    # mmd_test reports the same estimate when nothing is subsampled, from its float32 kernel
    assert mmd_test(x, y, bandwidth=2.0).statistic == pytest.approx(expected, rel=1e-6)


def test_mmd2_unbiased_blockwise_equals_dense_and_flattens_images(rng):
    x, y = rng.random((600, 3, 3)), rng.random((300, 3, 3))  # 600 rows: several 256-row blocks
    kxx, kyy, kxy = (rbf_kernel(a, b, 0.7) for a, b in ((x, x), (y, y), (x, y)))
    dense = ((kxx.sum() - 600) / (600 * 599) + (kyy.sum() - 300) / (300 * 299) - 2 * kxy.mean())
    assert mmd2_unbiased(x, y, 0.7) == pytest.approx(dense, rel=1e-9, abs=1e-12)


def test_mmd2_is_unbiased_under_the_null_and_the_check_catches_the_biased_estimator():
    rng = np.random.default_rng(3)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
        unbiased.append(mmd2_unbiased(x, y, 1.5))
        biased.append(rbf_kernel(x, x, 1.5).mean() + rbf_kernel(y, y, 1.5).mean()
                      - 2 * rbf_kernel(x, y, 1.5).mean())  # the V-statistic
    for values, centred in ((unbiased, True), (biased, False)):
        t = np.mean(values) / (np.std(values, ddof=1) / np.sqrt(len(values)))
        assert (abs(t) < 3) == centred


@pytest.mark.parametrize("m", [2, 5, 9, 15])  # 17 pooled rows: m = n does not occur
def test_split_quadratic_form_is_exactly_the_unbiased_mmd2(rng, m):
    pooled, bandwidth = rng.normal(size=(17, 3)), 1.3
    pooled[:, 0] += np.arange(17) / 17  # not exchangeable: splits differ
    x_rows = np.array([rng.permutation(17)[:m] for _ in range(6)])
    fast = _split_mmd2(_shifted_kernel(pooled, bandwidth), x_rows, m)
    direct = [mmd2_unbiased(pooled[rows], np.delete(pooled, rows, axis=0), bandwidth)
              for rows in x_rows]
    np.testing.assert_allclose(fast, direct, rtol=1e-10, atol=1e-14)


def test_split_quadratic_form_with_equal_sides_matches_too(rng):
    pooled = rng.normal(size=(12, 2))
    x_rows = np.array([rng.permutation(12)[:6] for _ in range(5)])
    fast = _split_mmd2(_shifted_kernel(pooled, 0.8), x_rows, 6)
    direct = [mmd2_unbiased(pooled[r], np.delete(pooled, r, axis=0), 0.8) for r in x_rows]
    np.testing.assert_allclose(fast, direct, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("m, n, shift", [(9, 6, 0.3), (700, 450, 0.08)])  # 1,150 rows: 3 kernel blocks
def test_mmd_permutation_pvalue_equals_the_direct_permutation_test(m, n, shift):
    # Recomputes every permuted statistic with mmd2_unbiased (float64, the whole kernel).
    # Mirrors mmd_test's draws: no subsampling below max_per_side, then the permutations in
    # one batch from rng(seed).
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(m, 3)), rng.normal(shift, 1.0, size=(n, 3))
    bandwidth, permutations, seed = 1.5, 60, 3
    pooled = np.concatenate([x, y])
    draws = np.random.default_rng(seed).permuted(np.tile(np.arange(m + n), (permutations, 1)),
                                                 axis=1)[:, :m]
    observed = mmd2_unbiased(x, y, bandwidth)
    permuted = np.array([mmd2_unbiased(pooled[r], np.delete(pooled, r, axis=0), bandwidth)
                         for r in draws])
    expected = (1 + np.count_nonzero(permuted >= observed - 1e-12)) / (1 + permutations)
    result = mmd_test(x, y, n_permutations=permutations, seed=seed, bandwidth=bandwidth)
    assert 0.05 < expected < 0.95  # a p-value that the ranking decides, not a floor or 1
    assert result.pvalue == expected
    assert result.statistic == pytest.approx(observed, rel=1e-6)  # float32 kernel


def test_mmd_permutation_null_pvalues_are_uniform():
    rng = np.random.default_rng(4)
    draw = lambda r: r.normal(size=(30, 5))  # noqa: E731
    pvalues = [mmd_test(draw(rng), draw(rng), n_permutations=99, seed=s).pvalue for s in range(150)]
    assert set(np.round(np.array(pvalues) * 100, 6)) <= set(range(1, 101))  # (1 + k) / (1 + B)
    assert _calibration_failures(pvalues, exact=True) == []


def test_mmd_linear_null_pvalues_are_uniform():
    rng = np.random.default_rng(5)
    draw = lambda r: r.normal(size=(300, 5))  # noqa: E731
    # A fixed bandwidth (about the median distance in 5-D) keeps this fast; the median
    # heuristic is exercised under the null by the permutation test above.
    pvalues = [mmd_test(draw(rng), draw(rng), seed=s, method="linear", bandwidth=3.0).pvalue
               for s in range(200)]
    assert _calibration_failures(pvalues, exact=True) == []


def test_mmd_detects_half_sigma_mean_shift_at_n200():
    rng = np.random.default_rng(6)
    for seed in range(5):
        x, y = rng.normal(size=(200, 1)), rng.normal(0.5, 1.0, size=(200, 1))
        assert mmd_test(x, y, n_permutations=200, seed=seed).pvalue < 0.01


def test_mmd_identical_points_give_zero_and_pvalue_one():
    x = np.ones((6, 3))
    assert median_bandwidth(x, x) == 1.0
    result = mmd_test(x, x.copy(), n_permutations=50)
    assert result.statistic == 0.0 and result.pvalue == 1.0


def test_median_bandwidth_is_the_median_distance_and_ignores_duplicates():
    x = np.array([[0.0], [1.0], [1.0]])  # distinct distances from x ∪ y: 1, 1, 3, 2, 2
    y = np.array([[3.0]])
    assert median_bandwidth(x, y) == pytest.approx(2.0)


@pytest.mark.parametrize("rows", [5, 6, 7, 8, 40])
def test_reference_bandwidth_is_median_bandwidth_of_the_reference_with_itself(rng, rows):
    # Distinct pair counts of both parities (10, 15, 21, 28, 780), a duplicated row (distance 0,
    # dropped by both), and with max_points below 2 * rows the seeded subsample of the doubled pool.
    x = rng.normal(size=(rows, 16))
    x[1] = x[0]
    assert reference_bandwidth(x, seed=3) == median_bandwidth(x, x, seed=3)
    assert reference_bandwidth(x, seed=3, max_points=rows) == median_bandwidth(x, x, seed=3, max_points=rows)
    assert reference_bandwidth(x[:1]) == 1.0  # no pair at all


def test_mmd_is_seeded(rng):
    x, y = rng.normal(size=(40, 3)), rng.normal(0.2, 1, size=(50, 3))
    assert mmd_test(x, y, seed=7) == mmd_test(x, y, seed=7)
    assert mmd_test(x, y, seed=7, method="linear") == mmd_test(x, y, seed=7, method="linear")


@pytest.mark.slow  # seconds, not milliseconds: `make test-fast` leaves it out
def test_mmd_large_inputs_run_in_linear_memory():
    """Memory, not time: speed is for benchmarks (make bench; a timed test failed at 20 s under load)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10_000, 512), dtype=np.float32)
    y = rng.standard_normal((10_000, 512), dtype=np.float32)
    images = rng.random((10_000, 28, 28), dtype=np.float32)
    tracemalloc.start()
    permutation = mmd_test(x, y, seed=1)
    other_images = rng.random((10_000, 28, 28), dtype=np.float32)
    linear = mmd_test(images, other_images, seed=1, method="linear")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for result in (permutation, linear):
        assert 0 <= result.pvalue <= 1 and np.isfinite(result.statistic)
    assert peak < 500e6  # one 20,000 x 20,000 float64 matrix alone would be 3.2 GB


def test_mmd_large_path_still_detects_a_shift():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(3000, 20)), rng.normal(size=(3000, 20))
    y[:, 0] += 0.5
    # 500 per side of the quadratic estimator finds this (p at its floor 1/201) ...
    assert mmd_test(x, y, seed=0, max_per_side=500).pvalue < 0.01
    # ... the linear-time one, on all 3000 per side, needs a twice larger shift to be as sure.
    y[:, 0] += 0.5
    assert mmd_test(x, y, seed=0, method="linear").pvalue < 0.01


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "quadratic"}, "method"),
    ({"bandwidth": 0.0}, "bandwidth"),
    ({"n_permutations": 0}, "n_permutations"),
])
def test_mmd_rejects_bad_parameters(rng, kwargs, message):
    with pytest.raises(ShiftwatchError, match=message):
        mmd_test(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), **kwargs)


def test_mmd_rejects_bad_input(rng):
    with pytest.raises(ShiftwatchError, match="1 rows"):
        mmd_test(np.ones((1, 2)), np.ones((5, 2)))
    with pytest.raises(ShiftwatchError, match="3 and 2 features"):
        mmd_test(np.ones((5, 3)), np.ones((5, 2)))
    with pytest.raises(ShiftwatchError, match="NaN"):
        mmd2_unbiased(np.array([[np.nan], [1.0]]), np.ones((5, 1)), 1.0)
    with pytest.raises(ShiftwatchError, match="at least 4 rows"):
        mmd_test(np.ones((3, 2)), np.ones((5, 2)), method="linear")


# ---------------------------------------------------------------- image statistics

def test_zero_fraction_and_quantiles_known_answers():
    images = np.zeros((2, 2, 2))
    images[1] = [[0.0, 0.2], [0.4, 1.0]]
    np.testing.assert_allclose(zero_fraction(images), [1.0, 0.25])
    np.testing.assert_allclose(pixel_quantiles(images, qs=(0.0, 0.5, 1.0)),
                               [[0, 0, 0], [0, 0.3, 1.0]])
    assert pixel_quantiles(images).shape == (2, 3)
    assert zero_fraction((images * 255).astype(np.uint8))[1] == 0.25


def test_image_stats_null_pvalues_are_valid():
    rng = np.random.default_rng(10)
    pvalues = _null_pvalues(lambda a, b: image_stats_test(a, b).pvalue, lambda r: _images(r, 60),
                            rng, 150)
    assert _calibration_failures(pvalues, exact=False) == []


def test_image_stats_catch_a_small_brightness_shift(rng):
    result = image_stats_test(_images(rng, 50), _images(rng, 50, brightness=0.02))
    assert result.statistic == 1.0  # no brightened image has a zero pixel left
    assert result.pvalue < 1e-10


def test_image_stats_reject_bad_input(rng):
    with pytest.raises(ShiftwatchError, match="shape"):
        image_stats_test(_images(rng, 5), np.zeros((5, 14, 14)))
    with pytest.raises(ShiftwatchError, match="quantiles"):
        pixel_quantiles(_images(rng, 5), qs=(0.5, 1.5))
    with pytest.raises(ShiftwatchError, match="deployment_images has 0 rows"):
        image_stats_test(_images(rng, 5), np.zeros((0, 28, 28)))


# ---------------------------------------------------------------- Holm

def test_holm_textbook_example():
    # Wikipedia, "Holm–Bonferroni method": p = 0.01, 0.04, 0.03, 0.005 at alpha 0.05 rejects
    # H1 and H4 only; adjusted p-values 0.03, 0.06, 0.06, 0.02.
    result = holm({"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005, "kl": None}, alpha=0.05)
    assert result.reject
    assert set(result.rejected) == {"H1", "H4"}
    assert result.adjusted == pytest.approx({"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02})


def test_holm_edge_cases():
    assert holm({"a": 0.5, "b": 0.9}).reject is False
    assert holm({"a": 0.8}).adjusted == {"a": 0.8}
    assert holm({"a": 0.025, "b": 0.5}, alpha=0.05).reject is False  # adjusted 0.05: strict <
    assert holm({"a": 0.6, "b": 0.9}).adjusted == {"a": 1.0, "b": 1.0}  # capped, monotone
    empty = holm({"kl": None})
    assert empty.reject is False and empty.adjusted == {}
    with pytest.raises(ShiftwatchError, match="'a'"):
        holm({"a": float("nan")})
    with pytest.raises(ShiftwatchError, match="alpha"):
        holm({"a": 0.1}, alpha=0)


# ---------------------------------------------------------------- framing

def test_fisher_greater_matches_scipy(rng):
    for _ in range(200):
        size_a, size_b = rng.integers(1, 150, 2)
        hits_a, hits_b = rng.integers(0, size_a + 1), rng.integers(0, size_b + 1)
        expected = stats.fisher_exact([[hits_a, size_a - hits_a], [hits_b, size_b - hits_b]],
                                      alternative="greater").pvalue
        assert _fisher_greater(hits_a, size_a, hits_b, size_b) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def _framed_box(top, left, height, width, value=200):
    image = np.zeros((28, 28), dtype=np.uint8)
    image[top:top + height, left:left + width] = value
    return image.reshape(-1)


def test_spans_frame_known_answers():
    tall = _framed_box(0, 10, 28, 8)      # a dress: top to bottom
    wide = _framed_box(9, 0, 10, 28)      # a bag: left to right
    faint = _framed_box(0, 10, 28, 8, value=1)  # any ink counts
    moved = _framed_box(1, 10, 27, 8)     # the dress one pixel down: the top row is empty
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
    assert _calibration_failures(null, exact=False) == []
    assert all(p < ALPHA / 7 for p in translated)

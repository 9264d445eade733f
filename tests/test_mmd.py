"""MMD with a Gaussian kernel and its permutation test (shiftwatch/detection/mmd.py)."""

import tracemalloc

import numpy as np
import pytest
from null_checks import calibration_failures

from shiftwatch import ShiftwatchError
from shiftwatch.detection.mmd import (
    _shifted_kernel,
    _split_mmd2,
    median_bandwidth,
    mmd2_unbiased,
    mmd_test,
    rbf_kernel,
    reference_bandwidth,
)


def _double_loop_mmd2(x, y, bandwidth):
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * bandwidth**2))
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
    dense = (kxx.sum() - 600) / (600 * 599) + (kyy.sum() - 300) / (300 * 299) - 2 * kxy.mean()
    assert mmd2_unbiased(x, y, 0.7) == pytest.approx(dense, rel=1e-9, abs=1e-12)


def test_mmd2_is_unbiased_under_the_null_and_the_check_catches_the_biased_estimator():
    rng = np.random.default_rng(3)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
        unbiased.append(mmd2_unbiased(x, y, 1.5))
        biased.append(
            rbf_kernel(x, x, 1.5).mean() + rbf_kernel(y, y, 1.5).mean() - 2 * rbf_kernel(x, y, 1.5).mean()
        )  # the V-statistic
    for values, centred in ((unbiased, True), (biased, False)):
        t = np.mean(values) / (np.std(values, ddof=1) / np.sqrt(len(values)))
        assert (abs(t) < 3) == centred


@pytest.mark.parametrize("m", [2, 5, 9, 15])  # 17 pooled rows: m = n does not occur
def test_split_quadratic_form_is_exactly_the_unbiased_mmd2(rng, m):
    pooled, bandwidth = rng.normal(size=(17, 3)), 1.3
    pooled[:, 0] += np.arange(17) / 17  # not exchangeable: splits differ
    x_rows = np.array([rng.permutation(17)[:m] for _ in range(6)])
    fast = _split_mmd2(_shifted_kernel(pooled, bandwidth), x_rows, m)
    direct = [mmd2_unbiased(pooled[rows], np.delete(pooled, rows, axis=0), bandwidth) for rows in x_rows]
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
    draws = np.random.default_rng(seed).permuted(np.tile(np.arange(m + n), (permutations, 1)), axis=1)[:, :m]
    observed = mmd2_unbiased(x, y, bandwidth)
    permuted = np.array([mmd2_unbiased(pooled[r], np.delete(pooled, r, axis=0), bandwidth) for r in draws])
    expected = (1 + np.count_nonzero(permuted >= observed - 1e-12)) / (1 + permutations)
    result = mmd_test(x, y, n_permutations=permutations, seed=seed, bandwidth=bandwidth)
    assert 0.05 < expected < 0.95  # a p-value that the ranking decides, not a floor or 1
    assert result.pvalue == expected
    assert result.statistic == pytest.approx(observed, rel=1e-6)  # float32 kernel


def test_mmd_permutation_null_pvalues_are_uniform():
    rng = np.random.default_rng(4)
    draw = lambda r: r.normal(size=(30, 5))
    pvalues = [mmd_test(draw(rng), draw(rng), n_permutations=99, seed=s).pvalue for s in range(150)]
    assert set(np.round(np.array(pvalues) * 100, 6)) <= set(range(1, 101))  # (1 + k) / (1 + B)
    assert calibration_failures(pvalues, exact=True) == []


def test_mmd_linear_null_pvalues_are_uniform():
    rng = np.random.default_rng(5)
    draw = lambda r: r.normal(size=(300, 5))
    # A fixed bandwidth (about the median distance in 5-D) keeps this fast; the median
    # heuristic is exercised under the null by the permutation test above.
    pvalues = [mmd_test(draw(rng), draw(rng), seed=s, method="linear", bandwidth=3.0).pvalue for s in range(200)]
    assert calibration_failures(pvalues, exact=True) == []


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "quadratic"}, "method"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"n_permutations": 0}, "n_permutations"),
    ],
)
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

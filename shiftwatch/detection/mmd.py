"""`mmd_test`: maximum mean discrepancy with a Gaussian RBF kernel, permutation or linear-time
p-value (Gretton et al. 2012, JMLR), reference (domain A) vs a deployment batch, label-free;
its kernel, bandwidths and the unbiased MMD² estimate.

Pure functions on numpy arrays; randomness only through an explicit `seed`. Bad input
(empty, mismatched shapes, NaN/inf) raises ShiftwatchError.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection._arrays import _features, _same_width
from shiftwatch.detection.basic import DetectorResult

# Row block for kernel sums: each temporary is _BLOCK_ROWS x len(other side) float64, 20 MB at
# 10,000 rows on the other side, so memory stays linear in the sample size.
_BLOCK_ROWS = 256
# Permutations evaluated per matrix product: bounds the (pooled x batch) weight matrices.
_PERMUTATION_BATCH = 256
# Permutation statistics within this of the observed one count as ties (>=): the same split
# summed in a different order may differ in the last bits, and ties must not lower the p-value.
_TIE_TOLERANCE = 1e-12
# Rows of the permutation test's kernel built at a time: 512 x 20,000 float32 is 41 MB (82 MB
# more for its float64 copy).
_KERNEL_BLOCK_ROWS = 512
# The permutation test builds its kernel in float32 (twice the BLAS throughput of float64): the
# statistic moved by 3e-7 to 1.1e-6 relative on real embeddings (n = 500-2,000 per side). Rows
# are centred first: ||a||² + ||b||² - 2ab cancels badly in float32 when the features share a
# large offset (+20 per feature: 1e-4 relative uncentred, 1e-6 centred). Every split is then
# scored in float64 from that one rounded kernel, so the rounding is the same for all splits
# and ranks and ties are exact.
_KERNEL_DTYPE = np.float32
# Distances this small relative to ||a||² + ||b||² are rounding noise of the Gram form (per dtype).
_SNAP = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
# Rows of a distance matrix turned into distances (or kernel values) per pass: 64 x 2000
# float64 is 1 MB, so the several elementwise passes run in cache instead of memory.
_CACHE_ROWS = 64


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian RBF kernel matrix exp(-||a_i - b_j||² / (2 bandwidth²)), shape (len(a), len(b)).

    `bandwidth` is in the units of the features (a Euclidean distance). Materialises the full
    matrix: for small inputs only.
    """
    a, b = _features(a, "a"), _features(b, "b")
    _same_width(a, b)
    return np.exp(-_squared_distances(a, b) / (2.0 * _check_bandwidth(bandwidth) ** 2))


def median_bandwidth(x: np.ndarray, y: np.ndarray, seed: int = 0, max_points: int = 1000) -> float:
    """Median heuristic: the median Euclidean distance between distinct pooled points.

    Uses a seeded subsample of at most `max_points` rows of the pooled x and y (all rows when
    fewer). Zero distances (duplicate rows) are left out so the bandwidth stays positive;
    if every sampled row is identical, returns 1.0 (any bandwidth then gives MMD = 0).
    """
    x, y = _features(x, "x"), _features(y, "y")
    _same_width(x, y)
    rng = np.random.default_rng(seed)
    pooled = rng.choice(len(x) + len(y), min(len(x) + len(y), max_points), replace=False)
    # Gather from each side instead of concatenating: the inputs may be 10,000s of rows.
    rows = np.concatenate([x[pooled[pooled < len(x)]], y[pooled[pooled >= len(x)] - len(x)]])
    return _median_distance(rows)


def reference_bandwidth(reference: np.ndarray, seed: int = 0, max_points: int = 1000) -> float:
    """The median heuristic on the reference alone (a bandwidth that does not depend on the
    deployment sample keeps MMD's permutation test valid): exactly median_bandwidth(reference,
    reference, seed, max_points). That pools the reference twice; while the pool fits in
    `max_points` it takes every row, so each distance between two distinct rows appears four
    times and the median is that of the distinct pairs, computed here from a quarter of the
    distances (27 → 5 ms at 500 rows of 512 features, the same value on real embeddings)."""
    reference = _features(reference, "reference")
    if 2 * len(reference) > max_points:
        return median_bandwidth(reference, reference, seed, max_points)
    return _median_distance(reference)


def _median_distance(rows: np.ndarray) -> float:
    """Median Euclidean distance over the pairs of rows at a positive distance (1.0 if none)."""
    d2 = _squared_distances(rows, rows)[_upper_triangle(len(rows))]
    d2 = d2[d2 > 0]
    return float(np.sqrt(np.median(d2))) if d2.size else 1.0


@functools.lru_cache(maxsize=4)
def _upper_triangle(size: int) -> np.ndarray:
    """Boolean mask of the entries above the diagonal of a (size, size) matrix, row by row (the
    order of np.triu_indices); a mask selects them 4x faster, and the power stage asks for the
    same size thousands of times."""
    mask = np.triu(np.ones((size, size), dtype=bool), k=1)
    mask.flags.writeable = False
    return mask


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased estimate of MMD² between x (m, ...) and y (n, ...) with a Gaussian RBF kernel.

    MMD²_u = Σ_{i≠j} k(x_i,x_j)/(m(m-1)) + Σ_{i≠j} k(y_i,y_j)/(n(n-1)) - 2 Σ k(x_i,y_j)/(mn)
    (Gretton et al. 2012, eq. 3), kernel exp(-d²/(2 bandwidth²)); dimensionless, may be
    slightly negative when the distributions are equal. Rows beyond the first axis are
    flattened. Exact at any size: summed in row blocks, so memory is O((m + n) * block) but
    time is O((m + n)² d) — about 2e11 flops at 10,000 rows per side x 512 features.
    Needs at least 2 rows per side.
    """
    x, y = _features(x, "x", minimum=2), _features(y, "y", minimum=2)
    _same_width(x, y)
    gamma = 1.0 / (2.0 * _check_bandwidth(bandwidth) ** 2)
    m, n = len(x), len(y)
    # The diagonal of k(x, x) is exactly 1 (distance 0), so the i≠j sums subtract m and n.
    xx = (_kernel_sum(x, x, gamma) - m) / (m * (m - 1))
    yy = (_kernel_sum(y, y, gamma) - n) / (n * (n - 1))
    return float(xx + yy - 2.0 * _kernel_sum(x, y, gamma) / (m * n))


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    n_permutations: int = 200,
    seed: int = 0,
    bandwidth: float | None = None,
    max_per_side: int | None = None,
    method: str = "permutation",
) -> DetectorResult:
    """Kernel two-sample test: does x (m, ...) come from the same distribution as y (n, ...)?

    Gaussian RBF kernel; `bandwidth` (feature units) defaults to the median heuristic on
    ≤1000 pooled rows (`median_bandwidth`, seeded). Rows beyond the first axis are flattened.

    method="permutation" (default): statistic = unbiased quadratic MMD² (`mmd2_unbiased`),
    p-value = (1 + #{permuted MMD² ≥ observed}) / (1 + n_permutations), exact under H0.
    The kernel is rounded to float32 for speed (`_KERNEL_DTYPE`): the statistic differs from
    `mmd2_unbiased` by ~1e-6 relative or less, and the rounding is common to every split.
    The permuted statistics are the same unbiased MMD² (not the biased V-statistic), exactly
    and for any m and n: with L = K - 1 (kernel minus one, so a zero diagonal) it is one
    quadratic form z'Lz, z = a on one side and -b on the other with a : b = (n-1) : (m-1),
    plus a constant that does not depend on the split (see `_split_mmd2`; the V-statistic's
    ±1/m, ∓1/n weights would rank the splits the same way only when m = n). Observed and
    permuted statistics come from that one formula, so a permutation that reproduces the
    observed split ties with it. L of the N pooled rows is built a block of rows at a time and
    each block multiplied by the z of every split at once (`_permutation_mmd`): about
    N² (2d + 2 n_permutations) flops and N (512 + n_permutations) floats of memory, never
    N x N. All rows are tested unless `max_per_side` is given: then a side with more rows is
    replaced by a seeded subsample of that many, without replacement, and statistic and
    p-value come from the subsample (`n_tested` says how many were tested). Needs ≥ 2 rows
    per side. `make bench` measures 10,000 per side at 512 features.

    method="linear": the linear-time estimator of Gretton et al. (2012, Sec. 6) on all rows:
    both sides are shuffled (seeded), cut to 2 * floor(min(m, n) / 2) rows and paired; the
    statistic is the mean of h = k(x, x') + k(y, y') - k(x, y') - k(x', y) over the pairs and
    the p-value one-sided from the normal approximation mean / (sd / sqrt(pairs)). O(n d) time
    and memory, no permutations, but much less power per sample than the quadratic estimator.
    Needs ≥ 4 rows per side; a zero spread of h gives p = 1 (statistic ≤ 0) or 0.
    """
    x, y = _features(x, "x", minimum=2), _features(y, "y", minimum=2)
    _same_width(x, y)
    if method not in ("permutation", "linear"):
        raise ShiftwatchError(f"mmd_test: method = {method!r}; use 'permutation' or 'linear'")
    rng = np.random.default_rng(seed)
    if method == "linear":
        return _linear_mmd(x, y, _bandwidth(bandwidth, x, y, seed), rng)
    if n_permutations < 1 or (max_per_side is not None and max_per_side < 2):
        raise ShiftwatchError(
            f"mmd_test: n_permutations = {n_permutations}, max_per_side = "
            f"{max_per_side}; use n_permutations >= 1 and max_per_side >= 2"
        )
    if max_per_side is not None:
        x, y = _subsample(x, max_per_side, rng), _subsample(y, max_per_side, rng)
    return _permutation_mmd(np.concatenate([x, y]), len(x), _bandwidth(bandwidth, x, y, seed), n_permutations, rng)


def _permutation_mmd(
    pooled: np.ndarray, m: int, bandwidth: float, n_permutations: int, rng: np.random.Generator
) -> DetectorResult:
    """Observed unbiased MMD² of pooled[:m] vs pooled[m:] and its permutation p-value.

    Every split is scored by the same quadratic form (`_split_mmd2`): z'Lz with one weight
    column z per split. L = K - 1 is never held whole: it is built `_KERNEL_BLOCK_ROWS` rows
    at a time, in float32 (`_KERNEL_DTYPE`), and each block is multiplied by all the columns
    at once in float64, so memory is a block (rows x N) plus the (N x splits) weights, ~250 MB
    at 10,000 per side and 1,000 permutations, against 3.2 GB for the whole matrix. Only the
    upper block-triangle is built (L is symmetric): time is ~N² (d + splits) / 2 flops.
    """
    size = len(pooled)
    n = size - m
    weights = _split_weights(size, m, np.arange(m)[None, :])  # column 0: the observed split
    for start in range(0, n_permutations, _PERMUTATION_BATCH):
        batch = min(_PERMUTATION_BATCH, n_permutations - start)
        # Each row: the first m of a random permutation of the pooled rows become "x".
        x_rows = rng.permuted(np.tile(np.arange(size), (batch, 1)), axis=1)[:, :m]
        weights = np.concatenate([weights, _split_weights(size, m, x_rows)], axis=1)
    gamma = 1.0 / (2.0 * bandwidth**2)
    rows = (pooled - pooled.mean(axis=0)).astype(_KERNEL_DTYPE)  # distances do not move
    norms = np.einsum("ij,ij->i", rows, rows)
    quadratic, total = np.zeros(weights.shape[1]), 0.0
    for start in range(0, size, _KERNEL_BLOCK_ROWS):
        stop = min(start + _KERNEL_BLOCK_ROWS, size)
        # L is symmetric: build only its blocks on and right of the diagonal and count them
        # twice, the diagonal block halved (exact in binary), so each pair of rows counts once.
        block = _squared_distances(rows[start:stop], rows[start:], norms[start:], gamma=gamma)
        own = np.arange(stop - start)
        block[own, own] = 0.0  # the diagonal of L: exactly 0
        block[:, : stop - start] *= 0.5
        block = block.astype(np.float64)
        total += 2.0 * block.sum()
        quadratic += 2.0 * np.einsum("ib,ib->b", weights[start:stop], block @ weights[start:])
    statistics = quadratic + total / (m * n * (m + n - 2))
    observed, permuted = statistics[0], statistics[1:]
    exceed = np.count_nonzero(permuted >= observed - _TIE_TOLERANCE)
    pvalue = (1 + exceed) / (1 + n_permutations)
    return DetectorResult(float(observed), float(pvalue))


def _split_weights(size: int, m: int, x_rows: np.ndarray) -> np.ndarray:
    """(size, splits) matrix whose column j is the z of split j (`_split_mmd2`): a on the
    rows x_rows[j], -b elsewhere."""
    n = size - m
    scale = np.sqrt((m + n - 1) / (m * n * (m - 1) * (n - 1) * (m + n - 2)))
    weights = np.full((size, len(x_rows)), -(m - 1) * scale)
    weights[x_rows, np.arange(len(x_rows))[:, None]] = (n - 1) * scale
    return weights


def _shifted_kernel(pooled: np.ndarray, bandwidth: float) -> np.ndarray:
    """K - 1 for the pooled rows' RBF kernel K, (N, N), built in place; its diagonal is 0.

    The unbiased MMD² does not change when a constant is added to the kernel; K - 1 has an
    exact zero diagonal and sums without the large constant that would cancel (identical
    samples give exactly 0).
    """
    shifted = _squared_distances(pooled, pooled, gamma=1.0 / (2.0 * bandwidth**2))
    np.fill_diagonal(shifted, 0.0)  # already 0 up to rounding: distance 0 is snapped
    return shifted


def _split_mmd2(shifted: np.ndarray, x_rows: np.ndarray, m: int, total: float | None = None) -> np.ndarray:
    """Unbiased MMD² of each split of the pooled rows (row j of `x_rows`: the x side's indices).

    `shifted` is L = K - 1 (`_shifted_kernel`), zero on the diagonal. With z the vector that
    is a on the x rows and -b on the y rows: z'Lz = a(a+b) S_xx + b(a+b) S_yy - ab T, where
    S_xx, S_yy are the i≠j sums of L within each side and T = S_xx + S_yy + 2 S_xy, the sum
    of all of L (`total`), is the same for every split. MMD²_u = S_xx / (m(m-1)) + S_yy /
    (n(n-1)) - 2 S_xy / (mn) = (m+n-1)/(mn) [S_xx/(m-1) + S_yy/(n-1)] - T/(mn); matching
    coefficients gives a : b = (n - 1) : (m - 1), a(a+b) = (m+n-1) / (m n (m-1)), and

        MMD²_u = z'Lz + T / (m n (m + n - 2))     exactly, for any m, n ≥ 2.

    With Z the (N, batch) matrix of such columns, the z'Lz are the column sums of Z ∘ (L Z).
    (The V-statistic's weights ±1/m, ∓1/n rank splits as MMD²_u does only when m = n.)
    """
    size = len(shifted)
    n = size - m
    weights = _split_weights(size, m, x_rows)
    quadratic = np.einsum("ib,ib->b", weights, shifted @ weights)
    total = shifted.sum() if total is None else total
    return quadratic + total / (m * n * (m + n - 2))


def _linear_mmd(x: np.ndarray, y: np.ndarray, bandwidth: float, rng: np.random.Generator) -> DetectorResult:
    pairs = min(len(x), len(y)) // 2
    if pairs < 2:
        raise ShiftwatchError(
            f"mmd_test(method='linear') needs at least 4 rows per side, got "
            f"{len(x)} and {len(y)}; use method='permutation' for tiny samples"
        )
    # Shuffle before pairing: rows stored in order (e.g. sorted by class) would bias the pairs.
    x = x[rng.permutation(len(x))[: 2 * pairs]]
    y = y[rng.permutation(len(y))[: 2 * pairs]]
    x1, x2, y1, y2 = x[0::2], x[1::2], y[0::2], y[1::2]
    gamma = 1.0 / (2.0 * bandwidth**2)
    h = (
        _paired_kernel(x1, x2, gamma)
        + _paired_kernel(y1, y2, gamma)
        - _paired_kernel(x1, y2, gamma)
        - _paired_kernel(x2, y1, gamma)
    )
    statistic, spread = float(h.mean()), float(h.std(ddof=1))
    if spread == 0.0:
        return DetectorResult(statistic, 1.0 if statistic <= 0 else 0.0)
    return DetectorResult(statistic, float(stats.norm.sf(statistic / (spread / np.sqrt(pairs)))))


def _paired_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * np.einsum("ij,ij->i", a - b, a - b))


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
    """Σ_ij exp(-gamma ||a_i - b_j||²), computed in row blocks of `a`."""
    b_norms = np.einsum("ij,ij->i", b, b)
    blocks = (a[start : start + _BLOCK_ROWS] for start in range(0, len(a), _BLOCK_ROWS))
    return float(sum(np.exp(-gamma * _squared_distances(block, b, b_norms)).sum() for block in blocks))


def _squared_distances(
    a: np.ndarray, b: np.ndarray, b_norms: np.ndarray | None = None, gamma: float | None = None
) -> np.ndarray:
    """||a_i - b_j||² via the Gram matrix (one BLAS product), or with `gamma` the shifted RBF
    kernel exp(-gamma ||a_i - b_j||²) - 1. The Gram matrix is turned into either in place, a
    few rows at a time so each pass stays in cache."""
    a_norms = np.einsum("ij,ij->i", a, a)
    b_norms = np.einsum("ij,ij->i", b, b) if b_norms is None else b_norms
    out = a @ b.T  # a @ a.T runs as a symmetric rank-k update: half the flops
    for start in range(0, len(out), _CACHE_ROWS):
        block = out[start : start + _CACHE_ROWS]
        scale = np.add.outer(a_norms[start : start + _CACHE_ROWS], b_norms)
        block *= -2.0
        block += scale
        # The Gram form cancels catastrophically for (near-)identical rows: snap rounding noise,
        # including negatives, to an exact 0 so k(x, x) = 1 and duplicates are recognised.
        scale *= _SNAP[out.dtype]
        block[block <= scale] = 0.0
        if gamma is not None:
            block *= -gamma
            np.expm1(block, out=block)
    return out


def _subsample(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= size else rows[np.sort(rng.choice(len(rows), size, replace=False))]


def _bandwidth(bandwidth: float | None, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    return median_bandwidth(x, y, seed) if bandwidth is None else _check_bandwidth(bandwidth)


def _check_bandwidth(bandwidth: float) -> float:
    if not np.isfinite(bandwidth) or bandwidth <= 0:
        raise ShiftwatchError(f"bandwidth = {bandwidth}; pass a positive distance or None for the median heuristic")
    return float(bandwidth)

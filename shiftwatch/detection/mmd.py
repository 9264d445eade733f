"""Model-based and kernel two-sample tests, cheap image statistics, and a Holm verdict.

Reference (domain A) vs a deployment batch, label-free:

- BBSD (black-box shift detection, Rabanser et al. 2019, "Failing Loudly"): tests on the
  classifier's softmax outputs, `bbsd_ks` (per-output KS, Bonferroni), `bbsd_chi2`
  (predicted-label counts, omnibus) and `bbsd_class_shares` (each class's predicted share,
  Fisher's exact test, Bonferroni: the max-type test for a change in few classes).
- `mmd_test`: maximum mean discrepancy with a Gaussian RBF kernel, permutation or
  linear-time p-value (Gretton et al. 2012, JMLR).
- `image_stats_test`: KS on per-image pixel quantiles, which a classifier tends to ignore,
  e.g. a brightness shift lifting the black background. (The share of exactly-zero pixels is
  computed too, but not tested: JPEG, rotation or a resize change it without harm.)
- `holm`: Holm–Bonferroni over several detectors' p-values into one verdict.

Pure functions on numpy arrays; randomness only through an explicit `seed`. Bad input
(empty, mismatched shapes, NaN/inf) raises ShiftwatchError.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from shiftwatch import ShiftwatchError
from shiftwatch.detection.basic import DetectorResult, ks_columns, label_proportion_test

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


# ---------------------------------------------------------------- BBSD on softmax outputs

def bbsd_ks_columns(reference_probs: np.ndarray,
                    deployment_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output KS tests for BBSD: (statistics, p-values), each shape (K,), uncorrected.

    Column k compares the k-th softmax output of the reference (N, K) and deployment (M, K)
    arrays (the numbers of scipy's two-sided `ks_2samp`, asymptotic p-value; see
    `shiftwatch.detection.basic.ks_columns`); use it to see which classes moved. A column
    that is constant and equal on both sides has statistic 0 and p-value 1.
    """
    reference, deployment = _probabilities(reference_probs, deployment_probs)
    return _ks_columns(reference, deployment)


def bbsd_ks(reference_probs: np.ndarray, deployment_probs: np.ndarray) -> DetectorResult:
    """BBSD-KS: KS test on each of the K softmax outputs, combined by Bonferroni.

    Inputs are (N, K) and (M, K) arrays of class probabilities. statistic = the largest KS
    distance (in [0, 1]); pvalue = min(1, K * smallest per-output p-value), a valid but
    conservative p-value because the K outputs are dependent (they sum to 1).
    """
    return _bonferroni(*bbsd_ks_columns(reference_probs, deployment_probs))


def bbsd_chi2(reference_probs: np.ndarray, deployment_probs: np.ndarray) -> DetectorResult:
    """BBSD-χ²: chi-squared homogeneity test on predicted-label (argmax) counts.

    Inputs are (N, K) and (M, K) class probabilities; K is the number of classes. statistic
    = χ² (no continuity correction), pvalue from the asymptotic χ² distribution, which is
    rough when expected counts fall below ~5. Both sides predicting one single class gives
    (0, 1). See `label_proportion_test`.
    """
    reference, deployment = _probabilities(reference_probs, deployment_probs)
    classes = reference.shape[1]
    return label_proportion_test(reference.argmax(axis=1), deployment.argmax(axis=1), classes)


def bbsd_class_shares(reference_probs: np.ndarray, deployment_probs: np.ndarray) -> DetectorResult:
    """BBSD per class: has the share of images predicted as any one class changed?

    For each of the K classes, Fisher's exact test (two-sided) on the 2x2 table (predicted
    as the class or not) x (reference, deployment); pvalue = min(1, K * smallest p-value)
    (Bonferroni), statistic = the largest absolute difference in predicted share. χ² spreads
    its power over K - 1 degrees of freedom; when the mix changes in one or two classes (a
    class thinned out, as the label shift here) this max-type test needs far fewer images,
    and it is exact at any n. The omnibus `bbsd_chi2` stays for diffuse changes.
    """
    reference, deployment = _probabilities(reference_probs, deployment_probs)
    classes = reference.shape[1]
    ref_counts = np.bincount(reference.argmax(axis=1), minlength=classes)
    dep_counts = np.bincount(deployment.argmax(axis=1), minlength=classes)
    pvalues = np.array([_fisher_two_sided(ref_counts[c], len(reference), dep_counts[c], len(deployment))
                        for c in range(classes)])
    gaps = np.abs(ref_counts / len(reference) - dep_counts / len(deployment))
    return _bonferroni(gaps, pvalues)


def _fisher_two_sided(hits_a: int, size_a: int, hits_b: int, size_b: int) -> float:
    """Fisher's exact test of hits_a/size_a vs hits_b/size_b, two-sided: the probability under
    the hypergeometric null of every table no more likely than the observed one (relative
    tolerance 1e-7, as scipy's fisher_exact, whose p-values a test matches to 1e-9). The
    whole support at once, from the pmf's ratio recurrence in log space: ~0.2 ms where
    fisher_exact takes ~0.5 ms (ten classes, ~10^5 calls in the power stage)."""
    low, pmf = _hypergeometric_pmf(hits_a, size_a, hits_b, size_b)
    observed = pmf[hits_a - low]
    return float(min(1.0, pmf[pmf <= observed * (1 + 1e-7)].sum()))


def _fisher_greater(hits_a: int, size_a: int, hits_b: int, size_b: int) -> float:
    """Fisher's exact test, one-sided: is the share hits_a/size_a larger than hits_b/size_b?
    P(at least hits_a of the hits fall in sample a), as scipy's fisher_exact(alternative="greater")."""
    low, pmf = _hypergeometric_pmf(hits_a, size_a, hits_b, size_b)
    return float(min(1.0, pmf[hits_a - low:].sum()))


def _hypergeometric_pmf(hits_a: int, size_a: int, hits_b: int, size_b: int) -> tuple[int, np.ndarray]:
    """(lowest possible hits in a, pmf over its support) given the margins of the 2x2 table."""
    hits = hits_a + hits_b
    low, high = max(0, hits - size_b), min(hits, size_a)
    k = np.arange(low, high, dtype=float)
    # log P(k + 1) - log P(k) for X ~ Hypergeom(size_a + size_b, size_a, hits)
    steps = np.log((size_a - k) * (hits - k)) - np.log((k + 1) * (size_b - hits + k + 1))
    log_pmf = np.concatenate([[0.0], np.cumsum(steps)])
    pmf = np.exp(log_pmf - log_pmf.max())
    return low, pmf / pmf.sum()


# ---------------------------------------------------------------- framing

def spans_frame(pixels: np.ndarray) -> np.ndarray:
    """Per image: does the object span the frame, i.e. is there ink (any non-zero 8-bit pixel)
    in both the top and bottom rows, or in both the left and right columns?

    FashionMNIST's conversion resized every product's longest edge to the full 28 pixels
    (Xiao et al. 2017), so ~97 % of its images span the frame; an image moved, shrunk or
    padded no longer does. `pixels` is the (N, H*W) uint8 view of square images."""
    if pixels.ndim != 2 or math.isqrt(pixels.shape[1]) ** 2 != pixels.shape[1]:
        raise ShiftwatchError(f"frame span: expected (N, H*W) pixels of square images, got shape {pixels.shape}")
    size = math.isqrt(pixels.shape[1])
    ink = pixels.reshape(len(pixels), size, size) > 0
    rows = ink[:, 0].any(axis=1) & ink[:, -1].any(axis=1)
    columns = ink[:, :, 0].any(axis=1) & ink[:, :, -1].any(axis=1)
    return rows | columns


def frame_span_test(reference_pixels: np.ndarray, deployment_pixels: np.ndarray) -> DetectorResult:
    """Have fewer deployment images kept the frame-filling framing than reference images?

    One-sided Fisher's exact test on the share of images that span the frame (`spans_frame`);
    statistic = reference share - deployment share. One-sided because what it guards is the
    dataset's framing being lost (moved, shrunk, padded or letterboxed objects). More ink at
    the borders (JPEG ringing, noise) is left to the other detectors."""
    if len(reference_pixels) == 0 or len(deployment_pixels) == 0:
        raise ShiftwatchError("frame span: the reference and the deployment batch need at least one image each")
    in_reference = int(spans_frame(reference_pixels).sum())
    in_deployment = int(spans_frame(deployment_pixels).sum())
    drop = in_reference / len(reference_pixels) - in_deployment / len(deployment_pixels)
    return DetectorResult(float(drop), _fisher_greater(in_reference, len(reference_pixels),
                                                       in_deployment, len(deployment_pixels)))


# ---------------------------------------------------------------- MMD

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


def mmd_test(x: np.ndarray, y: np.ndarray, n_permutations: int = 200, seed: int = 0,
             bandwidth: float | None = None, max_per_side: int | None = None,
             method: str = "permutation") -> DetectorResult:
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
        raise ShiftwatchError(f"mmd_test: n_permutations = {n_permutations}, max_per_side = "
                              f"{max_per_side}; use n_permutations >= 1 and max_per_side >= 2")
    if max_per_side is not None:
        x, y = _subsample(x, max_per_side, rng), _subsample(y, max_per_side, rng)
    return _permutation_mmd(np.concatenate([x, y]), len(x), _bandwidth(bandwidth, x, y, seed),
                            n_permutations, rng)


def _permutation_mmd(pooled: np.ndarray, m: int, bandwidth: float, n_permutations: int,
                     rng: np.random.Generator) -> DetectorResult:
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
    gamma = 1.0 / (2.0 * bandwidth ** 2)
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
        block[:, :stop - start] *= 0.5
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
    shifted = _squared_distances(pooled, pooled, gamma=1.0 / (2.0 * bandwidth ** 2))
    np.fill_diagonal(shifted, 0.0)  # already 0 up to rounding: distance 0 is snapped
    return shifted


def _split_mmd2(shifted: np.ndarray, x_rows: np.ndarray, m: int,
                total: float | None = None) -> np.ndarray:
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


def _linear_mmd(x: np.ndarray, y: np.ndarray, bandwidth: float,
                rng: np.random.Generator) -> DetectorResult:
    pairs = min(len(x), len(y)) // 2
    if pairs < 2:
        raise ShiftwatchError(f"mmd_test(method='linear') needs at least 4 rows per side, got "
                              f"{len(x)} and {len(y)}; use method='permutation' for tiny samples")
    # Shuffle before pairing: rows stored in order (e.g. sorted by class) would bias the pairs.
    x = x[rng.permutation(len(x))[:2 * pairs]]
    y = y[rng.permutation(len(y))[:2 * pairs]]
    x1, x2, y1, y2 = x[0::2], x[1::2], y[0::2], y[1::2]
    gamma = 1.0 / (2.0 * bandwidth ** 2)
    h = (_paired_kernel(x1, x2, gamma) + _paired_kernel(y1, y2, gamma)
         - _paired_kernel(x1, y2, gamma) - _paired_kernel(x2, y1, gamma))
    statistic, spread = float(h.mean()), float(h.std(ddof=1))
    if spread == 0.0:
        return DetectorResult(statistic, 1.0 if statistic <= 0 else 0.0)
    return DetectorResult(statistic, float(stats.norm.sf(statistic / (spread / np.sqrt(pairs)))))


def _paired_kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * np.einsum("ij,ij->i", a - b, a - b))


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
    """Σ_ij exp(-gamma ||a_i - b_j||²), computed in row blocks of `a`."""
    b_norms = np.einsum("ij,ij->i", b, b)
    blocks = (a[start:start + _BLOCK_ROWS] for start in range(0, len(a), _BLOCK_ROWS))
    return float(sum(np.exp(-gamma * _squared_distances(block, b, b_norms)).sum()
                     for block in blocks))


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray | None = None,
                       gamma: float | None = None) -> np.ndarray:
    """||a_i - b_j||² via the Gram matrix (one BLAS product), or with `gamma` the shifted RBF
    kernel exp(-gamma ||a_i - b_j||²) - 1. The Gram matrix is turned into either in place, a
    few rows at a time so each pass stays in cache."""
    a_norms = np.einsum("ij,ij->i", a, a)
    b_norms = np.einsum("ij,ij->i", b, b) if b_norms is None else b_norms
    out = a @ b.T  # a @ a.T runs as a symmetric rank-k update: half the flops
    for start in range(0, len(out), _CACHE_ROWS):
        block = out[start:start + _CACHE_ROWS]
        scale = np.add.outer(a_norms[start:start + _CACHE_ROWS], b_norms)
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
        raise ShiftwatchError(f"bandwidth = {bandwidth}; pass a positive distance or None for "
                              "the median heuristic")
    return float(bandwidth)


# ---------------------------------------------------------------- image statistics

def zero_fraction(images: np.ndarray) -> np.ndarray:
    """Share of pixels exactly 0 in each image, shape (N,), in [0, 1].

    FashionMNIST backgrounds are exactly black; a brightness shift (or noise) lifts them, so
    this drops to ~0 even when a classifier's predictions barely move.
    """
    flat = _features(images, "images", as_float=False)
    return np.count_nonzero(flat == 0, axis=1) / flat.shape[1]


def pixel_quantiles(images: np.ndarray, qs: Sequence[float] = (0.1, 0.5, 0.9)) -> np.ndarray:
    """Per-image pixel quantiles (numpy's default linear interpolation), shape (N, len(qs)),
    in the images' intensity units. `qs` must lie in [0, 1]."""
    qs = np.asarray(qs, dtype=float)
    if qs.ndim != 1 or qs.size == 0 or np.any((qs < 0) | (qs > 1)):
        raise ShiftwatchError(f"qs = {qs.tolist()}; pass a non-empty list of quantiles in [0, 1]")
    return np.quantile(_features(images, "images"), qs, axis=1).T


def image_stats_test(reference_images: np.ndarray, deployment_images: np.ndarray,
                     qs: Sequence[float] = (0.1, 0.5, 0.9)) -> DetectorResult:
    """KS tests on cheap per-image statistics, combined by Bonferroni.

    Statistics: each `pixel_quantiles` column (len(qs) tests).
    statistic = the largest KS distance; pvalue = min(1, tests * smallest p-value). Many
    ties (e.g. the 10 % quantile is 0 for every image) only make the KS p-values
    conservative; a statistic constant and equal on both sides gives p = 1.
    """
    reference_shape = np.shape(reference_images)[1:]
    deployment_shape = np.shape(deployment_images)[1:]
    if reference_shape != deployment_shape:
        raise ShiftwatchError(f"reference images have shape {reference_shape} but deployment "
                              f"images {deployment_shape}; resize one side to match")
    reference = _image_statistics(reference_images, "reference_images", qs)
    deployment = _image_statistics(deployment_images, "deployment_images", qs)
    return _bonferroni(*_ks_columns(reference, deployment))


def _image_statistics(images: np.ndarray, name: str, qs: Sequence[float]) -> np.ndarray:
    _features(images, name)  # validates with the caller's argument name
    return pixel_quantiles(images, qs)


# ---------------------------------------------------------------- Holm–Bonferroni

@dataclass(frozen=True)
class HolmResult:
    """Holm–Bonferroni verdict: `reject` (any detector alarms), Holm-adjusted p-values by
    detector name, and the names rejected at the level used."""
    reject: bool
    adjusted: dict[str, float]
    rejected: tuple[str, ...]


def check_permutations_for_holm(permutations: int, detectors: int, alpha: float, setting: str) -> None:
    """A permutation p-value is at least 1/(B + 1): under Holm over k detectors it can raise an
    alarm on its own only if 1/(B + 1) < alpha / k. Raise, naming `setting`, if it cannot."""
    if 1 / (permutations + 1) >= alpha / detectors:
        raise ShiftwatchError(f"{setting} = {permutations}: the smallest permutation p-value "
                              f"1/{permutations + 1} cannot fall below alpha/{detectors} = "
                              f"{alpha / detectors:.4f} (Holm over {detectors} detectors); use at "
                              f"least {int(np.floor(detectors / alpha))}")


def holm(pvalues: Mapping[str, float | None], alpha: float = 0.05) -> HolmResult:
    """Holm's step-down procedure over several detectors' p-values (family-wise error ≤ alpha).

    Adjusted p-value of the i-th smallest of m: max_{j≤i} min(1, (m - j + 1) p_(j)); a
    detector is rejected when its adjusted p-value is < alpha (strict, as `detect_drift`
    compares p-values). Detectors whose p-value is None (e.g. KL, which has none) are skipped
    and left out of `adjusted`; with none left, nothing is rejected.
    """
    if not 0 < alpha < 1:
        raise ShiftwatchError(f"alpha = {alpha}; pass a significance level in (0, 1)")
    tested = {name: p for name, p in pvalues.items() if p is not None}
    for name, p in tested.items():
        if not 0 <= p <= 1:  # also catches NaN
            raise ShiftwatchError(f"p-value of {name!r} is {p}; a p-value must lie in [0, 1]")
    names = sorted(tested, key=tested.get)
    scaled = [min(1.0, (len(names) - rank) * tested[name]) for rank, name in enumerate(names)]
    # The running maximum keeps adjusted p-values in the order of the raw ones (step-down).
    adjusted = dict(zip(names, np.maximum.accumulate(scaled).tolist() if names else []))
    rejected = tuple(name for name in names if adjusted[name] < alpha)
    return HolmResult(bool(rejected), {name: adjusted[name] for name in tested}, rejected)


# ---------------------------------------------------------------- helpers

def _ks_columns(reference: np.ndarray, deployment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ks_columns(reference, deployment)


def _bonferroni(statistics: np.ndarray, pvalues: np.ndarray) -> DetectorResult:
    return DetectorResult(float(statistics.max()), float(min(1.0, len(pvalues) * pvalues.min())))


def _probabilities(reference: np.ndarray, deployment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    for name, array in (("reference_probs", reference), ("deployment_probs", deployment)):
        if np.ndim(array) != 2:
            raise ShiftwatchError(f"{name} has shape {np.shape(array)}; pass softmax outputs "
                                  "as a 2-D array (samples, classes)")
    reference = _features(reference, "reference_probs")
    deployment = _features(deployment, "deployment_probs")
    _same_width(reference, deployment, "classes")
    return reference, deployment


def _features(array: np.ndarray, name: str, minimum: int = 1, as_float: bool = True) -> np.ndarray:
    """`array` as a 2-D (samples, features) view; rejects too few rows and NaN/inf."""
    array = np.asarray(array)
    if array.ndim == 0 or len(array) < minimum:
        raise ShiftwatchError(f"{name} has {0 if array.ndim == 0 else len(array)} rows; "
                              f"pass at least {minimum} sample(s) along the first axis")
    if array.size == 0:
        raise ShiftwatchError(f"{name} has shape {array.shape} with no values per sample; "
                              "pass at least one feature per row")
    flat = array.reshape(len(array), -1)
    if as_float:
        flat = flat.astype(np.float64, copy=False)
    if not np.isfinite(flat).all():
        raise ShiftwatchError(f"{name} contains NaN or infinite values; drop or impute those "
                              "rows before testing")
    return flat


def _same_width(a: np.ndarray, b: np.ndarray, what: str = "features") -> None:
    if a.shape[1] != b.shape[1]:
        raise ShiftwatchError(f"the two samples have {a.shape[1]} and {b.shape[1]} {what} per "
                              "row; pass arrays with the same trailing shape")

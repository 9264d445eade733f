"""Shared by the two-sample tests (test_bbsd, test_mmd, test_image_stats, test_framing, test_holm):
synthetic softmax outputs and images, and the check that null p-values are those of a
level-alpha test."""

import numpy as np
from scipy import stats

ALPHA = 0.05


def softmax_outputs(rng, n, classes=10, boost=0.0):
    """Softmax outputs of random logits; `boost` raises class 0's logit (a label shift)."""
    logits = rng.normal(0, 2, (n, classes))
    logits[:, 0] += boost
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic_images(rng, n, brightness=0.0):
    """FashionMNIST-like: about half the pixels exactly black, the rest uniform."""
    images = np.where(rng.random((n, 28, 28)) < 0.5, 0.0, rng.random((n, 28, 28)))
    return np.clip(images + brightness, 0, 1)


def calibration_failures(pvalues, exact):
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


def null_pvalues(test, draw, rng, repetitions):
    return [test(draw(rng), draw(rng)) for _ in range(repetitions)]

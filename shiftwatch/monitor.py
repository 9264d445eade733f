"""Model-based monitoring of a deployment set, without its labels.

What the detectors look at is computed once per set (`shiftwatch.features.Features`):
softmax outputs and penultimate-layer embeddings of the model, and cheap per-image statistics
that catch what the model ignores. `run_detectors` turns a reference and a deployment `Features` into
p-values and the one verdict (`VERDICT`, the same in `monitor`, `power` and `check`);
`label_shift_report` estimates the class mix
(BBSE and EM) and `accuracy_report` the model's accuracy (ATC, average confidence).

The reference must be held-out in-domain data (the official test set): on the model's own
training images the softmax outputs are over-confident, and BBSD would alarm on a healthy
stream (the power stage measures this).
"""
from __future__ import annotations

import numpy as np

from shiftwatch import NUM_CLASSES
from shiftwatch.detectors import DetectorResult, ks_test
from shiftwatch.features import Features
from shiftwatch.labelshift import (
    atc_estimate,
    atc_fit,
    average_confidence,
    bbse,
    bbse_share_interval,
    em_priors,
    estimates_disagree,
    total_variation,
)
from shiftwatch.twosample import bbsd_chi2, bbsd_class_shares, bbsd_ks, holm, median_bandwidth, mmd_test

# The verdict: Holm–Bonferroni at monitor.alpha over these detectors, every one weighted alike.
# `monitor`, `power` and `check` all use exactly this set (they need only `Features`, so the
# power stage can repeat them); `monitor`'s pixel-level tests are reported beside it as
# diagnostics, outside the verdict. Fixed before the harm table (power stage) was measured.
FEATURE_DETECTORS = ("ks_mean_pixel", "image_stats", "bbsd_ks", "bbsd_chi2", "bbsd_class_shares",
                     "mmd_embedding")
VERDICT = "Holm over " + ", ".join(FEATURE_DETECTORS)
# image_stats columns tested: the 10/50/90 % pixel quantiles (column 1, the share of exactly-zero
# pixels, is kept in the features but not tested: JPEG, rotation or a resize change it
# without harm, and the synthetic brightness shift is the only shift that leaves that trace).
_QUANTILE_COLUMNS = (2, 3, 4)


def feature_detector(name: str, *, seed: int, mmd_permutations: int, mmd_max_per_side: int | None):
    """detector(reference: Features, deployment: Features) -> DetectorResult, by name."""
    def ks_mean_pixel(ref: Features, dep: Features) -> DetectorResult:
        return ks_test(ref.image_stats[:, 0], dep.image_stats[:, 0])

    def image_stats(ref: Features, dep: Features) -> DetectorResult:
        # KS on the three pixel quantiles, Bonferroni over them.
        results = [ks_test(ref.image_stats[:, c], dep.image_stats[:, c]) for c in _QUANTILE_COLUMNS]
        return DetectorResult(max(r.statistic for r in results),
                              min(1.0, len(results) * min(r.pvalue for r in results)))

    prepared: dict[str, object] = {"for": None}

    def mmd_embedding(ref: Features, dep: Features) -> DetectorResult:
        # The reference is fixed across the many draws of the power stage: subsample it and
        # fix the kernel bandwidth (median heuristic on the reference) once, not per draw.
        # A bandwidth that does not depend on the deployment sample keeps the permutation test valid.
        if prepared["for"] is not ref.embeddings:  # identity, not id(): no reuse after GC
            reference = ref.embeddings
            if mmd_max_per_side is not None and len(reference) > mmd_max_per_side:
                rows = np.random.default_rng(seed).choice(len(reference), mmd_max_per_side, replace=False)
                reference = reference[rows]
            prepared.update({"for": ref.embeddings, "reference": reference,
                             "bandwidth": median_bandwidth(reference, reference, seed=seed)})
        return mmd_test(prepared["reference"], dep.embeddings, n_permutations=mmd_permutations,
                        seed=seed, bandwidth=prepared["bandwidth"], max_per_side=mmd_max_per_side)

    detectors = {
        "ks_mean_pixel": ks_mean_pixel,
        "image_stats": image_stats,
        "bbsd_ks": lambda ref, dep: bbsd_ks(ref.probabilities, dep.probabilities),
        "bbsd_chi2": lambda ref, dep: bbsd_chi2(ref.probabilities, dep.probabilities),
        "bbsd_class_shares": lambda ref, dep: bbsd_class_shares(ref.probabilities, dep.probabilities),
        "mmd_embedding": mmd_embedding,
    }
    return detectors[name]


def run_detectors(reference: Features, deployment: Features, *, seed: int, alpha: float,
                  mmd_permutations: int, mmd_max_per_side: int | None,
                  diagnostics: dict[str, DetectorResult] | None = None) -> dict:
    """Every verdict detector's result and the verdict (Holm–Bonferroni over their p-values
    at `alpha`); `diagnostics` (e.g. pixel MMD, domain classifier) are reported beside it
    with their own p-values and do not enter the verdict."""
    results = {name: feature_detector(name, seed=seed, mmd_permutations=mmd_permutations,
                                      mmd_max_per_side=mmd_max_per_side)(reference, deployment)
               for name in FEATURE_DETECTORS}
    verdict = holm({name: r.pvalue for name, r in results.items()}, alpha)
    report = {
        "tests": {name: {"statistic": r.statistic, "pvalue": r.pvalue,
                         "adjusted_pvalue": verdict.adjusted[name]} for name, r in results.items()},
        "drift": int(verdict.reject),
        "alerting": sorted(verdict.rejected),
        "verdict": VERDICT,
    }
    if diagnostics:
        report["diagnostics"] = {name: {"statistic": r.statistic, "pvalue": r.pvalue}
                                 for name, r in diagnostics.items()}
    return report


def label_shift_report(reference_probs: np.ndarray, reference_labels: np.ndarray,
                       deployment_probs: np.ndarray, focus_class: int, tolerance: float,
                       true_labels: np.ndarray | None = None, seed: int = 0,
                       bootstrap: int = 200) -> dict:
    """Estimated class proportions of the deployment set (BBSE and EM), the focus class's share
    next to its true share (when `true_labels` are given, for reporting only), and a trust flag:
    untrustworthy when BBSE needs negative weights or BBSE and EM differ by more than
    `tolerance` in total variation (both assume the images of a class did not change).

    The focus class's BBSE share comes with a 95 % percentile-bootstrap interval over both the
    reference and the deployment images (`bootstrap` seeded resamples of each), and EM says
    whether it converged and in how many iterations."""
    source_priors = np.bincount(reference_labels, minlength=NUM_CLASSES) / len(reference_labels)
    by_bbse = bbse(reference_probs, reference_labels, deployment_probs)
    by_em = em_priors(deployment_probs, source_priors)
    report = {
        "bbse": by_bbse.proportions_clipped.tolist(),
        "em": by_em.proportions.tolist(),
        f"class_{focus_class}_share_bbse": float(by_bbse.proportions_clipped[focus_class]),
        f"class_{focus_class}_share_bbse_interval": bbse_share_interval(
            reference_probs.argmax(1), reference_labels, deployment_probs.argmax(1), focus_class,
            bootstrap, seed),
        f"class_{focus_class}_share_em": float(by_em.proportions[focus_class]),
        "em_converged": int(by_em.converged),
        "em_iterations": int(by_em.iterations),
        f"class_{focus_class}_share_reference": float(source_priors[focus_class]),
        "tv_bbse_em": total_variation(by_bbse.proportions_clipped, by_em.proportions),
        "bbse_negative_weights": int(by_bbse.negative_weights),
        "untrustworthy": int(estimates_disagree(by_bbse, by_em, tolerance)),
    }
    if true_labels is not None:
        truth = np.bincount(true_labels, minlength=NUM_CLASSES) / len(true_labels)
        report["true"] = truth.tolist()
        report[f"class_{focus_class}_share_true"] = float(truth[focus_class])
        report["tv_bbse_true"] = total_variation(by_bbse.proportions_clipped, truth)
    return report


def accuracy_report(reference_probs: np.ndarray, reference_labels: np.ndarray,
                    deployment_probs: np.ndarray, true_labels: np.ndarray | None = None) -> dict:
    """Label-free accuracy estimates of the deployment set: ATC (threshold on max confidence
    fitted on the reference) and average confidence; the true accuracy when labels are given."""
    threshold = atc_fit(reference_probs, reference_labels)
    report = {"atc": atc_estimate(deployment_probs, threshold),
              "average_confidence": average_confidence(deployment_probs)}
    if true_labels is not None:
        report["true"] = float(np.mean(deployment_probs.argmax(1) == true_labels))
    return report

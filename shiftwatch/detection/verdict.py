"""Model-based monitoring of a deployment set, without its labels.

What the detectors look at is computed once per set (`shiftwatch.model.features.Features`):
softmax outputs and penultimate-layer embeddings of the model, and cheap per-image statistics
that catch what the model ignores. `run_detectors` turns a reference and a deployment `Features` into
p-values of every detector in `shiftwatch.detection.registry` and the one verdict (`VERDICT`,
the same in `monitor`, `power` and `check`);
`label_shift_report` estimates the class mix
(BBSE and EM) and `accuracy_report` the model's accuracy (ATC, average confidence).

The reference must be held-out in-domain data (the official test set): on the model's own
training images the softmax outputs are over-confident, and BBSD would alarm on a healthy
stream (the power stage measures this).
"""

from __future__ import annotations

import numpy as np

from shiftwatch import NUM_CLASSES
from shiftwatch.detection.basic import DetectorResult
from shiftwatch.detection.holm import holm
from shiftwatch.detection.registry import Settings, bound, diagnostic_detectors, verdict_detectors
from shiftwatch.estimation.labelshift import (
    atc_estimate,
    atc_fit,
    average_confidence,
    bbse,
    bbse_share_interval,
    em_priors,
    estimates_disagree,
    total_variation,
)
from shiftwatch.model.features import Features

# The verdict: Holm–Bonferroni at monitor.alpha over the registry's verdict detectors, every
# one weighted alike. `monitor`, `power` and `check` all use exactly this set (they need only
# `Features`, so the power stage can repeat them); the registry's diagnostics, and `monitor`'s
# pixel-level MMD and domain classifier, are reported beside it, outside the verdict.
FEATURE_DETECTORS = verdict_detectors()
DIAGNOSTIC_DETECTORS = diagnostic_detectors()
VERDICT = "Holm over " + ", ".join(FEATURE_DETECTORS)


def run_detectors(
    reference: Features,
    deployment: Features,
    *,
    seed: int,
    alpha: float,
    mmd_permutations: int,
    mmd_max_per_side: int | None,
    diagnostics: dict[str, DetectorResult] | None = None,
) -> dict:
    """Every registered detector's result and the verdict (Holm–Bonferroni over the verdict
    detectors' p-values at `alpha`). The registry's diagnostics and `diagnostics` (e.g. pixel
    MMD, domain classifier) are reported beside it with their own p-values."""
    settings = Settings(seed=seed, permutations=mmd_permutations, max_per_side=mmd_max_per_side)
    results = {
        name: test(reference, deployment)
        for name, test in bound(FEATURE_DETECTORS + DIAGNOSTIC_DETECTORS, settings).items()
    }
    verdict = holm({name: results[name].pvalue for name in FEATURE_DETECTORS}, alpha)
    extra = {**{name: results[name] for name in DIAGNOSTIC_DETECTORS}, **(diagnostics or {})}
    report = {
        "tests": {
            name: {
                "statistic": results[name].statistic,
                "pvalue": results[name].pvalue,
                "adjusted_pvalue": verdict.adjusted[name],
            }
            for name in FEATURE_DETECTORS
        },
        "drift": int(verdict.reject),
        "alerting": sorted(verdict.rejected),
        "verdict": VERDICT,
    }
    if extra:
        report["diagnostics"] = {name: {"statistic": r.statistic, "pvalue": r.pvalue} for name, r in extra.items()}
    return report


def verdict_alarms(
    reference: Features,
    deployment: Features,
    *,
    seed: int,
    alpha: float,
    mmd_permutations: int,
    mmd_max_per_side: int | None,
) -> bool:
    """`run_detectors`' "drift" alone, without the diagnostics: for judging the verdict on many
    draws (stage harm)."""
    settings = Settings(seed=seed, permutations=mmd_permutations, max_per_side=mmd_max_per_side)
    tests = bound(FEATURE_DETECTORS, settings)
    return holm({name: test(reference, deployment).pvalue for name, test in tests.items()}, alpha).reject


def label_shift_report(
    reference_probs: np.ndarray,
    reference_labels: np.ndarray,
    deployment_probs: np.ndarray,
    focus_class: int,
    tolerance: float,
    true_labels: np.ndarray | None = None,
    seed: int = 0,
    bootstrap: int = 200,
) -> dict:
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
            reference_probs.argmax(1), reference_labels, deployment_probs.argmax(1), focus_class, bootstrap, seed
        ),
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


def accuracy_report(
    reference_probs: np.ndarray,
    reference_labels: np.ndarray,
    deployment_probs: np.ndarray,
    true_labels: np.ndarray | None = None,
) -> dict:
    """Label-free accuracy estimates of the deployment set: ATC (threshold on max confidence
    fitted on the reference) and average confidence; the true accuracy when labels are given."""
    threshold = atc_fit(reference_probs, reference_labels)
    report = {
        "atc": atc_estimate(deployment_probs, threshold),
        "average_confidence": average_confidence(deployment_probs),
    }
    if true_labels is not None:
        report["true"] = float(np.mean(deployment_probs.argmax(1) == true_labels))
    return report

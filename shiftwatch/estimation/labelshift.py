"""Label-free estimates for a deployment set: its class proportions and the model's accuracy.

Everything works on a classifier's softmax outputs, shape (N, K) with rows summing to 1:
held-out in-domain data with labels ("source") and an unlabelled deployment set ("target").

- Class proportions under label shift (p(x | y) fixed, p(y) changes): BBSE (Lipton, Wang,
  Smola 2018) and the EM prior adjustment of Saerens, Latinne, Decaestecker (2002).
  BBSE needs only that the confusion matrix is invertible; EM needs calibrated posteriors.
  When the two disagree, trust neither (`estimates_disagree`).
- Accuracy: average confidence, and Average Thresholded Confidence (Garg et al., ICLR 2022).

Proportions and accuracies are fractions in [0, 1] (raw BBSE proportions may leave it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

from shiftwatch import NUM_CLASSES, ShiftwatchError

ROW_SUM_ATOL = 1e-3  # loose enough for float32 softmax and probabilities saved to 4 decimals
ATC_SCORES = ("max_confidence", "negative_entropy")


def _frozen(values) -> np.ndarray:
    array = np.array(values, dtype=float)
    array.setflags(write=False)  # frozen dataclass, frozen contents
    return array


# eq=False: `==` on array fields is elementwise, which would make dataclass equality ambiguous.
@dataclass(frozen=True, eq=False)
class BBSEEstimate:
    proportions: np.ndarray  # q[j], sums to 1 but may be negative
    proportions_clipped: np.ndarray  # max(q, 0) renormalised: a distribution
    weights: np.ndarray  # w[j] = q[j] / p_source[j]
    negative_weights: bool
    condition_number: float  # of the joint confusion matrix C; inf when singular

    def as_dict(self) -> dict:
        return {
            "proportions": self.proportions.tolist(),
            "proportions_clipped": self.proportions_clipped.tolist(),
            "weights": self.weights.tolist(),
            "negative_weights": self.negative_weights,
            "condition_number": self.condition_number,
        }


@dataclass(frozen=True, eq=False)
class EMEstimate:
    proportions: np.ndarray  # q[j], a distribution
    weights: np.ndarray  # q[j] / p_source[j], the factors applied to the posteriors
    iterations: int
    converged: bool

    def as_dict(self) -> dict:
        return {
            "proportions": self.proportions.tolist(),
            "weights": self.weights.tolist(),
            "iterations": self.iterations,
            "converged": self.converged,
        }


def bbse(
    source_probs: np.ndarray,
    source_labels: np.ndarray,
    target_probs: np.ndarray,
    num_classes: int = NUM_CLASSES,
    hard: bool = True,
) -> BBSEEstimate:
    """Black Box Shift Estimation of the target's class proportions (fractions).

    From the source: joint confusion C[i, j] = P(ŷ = i, y = j) and label frequencies p[j];
    from the target: μ[i] = P(ŷ = i). Weights w solve C w = μ, and q = w · p.
    `hard=True` uses argmax predictions; `hard=False` uses the probabilities themselves
    (C[i, j] = mean of probs[:, i] over source samples of class j, times p[j]; μ = mean
    target probs). Raw q sums to 1 but is negative where the estimate overshoots; then
    `negative_weights` is True and `proportions_clipped` is the usable distribution.
    A singular C (e.g. a class absent from the source labels, which gets q = 0) is solved
    by minimum-norm least squares and reported as condition_number = inf.
    """
    source_probs = _check_probs(source_probs, "source_probs", num_classes)
    source_labels = _check_labels(source_labels, len(source_probs), num_classes)
    target_probs = _check_probs(target_probs, "target_probs", num_classes)
    label_onehot = np.eye(num_classes)[source_labels]
    source_out = _onehot_argmax(source_probs) if hard else source_probs
    target_out = _onehot_argmax(target_probs) if hard else target_probs
    joint = source_out.T @ label_onehot / len(source_labels)  # C[i, j]
    weights, proportions = _bbse_solve(joint, label_onehot.mean(axis=0), target_out.mean(axis=0))
    return BBSEEstimate(
        proportions=_frozen(proportions),
        proportions_clipped=_frozen(_clip_and_normalise(proportions)),
        weights=_frozen(weights),
        negative_weights=bool(np.any(weights < 0)),
        condition_number=float(np.linalg.cond(joint)),
    )


def class_mix_scores(source_probs: np.ndarray, source_labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """One score per predicted class whose mean over a batch is BBSE's accuracy estimate: the
    source's per-class accuracies weighted by the class mix the batch's predictions imply.

    With the joint confusion C and μ the batch's predicted-class shares, BBSE's class mix is
    q = p · C⁻¹μ and the accuracy Σ_j q_j acc_j = diag(C)ᵀ C⁻¹ μ = mean_i v[ŷ_i] for
    v = C⁻ᵀ diag(C) (least squares where C is singular). On the source itself the mean is the
    source's accuracy exactly; under a pure label shift it follows the batch's accuracy."""
    source_probs = _check_probs(source_probs, "source_probs", num_classes)
    source_labels = _check_labels(source_labels, len(source_probs), num_classes)
    joint = _onehot_argmax(source_probs).T @ np.eye(num_classes)[source_labels] / len(source_labels)
    return np.linalg.lstsq(joint.T, np.diag(joint), rcond=None)[0]


def _bbse_solve(
    joint: np.ndarray, source_priors: np.ndarray, target_predicted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(w, q): C w = μ by least squares (equals solve when C is invertible, and still answers
    when it is not), q = w · p."""
    weights = np.linalg.lstsq(joint, target_predicted, rcond=None)[0]
    return weights, weights * source_priors


def bbse_share_interval(
    source_predicted: np.ndarray,
    source_labels: np.ndarray,
    target_predicted: np.ndarray,
    label_class: int,
    resamples: int = 200,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
) -> list[float]:
    """95 % percentile-bootstrap interval [low, high] of the clipped BBSE (hard) share of
    `label_class`: `resamples` seeded resamples of both the source (its confusion matrix) and
    the target (its predicted-class counts), from argmax predictions. Each resample is two
    bincounts and a 10 x 10 solve, so 200 cost ~0.1 s on 18,000 + 10,000 images."""
    rng = np.random.default_rng(seed)
    k = num_classes
    shares = []
    for _ in range(resamples):
        source = rng.integers(len(source_labels), size=len(source_labels))
        target = rng.integers(len(target_predicted), size=len(target_predicted))
        joint = np.bincount(source_predicted[source] * k + source_labels[source], minlength=k * k).reshape(k, k) / len(
            source
        )
        predicted = np.bincount(target_predicted[target], minlength=k) / len(target)
        _, proportions = _bbse_solve(joint, joint.sum(axis=0), predicted)
        shares.append(_clip_and_normalise(proportions)[label_class])
    return [float(q) for q in np.percentile(shares, [2.5, 97.5])]


def em_priors(
    target_probs: np.ndarray, source_priors: np.ndarray, max_iter: int = 1000, tol: float = 1e-8
) -> EMEstimate:
    """Saerens–Latinne–Decaestecker EM estimate of the target's class proportions (fractions).

    Starting from q = source_priors, repeat: adjust each posterior by q / p_source,
    renormalise the row, and set q to the mean adjusted posterior; stop when no entry of q
    moves by more than `tol` (converged=True) or after `max_iter` rounds (converged=False,
    q is the last iterate). Assumes the posteriors are calibrated on the source; a class
    the model never gives mass to ends at q = 0. Source priors must all be positive.
    """
    source_priors = _check_priors(source_priors, "source_priors", positive=True)
    target_probs = _check_probs(target_probs, "target_probs", len(source_priors))
    if max_iter < 1 or not tol > 0:
        raise ShiftwatchError(f"em_priors needs max_iter >= 1 and tol > 0, got {max_iter}, {tol}")
    priors = source_priors
    for iteration in range(1, max_iter + 1):  # noqa: B007 (reported after the loop)
        updated = _adjust(target_probs, priors / source_priors).mean(axis=0)
        converged = bool(np.max(np.abs(updated - priors)) <= tol)
        priors = updated
        if converged:
            break
    return EMEstimate(
        proportions=_frozen(priors), weights=_frozen(priors / source_priors), iterations=iteration, converged=converged
    )


def reweight_probs(probs: np.ndarray, source_priors: np.ndarray, target_priors: np.ndarray) -> np.ndarray:
    """Posteriors corrected for label shift: probs · (q / p) renormalised per row, shape (N, K).

    q = target_priors may contain zeros (e.g. a clipped BBSE estimate); a row whose mass
    lies only on classes with q = 0 has nothing to reweight and is returned unchanged.
    Source priors must all be positive. q = p returns the probabilities unchanged.
    """
    source_priors = _check_priors(source_priors, "source_priors", positive=True)
    target_priors = _check_priors(target_priors, "target_priors", positive=False)
    if len(target_priors) != len(source_priors):
        raise ShiftwatchError(
            f"source_priors has {len(source_priors)} classes but target_priors has {len(target_priors)}"
        )
    probs = _check_probs(probs, "probs", len(source_priors))
    return _adjust(probs, target_priors / source_priors)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance ½ Σ |p − q| between two class distributions, in [0, 1]."""
    p = _check_priors(p, "p", positive=False)
    q = _check_priors(q, "q", positive=False)
    if len(p) != len(q):
        raise ShiftwatchError(f"p has {len(p)} classes but q has {len(q)}")
    return float(0.5 * np.abs(p - q).sum())


def estimates_disagree(bbse_estimate: BBSEEstimate, em_estimate: EMEstimate, tolerance: float = 0.05) -> bool:
    """True when a label-shift estimate should not be trusted.

    That is when BBSE needed negative weights (its solve overshot: too few samples or a
    near-singular confusion matrix), or when BBSE's clipped proportions and EM's proportions
    are more than `tolerance` apart in total variation distance (a fraction in [0, 1]).
    BBSE and EM rest on different assumptions (invertible confusion vs calibration), so
    agreement is evidence that both hold; equal distance to tolerance counts as agreement.
    """
    if not 0 <= tolerance <= 1:
        raise ShiftwatchError(f"tolerance must be in [0, 1], got {tolerance}")
    distance = total_variation(bbse_estimate.proportions_clipped, em_estimate.proportions)
    return bbse_estimate.negative_weights or distance > tolerance


def average_confidence(probs: np.ndarray) -> float:
    """Mean max softmax probability, a label-free accuracy estimate (fraction in [0, 1]).

    Exact for a calibrated model; overconfident models overestimate accuracy.
    """
    return float(_check_probs(probs, "probs").max(axis=1).mean())


def atc_fit(source_probs: np.ndarray, source_labels: np.ndarray, score: str = "max_confidence") -> float:
    """ATC threshold t: on held-out source data, the fraction with score > t is the accuracy.

    Scores: "max_confidence" (max prob, in [0, 1]) or "negative_entropy" (Σ p log p in
    nats, ≤ 0); t is in the score's units. With k of n predictions correct, t is the
    (n − k)-th smallest score, so exactly k scores exceed it unless scores tie at t (then
    fewer do). All correct: t lies just below the lowest score; none correct: t is the highest.
    """
    source_probs = _check_probs(source_probs, "source_probs")
    source_labels = _check_labels(source_labels, len(source_probs), source_probs.shape[1])
    scores = np.sort(_atc_score(source_probs, score))
    num_correct = int(np.sum(source_probs.argmax(axis=1) == source_labels))
    if num_correct == len(scores):
        return float(np.nextafter(scores[0], -np.inf))
    return float(scores[len(scores) - num_correct - 1])


def atc_estimate(target_probs: np.ndarray, threshold: float, score: str = "max_confidence") -> float:
    """ATC accuracy estimate: fraction of target samples whose score exceeds `threshold`.

    `threshold` and `score` must come from the same `atc_fit` call. Result in [0, 1].
    """
    if np.isnan(threshold):
        raise ShiftwatchError("ATC threshold is NaN")
    target_probs = _check_probs(target_probs, "target_probs")
    return float(np.mean(_atc_score(target_probs, score) > threshold))


def _atc_score(probs: np.ndarray, score: str) -> np.ndarray:
    if score == "max_confidence":
        return probs.max(axis=1)
    if score == "negative_entropy":
        return xlogy(probs, probs).sum(axis=1)  # xlogy: 0 log 0 = 0
    raise ShiftwatchError(f"unknown ATC score {score!r}; expected one of {', '.join(ATC_SCORES)}")


def _adjust(probs: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Multiply each row by per-class factors and renormalise; rows summing to 0 stay as given."""
    adjusted = probs * factors
    totals = adjusted.sum(axis=1, keepdims=True)
    dead = totals[:, 0] <= 0
    adjusted[dead] = probs[dead]
    totals[dead] = 1.0
    return adjusted / totals


def _onehot_argmax(probs: np.ndarray) -> np.ndarray:
    return np.eye(probs.shape[1])[probs.argmax(axis=1)]


def _clip_and_normalise(proportions: np.ndarray) -> np.ndarray:
    clipped = np.clip(proportions, 0.0, None)
    if clipped.sum() <= 0:
        raise ShiftwatchError("BBSE estimate has no positive proportion; cannot normalise it")
    return clipped / clipped.sum()


def _check_probs(probs, name: str, num_classes: int | None = None) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ShiftwatchError(f"{name} must be 2-D (samples, classes), got shape {probs.shape}")
    if probs.shape[0] == 0:
        raise ShiftwatchError(f"{name} is empty")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ShiftwatchError(f"{name} has {probs.shape[1]} columns, expected {num_classes}")
    if probs.shape[1] < 2:
        raise ShiftwatchError(f"{name} needs at least 2 classes, got {probs.shape[1]}")
    if not np.all(np.isfinite(probs)):
        raise ShiftwatchError(f"{name} contains NaN or infinite values")
    if np.any(probs < 0) or np.any(probs > 1 + ROW_SUM_ATOL):
        raise ShiftwatchError(f"{name} has values outside [0, 1]")
    worst = np.max(np.abs(probs.sum(axis=1) - 1))
    if worst > ROW_SUM_ATOL:
        raise ShiftwatchError(f"{name} rows must sum to 1 (worst is off by {worst:.3g})")
    return probs


def _check_labels(labels, num_samples: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_samples:
        raise ShiftwatchError(
            f"source_labels has shape {labels.shape}, expected ({num_samples},) to match source_probs"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShiftwatchError(f"source_labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ShiftwatchError(f"source_labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _check_priors(priors, name: str, positive: bool) -> np.ndarray:
    priors = np.asarray(priors, dtype=float)
    if priors.ndim != 1 or len(priors) < 2:
        raise ShiftwatchError(f"{name} must be 1-D with at least 2 classes, got shape {priors.shape}")
    if not np.all(np.isfinite(priors)):
        raise ShiftwatchError(f"{name} contains NaN or infinite values")
    if np.any(priors <= 0) if positive else np.any(priors < 0):
        raise ShiftwatchError(f"{name} must be {'positive' if positive else 'non-negative'}")
    if abs(priors.sum() - 1) > ROW_SUM_ATOL:
        raise ShiftwatchError(f"{name} must sum to 1, sums to {priors.sum():.6g}")
    return priors

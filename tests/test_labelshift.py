import numpy as np
import pytest
from scipy.special import softmax

from shiftwatch import NUM_CLASSES, ShiftwatchError
from shiftwatch.estimation.labelshift import (
    ATC_SCORES,
    BBSEEstimate,
    EMEstimate,
    atc_estimate,
    atc_fit,
    average_confidence,
    bbse,
    class_mix_scores,
    em_priors,
    estimates_disagree,
    reweight_probs,
    total_variation,
)

K = NUM_CLASSES
UNIFORM = np.full(K, 1 / K)
# Class 7 at a tenth of its source share, the rest unchanged.
CLASS_7_RARE = np.where(np.arange(K) == 7, 0.01, 0.1) / 0.91


# --- simulators -------------------------------------------------------------------------


def confusion_classifier(rng, priors, n, accuracy=0.9):
    """Labels drawn from `priors`; predictions from a fixed confusion matrix (correct with
    probability `accuracy`, errors spread evenly); probs put 0.6 on the prediction plus noise."""
    labels = rng.choice(K, size=n, p=priors)
    wrong = (labels + rng.integers(1, K, size=n)) % K  # uniform over the other classes
    predicted = np.where(rng.random(n) < accuracy, labels, wrong)
    probs = 0.4 * rng.dirichlet(np.ones(K), size=n) + 0.6 * np.eye(K)[predicted]
    return probs, labels


# Gaussian classes on a circle: the exact posterior is known, so the probs are calibrated.
MEANS = 4.0 * np.stack([np.cos(2 * np.pi * np.arange(K) / K), np.sin(2 * np.pi * np.arange(K) / K)], axis=1)


def gaussian_classifier(rng, priors, n, model_priors=UNIFORM, shrink=1.0):
    """Exact Bayes posteriors under `model_priors`; shrink < 1 pulls the data towards the
    centre (a covariate shift that makes the model less accurate and less confident)."""
    labels = rng.choice(K, size=n, p=priors)
    x = shrink * MEANS[labels] + rng.standard_normal((n, 2))
    log_likelihood = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(axis=2)
    return softmax(log_likelihood + np.log(model_priors), axis=1), labels


def accuracy(probs, labels):
    return float(np.mean(probs.argmax(axis=1) == labels))


# --- BBSE -------------------------------------------------------------------------------


@pytest.mark.parametrize("hard", [True, False])
def test_bbse_recovers_a_rare_class_under_label_shift(rng, hard):
    # Given a 90 %-accurate classifier, a balanced source and class 7 made 10x rarer
    source_probs, source_labels = confusion_classifier(rng, UNIFORM, 20_000)
    target_probs, _ = confusion_classifier(rng, CLASS_7_RARE, 20_000)
    # When BBSE estimates the target proportions
    estimate = bbse(source_probs, source_labels, target_probs, hard=hard)
    # Then class 7's share is close to the truth, and so is every other class's
    assert estimate.proportions[7] == pytest.approx(CLASS_7_RARE[7], abs=0.01)
    assert np.abs(estimate.proportions - CLASS_7_RARE).max() < 0.02
    assert estimate.proportions.sum() == pytest.approx(1.0)
    assert not estimate.negative_weights
    assert estimate.weights[7] == pytest.approx(0.11, abs=0.1)  # q7 / p7 = 0.1 / 0.91


def test_bbse_without_shift_returns_the_source_priors(rng):
    source_probs, source_labels = confusion_classifier(rng, UNIFORM, 20_000)
    target_probs, _ = confusion_classifier(rng, UNIFORM, 20_000)
    estimate = bbse(source_probs, source_labels, target_probs)
    assert np.abs(estimate.proportions - UNIFORM).max() < 0.01
    assert np.abs(estimate.weights - 1).max() < 0.15  # w = q / empirical source share


def test_bbse_known_answer_on_two_classes():
    # Given C = [[.4, .1], [.1, .4]] (cond 0.5 / 0.3) and target predictions 70/30
    source_predicted = np.array([0] * 4 + [1] * 1 + [0] * 1 + [1] * 4)
    source_labels = np.array([0] * 5 + [1] * 5)
    target_predicted = np.array([0] * 7 + [1] * 3)
    # When BBSE solves C w = μ = (.7, .3)
    estimate = bbse(np.eye(2)[source_predicted], source_labels, np.eye(2)[target_predicted], num_classes=2)
    # Then w = (5/3, 1/3) and q = w / 2
    assert estimate.weights == pytest.approx([5 / 3, 1 / 3])
    assert estimate.proportions == pytest.approx([5 / 6, 1 / 6])
    assert estimate.proportions_clipped == pytest.approx([5 / 6, 1 / 6])
    assert estimate.condition_number == pytest.approx(5 / 3)
    assert not estimate.negative_weights


def test_bbse_overshoot_is_flagged_and_clipped():
    # Same C, but every target sample predicted class 0: w = (8/3, -2/3)
    source_predicted = np.array([0] * 4 + [1] * 1 + [0] * 1 + [1] * 4)
    source_labels = np.array([0] * 5 + [1] * 5)
    estimate = bbse(np.eye(2)[source_predicted], source_labels, np.eye(2)[[0] * 10], num_classes=2)
    assert estimate.proportions == pytest.approx([4 / 3, -1 / 3])
    assert estimate.proportions_clipped == pytest.approx([1.0, 0.0])
    assert estimate.negative_weights


def test_bbse_class_missing_from_source_gets_zero_and_infinite_condition(rng):
    source_probs, source_labels = confusion_classifier(rng, np.r_[np.full(9, 1 / 9), 0], 5_000)
    target_probs, _ = confusion_classifier(rng, UNIFORM, 5_000)
    estimate = bbse(source_probs, source_labels, target_probs)
    assert estimate.proportions[9] == 0
    assert estimate.condition_number == np.inf


def test_estimates_are_frozen_and_serialisable(rng):
    source_probs, source_labels = confusion_classifier(rng, UNIFORM, 1_000)
    estimate = bbse(source_probs, source_labels, source_probs)
    with pytest.raises(ValueError):
        estimate.proportions[0] = 1.0
    assert set(estimate.as_dict()) == {
        "proportions",
        "proportions_clipped",
        "weights",
        "negative_weights",
        "condition_number",
    }
    assert isinstance(estimate.as_dict()["proportions"], list)


# --- EM ---------------------------------------------------------------------------------


def test_em_recovers_the_priors_from_calibrated_posteriors(rng):
    # Given exact posteriors for a balanced source, and a target with proportions 1:2:...:10
    target_priors = np.arange(1, K + 1) / 55
    target_probs, _ = gaussian_classifier(rng, target_priors, 20_000)
    # When EM re-estimates the priors
    estimate = em_priors(target_probs, UNIFORM)
    # Then it lands within 0.02 of every true proportion, having converged
    assert np.abs(estimate.proportions - target_priors).max() < 0.02
    assert estimate.converged and estimate.iterations < 1000
    assert estimate.weights == pytest.approx(estimate.proportions / UNIFORM)


def test_em_recovers_non_uniform_source_priors_on_source_data(rng):
    source_priors = np.arange(K, 0, -1) / 55
    source_probs, _ = gaussian_classifier(rng, source_priors, 20_000, model_priors=source_priors)
    estimate = em_priors(source_probs, source_priors)
    assert np.abs(estimate.proportions - source_priors).max() < 0.02
    assert np.abs(estimate.weights - 1).max() < 0.2


def test_em_stops_at_max_iter_without_converging(rng):
    target_probs, _ = gaussian_classifier(rng, CLASS_7_RARE, 2_000)
    estimate = em_priors(target_probs, UNIFORM, max_iter=1)
    assert estimate.iterations == 1 and not estimate.converged
    assert estimate.proportions.sum() == pytest.approx(1.0)


def test_bbse_and_em_agree_on_calibrated_label_shift(rng):
    source_probs, source_labels = gaussian_classifier(rng, UNIFORM, 20_000)
    target_probs, _ = gaussian_classifier(rng, CLASS_7_RARE, 20_000)
    assert not estimates_disagree(bbse(source_probs, source_labels, target_probs), em_priors(target_probs, UNIFORM))


# --- trust ------------------------------------------------------------------------------


def _bbse_result(proportions, negative_weights=False):
    proportions = np.asarray(proportions, dtype=float)
    return BBSEEstimate(proportions, proportions, proportions / 0.5, negative_weights, 1.0)


def _em_result(proportions):
    proportions = np.asarray(proportions, dtype=float)
    return EMEstimate(proportions, proportions / 0.5, 10, True)


def test_disagreement_is_total_variation_beyond_tolerance():
    bbse_result, em_result = _bbse_result([0.9, 0.1]), _em_result([0.8, 0.2])
    assert total_variation([0.9, 0.1], [0.8, 0.2]) == pytest.approx(0.1)
    assert estimates_disagree(bbse_result, em_result, tolerance=0.05)
    assert not estimates_disagree(bbse_result, em_result, tolerance=0.15)


def test_negative_bbse_weights_are_never_trusted():
    assert estimates_disagree(_bbse_result([1.0, 0.0], negative_weights=True), _em_result([1.0, 0.0]), tolerance=1.0)


# --- reweighting ------------------------------------------------------------------------


def test_reweight_with_unchanged_priors_is_the_identity(rng):
    probs = rng.dirichlet(np.ones(K), size=100)
    assert reweight_probs(probs, UNIFORM, UNIFORM) == pytest.approx(probs)


def test_reweight_known_answer_and_rows_sum_to_one(rng):
    reweighted = reweight_probs([[0.5, 0.5]], [0.5, 0.5], [0.8, 0.2])
    assert reweighted == pytest.approx(np.array([[0.8, 0.2]]))
    reweighted = reweight_probs(rng.dirichlet(np.ones(K), size=100), UNIFORM, CLASS_7_RARE)
    assert reweighted.sum(axis=1) == pytest.approx(np.ones(100))


def test_reweight_leaves_a_row_with_no_mass_on_possible_classes_alone():
    reweighted = reweight_probs([[1.0, 0.0], [0.5, 0.5]], [0.5, 0.5], [0.0, 1.0])
    assert reweighted == pytest.approx(np.array([[1.0, 0.0], [0.0, 1.0]]))


# --- accuracy without labels ------------------------------------------------------------


def test_average_confidence_known_answers(rng):
    assert average_confidence(np.eye(K)[rng.integers(0, K, 50)]) == 1.0
    assert average_confidence(np.full((5, K), 1 / K)) == pytest.approx(1 / K)
    probs, labels = gaussian_classifier(rng, UNIFORM, 20_000)  # calibrated: conf ≈ accuracy
    assert average_confidence(probs) == pytest.approx(accuracy(probs, labels), abs=0.015)


@pytest.mark.parametrize("score", ATC_SCORES)
def test_atc_on_source_reproduces_source_accuracy(rng, score):
    probs, labels = gaussian_classifier(rng, UNIFORM, 5_000)
    threshold = atc_fit(probs, labels, score)
    assert atc_estimate(probs, threshold, score) == pytest.approx(accuracy(probs, labels), abs=1 / 5_000)


@pytest.mark.parametrize("score", ATC_SCORES)
def test_atc_falls_when_the_model_gets_worse(rng, score):
    # Given a threshold fitted on source, and a target squeezed towards the decision centre
    source_probs, source_labels = gaussian_classifier(rng, UNIFORM, 10_000)
    target_probs, target_labels = gaussian_classifier(rng, UNIFORM, 10_000, shrink=0.6)
    threshold = atc_fit(source_probs, source_labels, score)
    # Then the estimate drops well below source accuracy, as the true accuracy does
    source_accuracy, target_accuracy = accuracy(source_probs, source_labels), accuracy(target_probs, target_labels)
    assert target_accuracy < source_accuracy - 0.15  # the simulation really is worse
    assert atc_estimate(target_probs, threshold, score) < source_accuracy - 0.1


def test_atc_threshold_edge_cases():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
    # all correct: everything must clear the threshold; none correct: nothing may
    assert atc_estimate(probs, atc_fit(probs, np.array([0, 0, 0]))) == 1.0
    assert atc_estimate(probs, atc_fit(probs, np.array([1, 1, 1]))) == 0.0
    # two of three correct: the threshold is the lowest score
    assert atc_fit(probs, np.array([0, 1, 0])) == 0.6


# --- bad input --------------------------------------------------------------------------

GOOD_PROBS = np.full((4, K), 1 / K)
GOOD_LABELS = np.array([0, 1, 2, 3])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bbse(np.empty((0, K)), np.array([], int), GOOD_PROBS), "empty"),
        (lambda: bbse(GOOD_PROBS, GOOD_LABELS, np.empty((0, K))), "empty"),
        (lambda: bbse(np.where(np.eye(4, K) == 1, np.nan, 0.1), GOOD_LABELS, GOOD_PROBS), "NaN"),
        (lambda: bbse(GOOD_PROBS * 1.5, GOOD_LABELS, GOOD_PROBS), "sum to 1"),
        (lambda: bbse(GOOD_PROBS, GOOD_LABELS[:3], GOOD_PROBS), "match"),
        (lambda: bbse(GOOD_PROBS, np.array([0, 1, 2, 10]), GOOD_PROBS), "0..9"),
        (lambda: bbse(GOOD_PROBS, GOOD_LABELS.astype(float), GOOD_PROBS), "integers"),
        (lambda: bbse(np.full((4, 5), 0.2), GOOD_LABELS, GOOD_PROBS), "expected 10"),
        (lambda: bbse(GOOD_PROBS[0], GOOD_LABELS, GOOD_PROBS), "2-D"),
        (lambda: em_priors(GOOD_PROBS, np.full(5, 0.2)), "expected 5"),
        (lambda: em_priors(GOOD_PROBS, np.r_[0.0, np.full(9, 1 / 9)]), "positive"),
        (lambda: em_priors(GOOD_PROBS, np.full(K, 0.2)), "sum to 1"),
        (lambda: em_priors(GOOD_PROBS, UNIFORM, max_iter=0), "max_iter"),
        (lambda: reweight_probs(GOOD_PROBS, UNIFORM, np.full(5, 0.2)), "target_priors has 5"),
        (lambda: reweight_probs(GOOD_PROBS, UNIFORM, np.r_[-0.1, 1.1, np.zeros(8)]), "non-negative"),
        (lambda: average_confidence(np.empty((0, K))), "empty"),
        (lambda: average_confidence(np.c_[np.full(4, -0.1), np.full((4, 9), 1.1 / 9)]), "[0, 1]"),
        (lambda: atc_fit(GOOD_PROBS, GOOD_LABELS, score="entropy"), "unknown ATC score"),
        (lambda: atc_estimate(GOOD_PROBS, float("nan")), "NaN"),
        (lambda: total_variation([0.5, 0.5], [1.0, 0.0, 0.0]), "classes"),
    ],
)
def test_bad_input_is_a_one_line_shiftwatch_error(call, message):
    with pytest.raises(ShiftwatchError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- the class-mix score (BBSE's accuracy) -----------------------------------------------


def uneven_classifier(rng, priors, n):
    """Per-class accuracy from 0.5 (class 0) to 0.98 (class 9), errors spread evenly: a class
    mix that leans to the easy classes raises the accuracy."""
    per_class = np.linspace(0.5, 0.98, K)
    labels = rng.choice(K, size=n, p=priors)
    wrong = (labels + rng.integers(1, K, size=n)) % K
    predicted = np.where(rng.random(n) < per_class[labels], labels, wrong)
    return 0.4 * rng.dirichlet(np.ones(K), size=n) + 0.6 * np.eye(K)[predicted], labels


def test_class_mix_scores_give_the_source_accuracy_and_follow_a_label_shift(rng):
    source_probs, source_labels = uneven_classifier(rng, UNIFORM, 40_000)
    scores = class_mix_scores(source_probs, source_labels)
    assert scores[source_probs.argmax(1)].mean() == pytest.approx(accuracy(source_probs, source_labels), abs=1e-12)
    easy = np.linspace(0.02, 0.18, K)  # leans to the accurate classes: accuracy up ~8 points
    target_probs, target_labels = uneven_classifier(rng, easy / easy.sum(), 40_000)
    truth = accuracy(target_probs, target_labels)
    assert truth - accuracy(source_probs, source_labels) > 0.05
    assert scores[target_probs.argmax(1)].mean() == pytest.approx(truth, abs=0.01)

"""Stage harm's design and judgement: cells, leave-one-family-out, and the page as check runs it."""

import numpy as np
import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.estimation.accuracy import EstimatorFit
from shiftwatch.estimation.harm import (
    Cell,
    fit_estimator,
    judge_cell,
    leave_one_family_out,
    population_error,
    thin_grid,
)


def outputs(rng, n: int, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated 10-class model's softmax outputs and labels drawn from them."""
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += sharpness
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probabilities, np.array([rng.choice(10, p=p) for p in probabilities])


@pytest.fixture(scope="module")
def pool():
    """A pool of 3,000 images: the first 1,000 are the cells' rows; labels drawn calibrated."""
    probabilities, labels = outputs(np.random.default_rng(0), 3000, 4.0)
    return probabilities, labels


def shifted_cell(pool, family: str, sharpness: float, seed: int, keep: float | None = None) -> Cell:
    """The cell's 1,000 pool rows seen less sharply (a covariate shift that costs accuracy);
    the labels stay the images' own (drawn from the clean outputs)."""
    probabilities, labels = pool
    rows = np.arange(1000)
    if sharpness is None:
        shifted = probabilities[rows]
    else:
        rng = np.random.default_rng(seed)
        logits = np.log(probabilities[rows]) * (sharpness / 4.0) + rng.normal(0, 0.3, (1000, 10))
        shifted = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Cell(family, shifted, None, rows, labels[rows], keep=keep, label_class=7 if keep else None)


def test_a_label_shift_cell_weighs_its_images_by_the_new_class_mix(pool):
    cell = shifted_cell(pool, "label_keep", None, 0, keep=0.1)
    correct = cell.probabilities.argmax(1) == cell.labels
    by_class = [correct[cell.labels == k].mean() for k in range(10)]
    counts = np.bincount(cell.labels, minlength=10) * np.where(np.arange(10) == 7, 0.1, 1.0)
    assert cell.accuracy() == pytest.approx(np.dot(by_class, counts) / counts.sum())


def test_leave_one_family_out_judges_each_family_with_a_fit_that_never_saw_it(pool):
    clean = shifted_cell(pool, "none", None, 0)
    design = {
        f"{family}_{s}": shifted_cell(pool, family, s, seed)
        for seed, (family, s) in enumerate([("a", 3.0), ("a", 2.0), ("b", 3.0), ("b", 1.5)])
    }
    # A family whose images lose accuracy while confidence does not move: only the fit that saw
    # it could absorb it, and it must not, so its left-out error is large.
    _probabilities, _labels = pool
    wrong = clean.labels.copy()
    wrong[:200] = (wrong[:200] + 1) % 10
    design["liar_1"] = Cell("liar", clean.probabilities, None, clean.rows, wrong)
    errors = leave_one_family_out(design, clean, ["confidence"])
    assert set(errors) == set(design)
    assert errors["liar_1"] > 10  # points: the estimate sees no change, the truth lost ~18 points
    fitted = fit_estimator(design, clean, ["confidence"])
    assert abs(population_error(fitted, design["a_2.0"], clean)) < abs(errors["liar_1"])


def test_judge_cell_pages_on_a_costly_shift_and_stays_quiet_on_no_shift(pool):
    probabilities, labels = pool
    clean = shifted_cell(pool, "none", None, 0)
    fit = EstimatorFit(("confidence",), (1.0,), 0.005)
    costly = shifted_cell(pool, "blurry", 1.0, 1)
    assert 100 * (clean.accuracy() - costly.accuracy()) > 5
    quiet = judge_cell(
        clean,
        probabilities,
        None,
        labels,
        fit,
        sizes=[100, 300],
        repetitions=40,
        reference_size=1500,
        page_points=3,
        seed=0,
    )
    loud = judge_cell(
        costly,
        probabilities,
        None,
        labels,
        fit,
        sizes=[100],
        repetitions=40,
        reference_size=1500,
        page_points=3,
        seed=0,
    )
    assert quiet["300"]["page_rate"] <= 0.1 and loud["100"]["page_rate"] >= 0.9
    assert quiet["100"]["coverage"] >= 0.8 and set(quiet["100"]) >= {"ci_low", "ci_high", "median_error_points"}
    again = judge_cell(
        clean,
        probabilities,
        None,
        labels,
        fit,
        sizes=[100, 300],
        repetitions=40,
        reference_size=1500,
        page_points=3,
        seed=0,
    )
    assert again == quiet  # seeded per (n, repetition)
    # every draw of the costly cell pages, so each but the first is confirmed by the one before
    assert loud["100"]["confirmed_pages"] == round(40 * loud["100"]["page_rate"]) - 1 == 39
    assert quiet["300"]["confirmed_pages"] <= round(40 * quiet["300"]["page_rate"])


def test_the_change_verdict_runs_on_the_pages_own_draws_and_stops_where_settled(pool):
    from shiftwatch.estimation.harm import ChangeJudge

    probabilities, labels = pool
    clean = shifted_cell(pool, "none", None, 0)
    fit = EstimatorFit(("confidence",), (1.0,), 0.005)
    seen = []

    def every_other(reference_rows, picked, seed):
        """A verdict that alarms on every other draw, recording what it was handed."""
        seen.append((reference_rows, picked, seed))
        return len(seen) % 2 == 0

    def judged(change):
        return judge_cell(
            clean,
            probabilities,
            None,
            labels,
            fit,
            sizes=[100, 200],
            repetitions=30,
            reference_size=1500,
            page_points=3,
            seed=0,
            change=change,
        )

    without = judged(None)
    mixed = judged(ChangeJudge(every_other, [100], repetitions=20, first_look=8))
    # the page's numbers do not move: the verdict's seed is drawn after the draw
    assert {n: {k: v for k, v in d.items() if not k.startswith("change")} for n, d in mixed.items()} == without
    assert "change_rate" not in mixed["200"]  # only at change sizes
    assert mixed["100"]["change_repetitions"] == 20 and mixed["100"]["change_rate"] == 0.5  # mixed: every draw
    reference_rows, picked, _ = seen[0]
    assert len(reference_rows) == 1500 and len(picked) == 100
    assert not set(reference_rows) & set(clean.rows[picked])  # the reference excludes the draw's images
    always = judged(ChangeJudge(lambda *_: True, [100, 200], repetitions=20, first_look=8))
    assert always["100"]["change_repetitions"] == always["200"]["change_repetitions"] == 8  # settled at the first look
    assert always["100"]["change_rate"] == 1.0 and always["100"]["change_ci_low"] > 0.6


def test_confirmed_pages_count_pages_right_after_a_page():
    from shiftwatch.estimation.harm import _confirmed

    assert _confirmed([True, True, False, True, False, True, True, True]) == 3
    assert _confirmed([True, False] * 5) == 0 and _confirmed([]) == 0


def test_a_draw_larger_than_the_thinned_cell_is_refused(pool):
    probabilities, labels = pool
    cell = shifted_cell(pool, "label_keep", None, 0, keep=0.1)
    with pytest.raises(ShiftwatchError, match="harm.sizes"):
        judge_cell(
            cell,
            probabilities,
            None,
            labels,
            EstimatorFit(("confidence",), (1.0,)),
            sizes=[990],
            repetitions=1,
            reference_size=100,
            page_points=3,
            seed=0,
        )


def test_the_survey_scores_every_estimator_on_every_cell_out_of_family(pool):
    from shiftwatch.estimation.harm import SURVEY, survey

    def with_twin(cell: Cell) -> Cell:  # the fine-tuned model's outputs: a softer copy; a border per image
        twin, confidence = np.sqrt(cell.probabilities), cell.probabilities.max(1)
        twin = twin / twin.sum(1, keepdims=True)
        return Cell(cell.family, cell.probabilities, twin, cell.rows, cell.labels, clear=0.5 + confidence / 2)

    clean = with_twin(shifted_cell(pool, "none", None, 0))
    design = {
        f"{family}_{s}": with_twin(shifted_cell(pool, family, s, seed))
        for seed, (family, s) in enumerate([("a", 3.0), ("a", 2.0), ("b", 3.0), ("b", 1.5)])
    }
    held_out = {"c_1.0": with_twin(shifted_cell(pool, "c", 1.0, 9))}
    found = survey(design, held_out, clean)
    assert set(found) == set(SURVEY)
    for errors in found.values():
        assert set(errors) == set(design) | set(held_out)
    doc = EstimatorFit(("confidence",), (1.0,))
    expected = population_error(doc, held_out["c_1.0"], clean)
    assert found["doc (confidence, weight 1)"]["c_1.0"] == pytest.approx(expected)
    # a fitted estimator's design cell is scored by the fit without its family
    left_out = leave_one_family_out(design, clean, ["confidence", "atc"])
    assert found["fitted: confidence + atc"]["a_2.0"] == pytest.approx(left_out["a_2.0"])


def test_the_headline_gives_coverage_on_held_out_families_apart_from_every_cell():
    from shiftwatch.estimation.harm import NULL_CELL, headline, summary

    def judged(group: str, loss: float, coverage: dict[str, float], error: float = 0.0) -> dict:
        draws = {n: {"page_rate": 0.5, "coverage": c} for n, c in coverage.items()}
        return {"group": group, "loss_points": loss, "population_error_points": error, "draws": draws}

    details = {
        NULL_CELL: judged("null", 0.0, {"100": 0.97, "500": 0.5, "1000": 0.99}),
        "crop_0.3": judged("design", 9.0, {"100": 0.95, "500": 0.85, "1000": 0.78}, 2.5),
        "pixelate_7": judged("held_out", 22.7, {"100": 0.98, "500": 0.2, "1000": 0.93}, -0.9),
        "salt_pepper_0.1": judged("held_out", 32.5, {"100": 0.96, "500": 0.1, "1000": 0.99}, 4.4),
    }
    summarised = summary(details, 5, [100, 500, 1000], 500)
    # n = 100 and 1,000 only (the issue's sizes): 500's low shares do not count
    assert summarised["coverage_min"] == 0.78
    assert summarised["held_out"]["coverage_min"] == 0.93
    assert summarised["held_out"]["worst_error_points"] == 4.4
    estimate = headline(summarised)["estimate"]
    assert set(estimate) == {"held_out"}  # every cell's 0.78 stays in the details
    assert estimate["held_out"] == pytest.approx(
        {"median_error_points": 2.65, "worst_error_points": 4.4, "coverage_min": 0.93}
    )


def test_a_grid_too_thin_for_its_signals_is_named_and_a_full_one_is_not(pool):
    four = ("confidence", "atc", "agreement", "soft_agreement")
    small = {  # the pipeline test's grid: two families of one cell, one of two
        "a_1": shifted_cell(pool, "a", 1.0, 1),
        "a_2": shifted_cell(pool, "a", 2.0, 2),
        "b_1": shifted_cell(pool, "b", 1.0, 3),
        "c_1": shifted_cell(pool, "c", 1.0, 4),
    }
    warning = thin_grid(small, four)
    assert warning is not None and "4 signals fitted on 4 design cells (2 left" in warning
    assert thin_grid(small, four[:2]) is None  # every fit keeps at least 2 cells for 2 signals
    wide = {f"{family}_{k}": shifted_cell(pool, family, 1.0 + k, k) for family in "abcde" for k in range(3)}
    assert thin_grid(wide, (*four, "clear_border")) is None  # 12 cells in every left-out fit

import numpy as np
import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.estimation.metrics import classification_metrics, confusion


def test_known_answers_for_the_focus_class():
    labels = np.array([7, 7, 7, 7, 1, 1, 2, 2])
    predicted = np.array([7, 7, 7, 1, 7, 1, 2, 2])
    m = classification_metrics(labels, predicted, focus_class=7)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["class_7"] == pytest.approx({"precision": 3 / 4, "recall": 3 / 4, "f1": 3 / 4})
    assert m["per_class"]["Trouser"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert m["per_class"]["Bag"]["support"] == 0


def test_confusion_rows_are_true_classes():
    matrix = confusion(np.array([0, 0, 3]), np.array([0, 3, 3]))
    assert matrix.shape == (10, 10)
    assert matrix[0, 0] == 1 and matrix[0, 3] == 1 and matrix[3, 3] == 1 and matrix.sum() == 3


def test_empty_set_is_an_error():
    with pytest.raises(ShiftwatchError, match="empty"):
        classification_metrics(np.array([], int), np.array([], int), 7)


@pytest.mark.parametrize("seed", range(5))
def test_matches_scikit_learn_on_random_predictions(seed):
    """Same numbers as scikit-learn, including classes never predicted or never present."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2, 7, 9], size=300)  # classes 3-6, 8 absent from the labels
    predicted = np.where(rng.random(300) < 0.6, labels, rng.choice([0, 1, 5, 7], size=300))
    m = classification_metrics(labels, predicted, focus_class=7)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(10), zero_division=0
    )
    for c, name in enumerate(m["per_class"]):
        assert m["per_class"][name] == (
            {"precision": precision[c], "recall": recall[c], "f1": f1[c], "support": support[c]}
        )
    np.testing.assert_array_equal(
        confusion(labels, predicted), confusion_matrix(labels, predicted, labels=np.arange(10))
    )

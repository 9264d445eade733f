import numpy as np
import pytest
import torch

from shiftwatch import ShiftwatchError
from shiftwatch.estimation.mitigate import (
    adapt_batchnorm,
    augment_images,
    correct_label_shift,
    coverage_curve,
    oversample_rows,
    selective_prediction,
)
from shiftwatch.model.network import build_resnet18, predict_proba

CPU = torch.device("cpu")


def test_label_shift_correction_moves_borderline_predictions_away_from_a_rare_class():
    probabilities = np.array([[0.45, 0.55], [0.9, 0.1], [0.05, 0.95]])
    source = np.array([0.5, 0.5])
    np.testing.assert_array_equal(correct_label_shift(probabilities, source, source), [1, 0, 1])
    # Class 1 became rare (10 %): only very confident class-1 predictions survive
    # (0.95 * 0.1 > 0.05 * 0.9, but 0.55 * 0.1 < 0.45 * 0.9).
    np.testing.assert_array_equal(correct_label_shift(probabilities, source, np.array([0.9, 0.1])), [0, 0, 1])


def test_adabn_uses_deployment_statistics_and_leaves_the_model_alone():
    model = build_resnet18(seed=0).eval()
    before = model.bn1.running_mean.clone()
    rng = np.random.default_rng(0)
    bright = np.clip(rng.random((64, 28, 28)) * 0.3 + 0.6, 0, 1).astype(np.float32)
    adapted = adapt_batchnorm(model, bright, batch_size=16, device=CPU, precision="fp32")
    assert torch.equal(model.bn1.running_mean, before)  # original untouched
    assert not adapted.training
    with torch.no_grad():
        first_conv = adapted.conv1(torch.from_numpy(bright).unsqueeze(1))
    # The new running mean is the average of the conv outputs over the deployment images.
    torch.testing.assert_close(adapted.bn1.running_mean, first_conv.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert torch.equal(adapted.conv1.weight, model.conv1.weight)
    assert predict_proba(adapted, bright, 32, CPU, progress=False).shape == (64, 10)
    # At the inference precision (bf16 where native) the statistics agree to bf16's ~3 digits.
    low = adapt_batchnorm(model, bright, batch_size=16, device=CPU, precision="auto")
    assert low.bn1.running_mean.dtype == torch.float32
    torch.testing.assert_close(low.bn1.running_mean, adapted.bn1.running_mean, atol=2e-2, rtol=2e-2)
    with pytest.raises(ShiftwatchError, match="at least one"):
        adapt_batchnorm(model, bright[:0], 16, CPU)


def test_augmentation_is_seeded_in_range_and_mixes_severities():
    rng = np.random.default_rng(1)
    images = rng.random((200, 28, 28)).astype(np.float32)
    augmented = augment_images(images, [28, 7], (0.0, 0.2), seed=3)
    assert augmented.shape == images.shape and augmented.min() >= 0 and augmented.max() <= 1
    np.testing.assert_array_equal(augmented, augment_images(images, [28, 7], (0.0, 0.2), seed=3))
    blurred = augmented.std(axis=(1, 2)) < images.std(axis=(1, 2)) / 2
    assert 0.3 < blurred.mean() < 0.7  # about half got the 7-px blur


def test_oversampling_repeats_only_the_chosen_class():
    labels = np.array([0, 7, 1, 7])
    rows = oversample_rows(labels, 7, factor=3, seed=0)
    assert np.bincount(labels[rows]).tolist() == [1, 1, 0, 0, 0, 0, 0, 6]
    assert sorted(oversample_rows(labels, 7, 1, 0)) == [0, 1, 2, 3]


def test_selective_prediction_and_coverage_curve():
    probabilities = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.99, 0.01]])
    labels = np.array([0, 1, 1, 0])  # the 0.6 one is wrong
    result = selective_prediction(probabilities, labels, threshold=0.8)
    assert result == {"flagged_share": 0.5, "accuracy_kept": 1.0, "accuracy_all": 0.75}
    assert selective_prediction(probabilities, labels, 1.0)["accuracy_kept"] is None
    curve = coverage_curve(probabilities, labels, points=5)
    assert curve[0] == {"coverage": 1.0, "accuracy": 0.75}
    assert curve[-1]["accuracy"] == 1.0

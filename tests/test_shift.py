import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from shiftwatch import ShiftwatchError
from shiftwatch.core.io import ImageSet
from shiftwatch.data.shift import degrade_images, label_shift_rows, make_deployment_sets


def test_brightness_adds_and_clips_without_resize():
    images = np.array([[[0.0, 0.5, 0.95]]]).repeat(28, 1).repeat(10, 2)[:, :28, :28].astype(np.float32)
    shifted = degrade_images(images, downsample=28, brightness=0.1)
    np.testing.assert_allclose(shifted, np.clip(images + 0.1, 0, 1), atol=1e-6)
    darker = degrade_images(images, downsample=28, brightness=-0.2)
    assert darker.min() == 0.0 and np.isclose(darker.max(), 0.75)


def test_constant_image_survives_the_resize():
    images = np.full((3, 28, 28), 0.4, dtype=np.float32)
    np.testing.assert_allclose(degrade_images(images, 7, 0.0), images, atol=1e-6)


def test_downsampling_matches_torchvision_resize_and_blurs(rng):
    images = rng.random((4, 28, 28)).astype(np.float32)
    ours = degrade_images(images, downsample=7, brightness=0.0)
    tensor = torch.from_numpy(images).unsqueeze(1)
    small = v2.Resize((7, 7), antialias=True)(tensor)
    expected = v2.Resize((28, 28), antialias=True)(small).squeeze(1).clamp(0, 1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert ours.std() < images.std() / 2  # blur removes most pixel-level variation
    assert images.dtype == np.float32 and not np.shares_memory(ours, images)


def test_label_shift_keeps_the_requested_share_seeded():
    labels = np.repeat(np.arange(10), 100)
    rows = label_shift_rows(labels, label_class=7, keep=0.1, seed=1)
    kept = labels[rows]
    assert (kept == 7).sum() == 10
    assert all((kept == c).sum() == 100 for c in range(10) if c != 7)
    assert np.array_equal(rows, np.sort(rows))
    assert np.array_equal(rows, label_shift_rows(labels, 7, 0.1, seed=1))
    assert not np.array_equal(rows, label_shift_rows(labels, 7, 0.1, seed=2))


def _domain_b(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return ImageSet(rng.random((n, 28, 28)).astype(np.float32), np.arange(n) % 10, np.arange(1000, 1000 + n))


def test_four_deployment_sets_tell_the_shifts_apart():
    domain_b = _domain_b()
    sets = make_deployment_sets(domain_b, downsample=7, brightness=0.1, label_class=7, label_keep=0.5, seed=42)
    assert sets["b_raw"] is domain_b
    np.testing.assert_array_equal(sets["b_covariate"].labels, domain_b.labels)
    assert not np.allclose(sets["b_covariate"].images, domain_b.images)
    np.testing.assert_array_equal(sets["b_label"].source_index, sets["b_shift"].source_index)
    np.testing.assert_array_equal(
        sets["b_label"].images,
        domain_b.subset(np.searchsorted(domain_b.source_index, sets["b_label"].source_index)).images,
    )
    assert (sets["b_label"].labels == 7).sum() == 10


def test_empty_result_is_a_clear_error():
    domain_b = ImageSet(np.zeros((3, 28, 28), np.float32), np.array([7, 7, 7]), np.arange(3))
    with pytest.raises(ShiftwatchError, match="b_label is empty after the label shift"):
        make_deployment_sets(domain_b, 7, 0.1, label_class=7, label_keep=0.0, seed=0)

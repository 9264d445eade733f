"""The corruption families of the harm table: range, determinism, and the property each claims."""

import numpy as np
import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.data.corruptions import FAMILIES, check_severity, corrupt

SEVERITY = {
    "contrast": 0.5,
    "gamma": 2,
    "noise": 0.1,
    "rotate": 20,
    "translate": 2,
    "zoom": 0.2,
    "crop": 0.2,
    "shear": 0.2,
    "blur": 1,
    "occlusion": 10,
    "jpeg": 10,
    "pixelate": 10,
    "motion_blur": 5,
    "salt_pepper": 0.05,
    "stretch": 0.2,
    "elastic": 2,
    "vignette": 0.5,
    "contrast_mean": 0.9,
    "png": 6,
}


@pytest.fixture
def images():
    """Bright squares of varied size and place on an exactly black background."""
    rng = np.random.default_rng(0)
    out = np.zeros((40, 28, 28), np.float32)
    for image in out:
        top, left = rng.integers(4, 12, 2)
        size = rng.integers(6, 12)
        image[top : top + size, left : left + size] = rng.uniform(0.4, 1.0)
    return out


def test_every_family_of_the_table_has_a_severity_for_these_tests():
    assert set(SEVERITY) == set(FAMILIES), "give each family a severity in SEVERITY (docs/extending.md)"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_keeps_shape_range_and_is_reproducible(images, family):
    shifted = corrupt(images, family, SEVERITY[family], seed=3)
    assert shifted.shape == images.shape and shifted.dtype == np.float32
    assert shifted.min() >= 0 and shifted.max() <= 1
    assert not np.array_equal(shifted, images)
    np.testing.assert_array_equal(shifted, corrupt(images, family, SEVERITY[family], seed=3))


@pytest.mark.parametrize("family", ["contrast", "gamma"])
def test_photometric_families_keep_black_pixels_black(images, family):
    shifted = corrupt(images, family, SEVERITY[family], seed=0)
    np.testing.assert_array_equal(shifted[images == 0], 0)
    assert np.all(shifted[images > 0] < images[images > 0])  # both darken the object here


@pytest.mark.parametrize("family", ["noise", "rotate", "translate", "zoom", "crop", "shear", "occlusion"])
def test_random_families_perturb_each_image_differently_and_follow_the_seed(images, family):
    same = np.repeat(images[:1], 10, axis=0)
    shifted = corrupt(same, family, SEVERITY[family], seed=1)
    assert len({s.tobytes() for s in shifted}) > 5  # not one perturbation for the whole batch
    assert not np.array_equal(shifted, corrupt(same, family, SEVERITY[family], seed=2))


def test_translate_moves_whole_pixels_and_keeps_the_object(images):
    shifted = corrupt(images, "translate", 2, seed=0)
    np.testing.assert_allclose(shifted.sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=1e-5)


def test_zoom_scales_each_image_about_its_centre_both_ways():
    square = np.zeros((1, 28, 28), np.float32)
    square[0, 10:18, 10:18] = 1.0  # 8 px wide, centred
    zoomed = corrupt(np.repeat(square, 200, axis=0), "zoom", 0.3, seed=0)
    inked = zoomed > 0.5
    widths = inked.any(axis=1).sum(axis=1)
    assert widths.min() <= 6 and widths.max() >= 10  # shrunk (up to 0.7x) and grown (up to 1.3x)
    _, rows, cols = np.nonzero(inked)
    assert abs(rows.mean() - 13.5) < 0.2 and abs(cols.mean() - 13.5) < 0.2  # not moved


def test_crop_only_enlarges():
    square = np.zeros((1, 28, 28), np.float32)
    square[0, 10:18, 10:18] = 1.0
    widths = (corrupt(np.repeat(square, 200, axis=0), "crop", 0.3, seed=0) > 0.5).any(axis=1).sum(axis=1)
    assert widths.min() >= 8 and widths.max() >= 10


def test_shear_tilts_a_vertical_bar_about_the_centre_both_ways():
    bar = np.zeros((1, 28, 28), np.float32)
    bar[0, 4:24, 12:16] = 1.0  # 20 px tall, 4 px wide, centred
    sheared = corrupt(np.repeat(bar, 200, axis=0), "shear", 0.3, seed=0)
    inked = sheared > 0.5

    def centre_column(rows):  # mean column of the ink in these rows, per image
        ink = inked[:, rows].sum(axis=1)
        return (ink * np.arange(28)).sum(axis=1) / np.maximum(ink.sum(axis=1), 1)

    tilt = centre_column(slice(4, 8)) - centre_column(slice(20, 24))  # top row's shift minus bottom's
    assert tilt.min() < -3 and tilt.max() > 3  # leaning both ways, by up to 0.3 x 16 px
    assert np.abs(centre_column(slice(13, 15)) - 13.5).max() < 0.5  # the centre rows stay put
    np.testing.assert_allclose(sheared.sum(axis=(1, 2)), bar.sum(), rtol=0.02)  # a shear keeps the area


def test_blur_softens_edges_and_keeps_the_ink():
    square = np.zeros((1, 28, 28), np.float32)
    square[0, 10:18, 10:18] = 1.0
    blurred = corrupt(square, "blur", 1.5, seed=0)
    np.testing.assert_allclose(blurred.sum(), square.sum(), rtol=1e-4)  # nothing leaves the frame
    assert blurred.max() < 1 and 0 < blurred[0, 9, 13] < 0.5  # the edge spreads outwards
    np.testing.assert_array_equal(blurred, corrupt(square, "blur", 1.5, seed=9))  # no randomness
    wide = np.ones((1, 28, 28), np.float32)  # the scene goes on beyond the frame: borders stay lit
    np.testing.assert_allclose(corrupt(wide, "blur", 1.5, seed=0), 1.0, rtol=1e-6)


def test_occlusion_blacks_out_one_square_per_image_inside_the_frame():
    white = np.ones((300, 28, 28), np.float32)
    occluded = corrupt(white, "occlusion", 10, seed=0)
    assert np.all((occluded == 0).sum(axis=(1, 2)) == 100)  # always whole: never cut by the frame
    rows = np.argmax((occluded == 0).any(axis=2), axis=1)
    assert rows.min() == 0 and rows.max() == 18  # every place the square fits is used


def test_jpeg_at_high_quality_is_close_and_at_low_quality_is_not(images):
    mild = np.abs(corrupt(images, "jpeg", 95, seed=0) - images).mean()
    harsh = np.abs(corrupt(images, "jpeg", 5, seed=0) - images).mean()
    assert mild < 0.01 < harsh


@pytest.mark.parametrize(
    "family,severity",
    [
        ("contrast", 1.5),
        ("gamma", 0),
        ("noise", -0.1),
        ("translate", 20),
        ("zoom", 0.6),
        ("shear", 1.5),
        ("blur", 6),
        ("occlusion", 28),
        ("jpeg", 100),
        ("smear", 1),
    ],
)
def test_a_meaningless_severity_names_the_setting(family, severity):
    with pytest.raises(ShiftwatchError, match=f"{family}"):
        check_severity(family, severity)


def test_params_schema_knows_every_family_and_params_yaml_runs_the_harm_tables():
    import yaml
    from conftest import REPO

    from shiftwatch.core.params import parse_params

    # power's families are listed in the table's order; the estimator's held-out and
    # everyday-pipeline families are not power's in params.yaml.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    power = list(parse_params(raw).power.corruptions)
    assert power == [family for family in FAMILIES if family in power]
    unseen_by_power = {"pixelate", "motion_blur", "salt_pepper", "stretch", "elastic", "vignette"}
    unseen_by_power |= {"contrast_mean", "png"}  # the everyday operations
    assert unseen_by_power <= set(FAMILIES) - set(power)
    raw["power"]["corruptions"] = {family: [0.1] for family in FAMILIES}
    assert list(parse_params(raw).power.corruptions) == list(FAMILIES)


def test_stretch_makes_an_object_taller_about_the_centre_and_no_wider():
    square = np.zeros((1, 28, 28), np.float32)
    square[:, 10:18, 10:18] = 1.0
    stretched = corrupt(square, "stretch", 0.5, seed=0)[0]
    rows, columns = np.flatnonzero(stretched.max(1) > 0.5), np.flatnonzero(stretched.max(0) > 0.5)
    assert len(rows) == 12 and len(columns) == 8  # 8 rows x 1.5, the same 8 columns
    assert rows.min() + rows.max() == 27  # about the centre
    np.testing.assert_array_equal(corrupt(square, "stretch", 0.5, seed=9)[0], stretched)  # no randomness


def test_elastic_moves_pixels_smoothly_by_the_asked_root_mean_square_length():
    # On a linear ramp bilinear sampling is exact, so an interior pixel's change is its
    # displacement along the ramp: the ramp reads one axis of the field back.
    axis = np.arange(64, dtype=np.float32) / 63
    ramp = np.tile(axis, (64, 1))[None]
    inner = (slice(12, -12), slice(12, -12))  # far from the frame, where black would be sampled
    for rms in (1.0, 3.0):
        dx = (corrupt(ramp, "elastic", rms, seed=0)[0] - ramp[0])[inner] * 63
        # One axis of an isotropic field carries half the squared length.
        assert np.sqrt(np.mean(dx**2)) == pytest.approx(rms / np.sqrt(2), rel=0.5)
        # Smooth: neighbours move alike (white noise would differ by about rms per neighbour).
        assert np.sqrt(np.mean(np.diff(dx, axis=1) ** 2)) < rms / 4
    np.testing.assert_array_equal(corrupt(ramp, "elastic", 2.0, seed=3), corrupt(ramp, "elastic", 2.0, seed=3))
    assert not np.array_equal(corrupt(ramp, "elastic", 2.0, seed=4), corrupt(ramp, "elastic", 2.0, seed=3))


def test_vignette_darkens_the_corners_by_the_share_and_keeps_the_centre():
    white = np.ones((1, 28, 28), np.float32)
    dark = corrupt(white, "vignette", 0.6, seed=0)[0]
    assert dark[0, 0] == pytest.approx(0.4) and dark[27, 27] == pytest.approx(0.4)
    assert dark[13, 13] > 0.99 and dark[0, 13] == pytest.approx(0.7, abs=0.02)
    np.testing.assert_array_equal(corrupt(np.zeros_like(white), "vignette", 0.6, seed=0), 0)  # black stays black

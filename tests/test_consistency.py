"""Per-image consistency measures and their aggregation (cte_kit.scoring.consistency)."""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import trim_mean
from skimage.measure import label
from skimage.metrics import adapted_rand_error

from cte_kit.scoring.consistency import (CONSISTENCY_KINDS, CTESummary, boundary_band, foreground_union, hard_consistency, image_consistency, instance_consistency, nan_statistic, pair_consistency, soft_consistency, summarize)
from cte_kit.types import Prediction

# A 4x4 pair, worked by hand. Foreground is strictly above 0.5, so the 0.5 pixels are not.
#   U = {(0,0), (0,1), (1,0), (1,2), (3,2), (3,3)}        6 pixels
#   V = {(0,1), (0,2), (1,0), (3,1), (3,3)}               5 pixels
#   U & V = {(0,1), (1,0), (3,3)}, |U | V| = 8             hard = 3 / 8
#   EI on U & V: sqrt(.9 * .9) + sqrt(.64 * 1) + sqrt(1 * 1) = 2.7    soft = 2.7 / 8
U = np.array(
    [
        [0.9, 0.9, 0.2, 0.0],
        [0.64, 0.4, 0.7, 0.0],
        [0.0, 0.0, 0.0, 0.5],
        [0.1, 0.3, 0.55, 1.0],
    ],
    dtype=np.float32,
)
V = np.array(
    [
        [0.4, 0.9, 0.6, 0.0],
        [1.0, 0.1, 0.2, 0.0],
        [0.0, 0.0, 0.0, 0.5],
        [0.0, 0.8, 0.3, 1.0],
    ],
    dtype=np.float32,
)


def blob_labels(shape, rng, sigma=3.0, level=0.6):
    """Random touching blobs: connected components of smoothed noise."""
    smooth = ndi.gaussian_filter(rng.random(shape), sigma)
    return label(smooth > np.quantile(smooth, level))


def perturb_labels(labels, rng):
    """Shift, merge some objects, and drop some pixels."""
    shifted = np.roll(labels, (1, 2), axis=(0, 1))
    merge = rng.permutation(labels.max() + 1)[: labels.max() // 4]
    shifted[np.isin(shifted, merge)] = merge[0] if merge.size else 0
    shifted[rng.random(labels.shape) < 0.02] = 0
    return shifted


def skimage_instance_consistency(labels_u, labels_v, width):
    """The official recipe with scikit-image, written out independently of the kit."""
    band = np.zeros(labels_u.shape, bool)
    if width:
        cross = ndi.generate_binary_structure(2, 1)
        dilated, eroded = labels_u, labels_u
        for _ in range(width):
            dilated = ndi.grey_dilation(dilated, footprint=cross)
            eroded = ndi.grey_erosion(eroded, footprint=cross)
        band = dilated != eroded
    mask = ((labels_u > 0) | (labels_v > 0)) & ~band
    u, v = labels_u[mask].astype(np.int64), labels_v[mask].astype(np.int64)
    fresh = max(u.max(initial=0), v.max(initial=0)) + 1
    u = np.where(u == 0, fresh + np.arange(u.size), u)
    v = np.where(v == 0, fresh + u.size + np.arange(v.size), v)
    return 1.0 - adapted_rand_error(u, v, ignore_labels=None)[0]


# -- semantic ---------------------------------------------------------------------------------
def test_hard_and_soft_on_hand_worked_example():
    assert hard_consistency(U, V) == pytest.approx(3 / 8, abs=1e-12)
    assert soft_consistency(U, V) == pytest.approx(2.7 / 8, abs=1e-7)


def test_foreground_union_is_strictly_above_threshold():
    union = foreground_union(U, V)
    assert union.dtype == bool and union.sum() == 8
    assert not union[2, 3]  # 0.5 in both maps is background
    assert foreground_union(U, V, threshold=0.0).sum() == 11  # all but 5 shared zeros


def test_semantic_consistency_is_symmetric_and_bounded():
    rng = np.random.default_rng(0)
    u, v = rng.random((32, 32)), rng.random((32, 32))
    assert hard_consistency(u, v) == pytest.approx(hard_consistency(v, u))
    assert soft_consistency(u, v) == pytest.approx(soft_consistency(v, u))
    assert 0.0 <= soft_consistency(u, v) <= hard_consistency(u, v) <= 1.0


def test_semantic_consistency_in_row_bands_is_the_whole_images(monkeypatch):
    from cte_kit.scoring import consistency

    rng = np.random.default_rng(5)
    u = ndi.gaussian_filter(rng.random((300, 70)), 2).astype(np.float32)
    v = np.clip(u + rng.normal(0, 0.02, u.shape), 0, 1).astype(np.float32)
    u, v = (u - u.min()) / (u.max() - u.min()), (v - v.min()) / (v.max() - v.min())
    monkeypatch.setattr(consistency, "BAND_ROWS", 64)  # five bands, the last one short
    # independent whole-image references: IoU of the masks, and eq. 4 summed at once
    fg_u, fg_v = u > 0.5, v > 0.5
    union = np.count_nonzero(fg_u | fg_v)
    assert hard_consistency(u, v) == np.count_nonzero(fg_u & fg_v) / union
    both = fg_u & fg_v
    assert soft_consistency(u, v) == pytest.approx(np.sqrt(u[both].astype(float) * v[both]).sum() / union, rel=1e-12)
    assert np.isnan(hard_consistency(u * 0, v * 0)) and np.isnan(soft_consistency(u * 0, v * 0))


def test_soft_equals_hard_for_bool_masks_and_identical_masks_score_one():
    masks = U > 0.5, V > 0.5
    assert soft_consistency(*masks) == pytest.approx(hard_consistency(*masks))
    assert hard_consistency(masks[0], masks[0]) == 1.0
    assert soft_consistency(np.ones((4, 4)), np.ones((4, 4))) == 1.0


def test_threshold_changes_the_foreground():
    # Above 0.35: U gains (1,1) and the 0.5 pixel (8), V gains (0,0) and the 0.5 pixel (7);
    # they share (0,0), (0,1), (1,0), (2,3), (3,3): 5 of a union of 10.
    assert hard_consistency(U, V, threshold=0.35) == pytest.approx(5 / 10)


@pytest.mark.parametrize("measure", [hard_consistency, soft_consistency])
def test_empty_union_gives_nan(measure):
    empty = np.zeros((8, 8), np.float32)
    assert math.isnan(measure(empty, empty))
    assert math.isnan(measure(np.full((8, 8), 0.5), empty))


@pytest.mark.parametrize(
    "u, v, error, match",
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), ValueError, "shape"),
        (np.full((4, 4), np.nan), np.zeros((4, 4)), ValueError, "NaN"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), ValueError, "2D"),
        (np.zeros((4, 4), np.int32), np.zeros((4, 4)), TypeError, "labels > 0"),
        (np.full((4, 4), 1.5), np.zeros((4, 4)), ValueError, r"\[0, 1\]"),
    ],
)
def test_semantic_input_errors(u, v, error, match):
    with pytest.raises(error, match=match):
        hard_consistency(u, v)


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        soft_consistency(U, V, threshold=1.0)


# -- boundary band ----------------------------------------------------------------------------
def test_boundary_band_of_a_single_pixel_is_a_cross():
    labels = np.zeros((5, 5), np.int32)
    labels[2, 2] = 3
    band = boundary_band(labels)
    expected = np.zeros((5, 5), bool)
    expected[2, 1:4] = expected[1:4, 2] = True
    np.testing.assert_array_equal(band, expected)
    assert boundary_band(labels, width=2).sum() == 13  # the L1 ball of radius 2
    assert not boundary_band(labels, width=0).any()


@pytest.mark.parametrize("width", [1, 2, 3])
def test_boundary_band_equals_iterated_grey_dilation_and_erosion(width):
    labels = blob_labels((40, 50), np.random.default_rng(width))
    cross = ndi.generate_binary_structure(2, 1)
    dilated, eroded = labels, labels
    for _ in range(width):
        dilated = ndi.grey_dilation(dilated, footprint=cross)
        eroded = ndi.grey_erosion(eroded, footprint=cross)
    np.testing.assert_array_equal(boundary_band(labels, width), dilated != eroded)


def test_boundary_band_rejects_bad_width():
    with pytest.raises(ValueError, match="width"):
        boundary_band(np.zeros((4, 4), int), width=-1)


# -- instance ---------------------------------------------------------------------------------
def test_instance_consistency_hand_worked_example():
    # boundary 0, M = all 6 pixels (L_v covers all). Tables worked by hand:
    #   n_ij: (1,1)=2, (1,2)=1, (2,2)=2, (bg,3)=1 -> sum n(n-1) = 4
    #   a = 3, 2 (+ singleton) -> 8;  b = 2, 3, 1 -> 8;  F = 4 / (4 + 4)
    labels_u = np.array([[1, 1, 1, 2, 2, 0]])
    labels_v = np.array([[1, 1, 2, 2, 2, 3]])
    assert instance_consistency(labels_u, labels_v, boundary=0) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("width", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint32, np.int64])
def test_instance_consistency_matches_skimage_reference(width, dtype):
    rng = np.random.default_rng(width)
    labels_u = blob_labels((48, 64), rng)
    labels_v = perturb_labels(labels_u, rng)
    expected = skimage_instance_consistency(labels_u, labels_v, width)
    value = instance_consistency(labels_u.astype(dtype), labels_v.astype(dtype), boundary=width)
    assert value == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= value < 1.0


def test_instance_consistency_large_ids_do_not_wrap():
    labels_u = blob_labels((48, 64), np.random.default_rng(5))
    labels_v = perturb_labels(labels_u, np.random.default_rng(6))
    expected = skimage_instance_consistency(labels_u, labels_v, 1)
    # Ids above 65535 (a uint16 cast would wrap 70000 onto 4464), and some that are huge.
    large_u = np.where(labels_u > 0, labels_u.astype(np.uint64) * 70001 + 4464, 0)
    large_v = np.where(labels_v > 0, labels_v.astype(np.uint64) + np.uint64(2**62), 0)
    assert instance_consistency(large_u, large_v) == pytest.approx(expected, abs=1e-12)
    # Objects 4464 and 70000 (16 pixels each) merged in L_v. Told apart: a = 2 * 16 * 15,
    # b = 32 * 31, joint = a, F = 480 / (240 + 496); a uint16 cast would make them one (F = 1).
    two = np.zeros((6, 12), np.uint32)
    two[1:5, 1:5], two[1:5, 7:11] = 4464, 70000
    merged = (two > 0).astype(np.uint32)
    assert instance_consistency(two, merged, boundary=0) == pytest.approx(480 / 736, abs=1e-15)


def test_instance_consistency_invariant_to_relabelling():
    labels_u = blob_labels((40, 40), np.random.default_rng(7))
    permutation = np.concatenate(([0], np.random.default_rng(8).permutation(labels_u.max()) + 1))
    assert instance_consistency(labels_u, permutation[labels_u]) == 1.0
    assert instance_consistency(labels_u.astype(float), labels_u) == 1.0  # integral floats accepted


def test_instance_consistency_nan_and_degenerate_cases():
    empty = np.zeros((6, 6), np.int32)
    dot = empty.copy()
    dot[3, 3] = 1
    assert math.isnan(instance_consistency(empty, dot))  # L_u empty
    assert math.isnan(instance_consistency(dot, empty, boundary=1))  # band removes all of M
    # One pixel in M, a singleton on both sides: identical partitions, zero denominator.
    assert instance_consistency(dot, empty, boundary=0) == 1.0


@pytest.mark.parametrize(
    "labels_v, error, match",
    [
        (np.full((6, 6), 1.5), ValueError, "non-integer"),
        (np.full((6, 6), -1), ValueError, "negative"),
        (np.zeros((2, 6, 6), int), ValueError, "2D"),
        (np.zeros((6, 7), int), ValueError, "shape"),
        (np.zeros((6, 6), complex), TypeError, "integer"),
    ],
)
def test_instance_input_errors(labels_v, error, match):
    with pytest.raises(error, match=match):
        instance_consistency(np.ones((6, 6), int), labels_v)


def test_instance_rejects_bad_boundary():
    with pytest.raises(ValueError, match="boundary"):
        instance_consistency(np.ones((6, 6), int), np.ones((6, 6), int), boundary=1.5)


# -- predictions ------------------------------------------------------------------------------
def test_pair_consistency_dispatches_and_explains_missing_fields():
    labels_u = (U > 0.5).astype(np.int32)
    labels_v = (V > 0.5).astype(np.int32)
    both_u, both_v = Prediction(U, labels_u), Prediction(V, labels_v)
    assert CONSISTENCY_KINDS == ("hard", "soft", "instance")
    assert pair_consistency(both_u, both_v, "hard") == pytest.approx(3 / 8)
    assert pair_consistency(both_u, both_v, "soft") == pytest.approx(2.7 / 8, abs=1e-7)
    assert pair_consistency(both_u, both_v, "instance", boundary=0) == instance_consistency(labels_u, labels_v, 0)
    labels_only = Prediction(labels=labels_u), Prediction(labels=labels_v)
    assert pair_consistency(*labels_only, "hard") == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="only instance labels"):
        pair_consistency(*labels_only, "soft")
    with pytest.raises(ValueError, match="only probability maps"):
        pair_consistency(Prediction(U), Prediction(V), "instance")
    with pytest.raises(ValueError, match="unknown consistency"):
        pair_consistency(both_u, both_v, "fuzzy")


def test_image_consistency_is_the_nan_mean_over_draws():
    clean = Prediction(U)
    assert image_consistency(clean, [Prediction(V), Prediction(U)], "hard") == pytest.approx((3 / 8 + 1.0) / 2)
    # A one-pixel object lies inside its own boundary band: an empty draw leaves M empty (NaN),
    # a draw with another 2x2 object leaves M = that object (all singletons in L_u: F = 0).
    dot, block, empty = np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32), np.zeros((8, 8), np.int32)
    dot[4, 4] = 1
    block[:2, :2] = 1
    draws = [Prediction(labels=empty), Prediction(labels=block)]
    assert image_consistency(Prediction(labels=dot), draws, "instance") == 0.0
    assert math.isnan(image_consistency(Prediction(labels=dot), draws[:1] * 2, "instance"))
    with pytest.raises(ValueError, match="at least one"):
        image_consistency(clean, [], "hard")


# -- aggregation ------------------------------------------------------------------------------
def test_summarize_statistics_and_empty_count():
    summary = summarize([0.2, np.nan, 0.9, 0.5, 0.4])
    assert isinstance(summary, CTESummary)
    # the kit's default is the mean of the finite scores; the paper's median is kept beside it
    assert summary.score == summary.mean == pytest.approx(0.5)
    assert summary.median == pytest.approx(0.45)
    assert summary.std == pytest.approx(np.std([0.2, 0.9, 0.5, 0.4]))
    assert (summary.n_images, summary.n_empty, summary.statistic) == (5, 1, "mean")
    assert summarize([0.2, np.nan, 0.9, 0.5, 0.4], "median").score == pytest.approx(0.45)


def test_trimmed_statistic_matches_scipy():
    values = np.random.default_rng(1).random(23)
    for trim in (0.0, 0.1, 0.2, 0.45):
        assert summarize(values, "trimmed", trim).score == pytest.approx(trim_mean(values, trim))
    with_nan = np.concatenate([values, [np.nan] * 4])
    assert summarize(with_nan, "trimmed", 0.2).score == pytest.approx(trim_mean(values, 0.2))


def test_summarize_all_nan_and_errors():
    summary = summarize([np.nan, np.nan, np.nan])
    assert math.isnan(summary.score) and math.isnan(summary.mean) and math.isnan(summary.std)
    assert summary.n_empty == summary.n_images == 3
    with pytest.raises(ValueError, match="statistic"):
        summarize([0.5], "mode")
    with pytest.raises(ValueError, match="1D"):
        summarize(np.zeros((2, 2)))


def test_nan_statistic_is_vectorised_row_wise():
    values = np.random.default_rng(2).random((6, 9))
    values[values < 0.2] = np.nan
    values[3] = np.nan
    with pytest.warns(RuntimeWarning):  # numpy warns about the all-NaN row; the kit does not
        expected = np.nanmedian(values, axis=1)
    np.testing.assert_allclose(nan_statistic(values, "median"), expected, equal_nan=True)
    with pytest.warns(RuntimeWarning):
        expected = np.nanmean(values, axis=1)
    np.testing.assert_allclose(nan_statistic(values, "mean"), expected, equal_nan=True)

"""Per-object measurements: against scikit-image and IoUs computed mask by mask."""

import numpy as np
import pytest
from skimage import measure

from cte_kit.scoring.objects import best_iou, mean_best_iou, object_properties


def _brute_best_iou(labels, other):
    """Each object's best IoU, one boolean mask per pair of objects."""
    found = []
    for label in np.unique(labels[labels > 0]):
        mask = labels == label
        ious = [np.sum(mask & (other == o)) / np.sum(mask | (other == o)) for o in np.unique(other[other > 0])]
        found.append(max(ious, default=0.0))
    return np.array(found)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_iou_is_the_largest_iou_of_each_object(seed):
    rng = np.random.default_rng(seed)
    labels = measure.label(rng.random((40, 50)) > 0.6)
    other = measure.label(rng.random((40, 50)) > 0.55)
    ids, values = best_iou(labels, other)
    np.testing.assert_array_equal(ids, np.unique(labels[labels > 0]))
    np.testing.assert_allclose(values, _brute_best_iou(labels, other))
    assert values.min() >= 0 and values.max() <= 1


def test_best_iou_keeps_large_ids_and_scores_missing_objects_zero():
    labels = np.zeros((12, 12), np.uint32)
    labels[1:5, 1:5], labels[7:11, 7:11] = 70000, 3
    other = np.zeros_like(labels)
    other[1:5, 1:3] = 900000  # half of object 70000
    ids, values = best_iou(labels, other)
    np.testing.assert_array_equal(ids, [3, 70000])
    np.testing.assert_allclose(values, [0.0, 0.5])
    assert best_iou(np.zeros((4, 4), int), other[:4, :4])[0].size == 0


def test_mean_best_iou_averages_over_the_others():
    labels = np.zeros((6, 6), int)
    labels[1:5, 1:5] = 1
    split = labels.copy()
    split[1:5, 3:5] = 2
    ids, values = mean_best_iou(labels, [labels, split, np.zeros_like(labels)])
    np.testing.assert_allclose(values, [(1.0 + 0.5 + 0.0) / 3])
    with pytest.raises(ValueError, match="at least one"):
        mean_best_iou(labels, [])


def test_object_properties_match_regionprops():
    rng = np.random.default_rng(3)
    labels = measure.label(rng.random((30, 40)) > 0.6) * 7
    found = object_properties(labels)
    regions = measure.regionprops(labels)
    np.testing.assert_array_equal(found.ids, [r.label for r in regions])
    np.testing.assert_array_equal(found.area, [r.area for r in regions])
    np.testing.assert_allclose(np.c_[found.centroid_y, found.centroid_x], [r.centroid for r in regions])
    assert object_properties(np.zeros((3, 3), int)).ids.size == 0

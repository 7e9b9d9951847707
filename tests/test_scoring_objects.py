"""Per-object measurements: against scikit-image and IoUs computed mask by mask."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure

from cte_kit.scoring.objects import best_iou, convex_hull_areas, mean_best_iou, object_properties
from conftest import SHARED_DATA


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


def _regionprops_hulls(labels):
    return np.array([region.area_convex for region in measure.regionprops(labels)], dtype=np.int64)


def test_convex_hull_areas_match_regionprops_on_random_shapes():
    """Blobs, lines, single pixels, objects at the border and objects in pieces (one label, several regions)."""
    rng = np.random.default_rng(3)
    for trial in range(150):
        size = int(rng.integers(4, 48))
        blobs = ndi.gaussian_filter(rng.random((size, size + int(rng.integers(0, 9)))), rng.uniform(0.5, 3))
        labels = measure.label(blobs > rng.uniform(0.45, 0.55), connectivity=int(rng.integers(1, 3)))
        if trial % 3 == 0:
            labels = np.where(labels > 0, labels % 4 + 1, 0)
        if labels.max():
            np.testing.assert_array_equal(convex_hull_areas(labels), _regionprops_hulls(labels))
    lines = np.zeros((9, 12), np.int32)
    lines[2, 1:11], lines[4:9, 3], lines[0, 0], lines[8, 11] = 1, 2, 3, 4
    lines[np.arange(5, 9), np.arange(6, 10)] = 5  # a diagonal: its hull is a thin parallelogram
    np.testing.assert_array_equal(convex_hull_areas(lines), _regionprops_hulls(lines))
    # a subset, in any order; an id that is not an object is refused
    np.testing.assert_array_equal(convex_hull_areas(lines, [5, 2]), _regionprops_hulls(lines)[[4, 1]])
    assert convex_hull_areas(np.zeros((5, 5), np.int32)).size == 0
    with pytest.raises(ValueError, match="objects"):
        convex_hull_areas(lines, [6])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}")
@pytest.mark.parametrize("dataset", ["dsb2018_fluo_256", "isbi2012_membrane", "usiigaci_cells"])
def test_convex_hull_areas_match_regionprops_on_real_objects(dataset):
    """Nuclei, membranes (one branching network) and cells of the shared data."""
    import tifffile

    files = sorted((SHARED_DATA / dataset / "labels").glob("*.tif"))
    if not files:
        pytest.skip(f"no labels in {SHARED_DATA / dataset}")
    truth = tifffile.imread(files[len(files) // 2])[:256, :256]
    labels = measure.label(truth > 0, connectivity=2) if truth.max() == 1 else truth.astype(np.int32)
    np.testing.assert_array_equal(convex_hull_areas(labels), _regionprops_hulls(labels))

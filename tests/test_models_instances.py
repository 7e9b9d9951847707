"""Instance extraction: small-object removal, fragment merging and the boundary watersheds."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import draw, measure, metrics, morphology, segmentation

from cte_kit.scoring.metrics import average_precision
from cte_kit.models.instances import (connected_components, default_instance_method, instances_from_probability,
                                      merge_small_fragments, merge_weak_borders, remove_small_objects,
                                      seeded_watershed)
from conftest import SHARED_DATA


def touching_nuclei(seed: int, n: int = 12, shape=(128, 128)):
    """Truth labels of touching discs and the outputs of a foreground+boundary network on them.

    The boundary ring lies one pixel inside each object and is blurred, as a U-Net trained on
    ``find_boundaries(mode='inner')`` predicts it: the outermost rim stays below 0.5.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    count = 0
    while count < n:
        radius = int(rng.integers(7, 11))
        centre = rng.integers(radius + 1, np.array(shape) - radius - 1)
        rr, cc = draw.disk(tuple(centre), radius, shape=shape)
        if (labels[rr, cc] > 0).mean() > 0.15:
            continue
        count += 1
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = count
    ring = np.zeros(shape, bool)
    for index in range(1, count + 1):
        inside = ndi.binary_erosion(labels == index)
        ring |= inside & ~ndi.binary_erosion(inside)
    boundary = np.clip(2.2 * ndi.gaussian_filter(ring.astype(float), 0.7) + rng.normal(0, 0.08, shape), 0, 1)
    probability = np.clip(ndi.gaussian_filter((labels > 0).astype(float), 0.8) + rng.normal(0, 0.05, shape), 0, 1)
    return labels, probability.astype(np.float32), boundary.astype(np.float32)


def unfixed_watershed(probability, boundary):
    """The kit's extraction before the fix: every connected interior is a seed."""
    mask = probability > 0.5
    return segmentation.watershed(boundary, measure.label(mask & (boundary < 0.5), connectivity=1), mask=mask)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_watershed_counts_touching_nuclei(seed):
    truth, probability, boundary = touching_nuclei(seed)
    n_true = truth.max()
    assert unfixed_watershed(probability, boundary).max() > 5 * n_true  # the over-split the fix removes
    labels = seeded_watershed(probability, boundary)
    assert abs(labels.max() - n_true) <= 0.1 * n_true
    fixed_map = average_precision(truth, labels).mean
    assert fixed_map >= average_precision(truth, connected_components(probability)).mean
    assert fixed_map > 0.75  # connected components: 0.35 to 0.69 on these images
    # the objects tile the foreground: nothing is dropped
    assert np.array_equal(labels > 0, probability > 0.5)


def test_no_fragment_below_min_size():
    truth, probability, boundary = touching_nuclei(7)
    labels = seeded_watershed(probability, boundary, min_size=30)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 30


def test_unseeded_region_kept_whole():
    probability = np.zeros((20, 20), np.float32)
    probability[5:8, 5:15] = 0.9  # a thin object whose interior the boundary map covers entirely
    boundary = np.where(probability > 0.5, 0.9, 0.0).astype(np.float32)
    labels = seeded_watershed(probability, boundary)
    assert labels.max() == 1 and np.array_equal(labels > 0, probability > 0.5)


def test_remove_small_objects_keeps_touching_objects_apart():
    labels = np.zeros((6, 10), np.int32)
    labels[1:5, 1:5] = 4
    labels[1:5, 5:9] = 9  # touches object 4
    labels[0, 9] = 2  # a one-pixel speck
    kept = remove_small_objects(labels, 2)
    assert kept.max() == 2 and kept[0, 9] == 0
    assert len(np.unique(kept[1:5, 1:5])) == 1 and len(np.unique(kept[1:5, 5:9])) == 1
    assert kept[2, 2] != kept[2, 6]
    # scikit-image's region areas agree on which pixels stay
    large = [region.label for region in measure.regionprops(labels) if region.area >= 2]
    assert np.array_equal(kept > 0, np.isin(labels, large))


def test_merge_small_fragments_into_longest_border():
    labels = np.zeros((8, 12), np.int32)
    labels[1:7, 1:5] = 1
    labels[1:7, 6:11] = 2
    labels[2:6, 5] = 3  # a 4-pixel fragment between them, 4 border pixels with each ...
    labels[6, 5] = 2  # ... and one more with object 2
    merged = merge_small_fragments(labels, 5)
    assert merged.max() == 2
    assert merged[3, 5] == merged[3, 8] != merged[3, 2]
    isolated = np.zeros((5, 5), np.int32)
    isolated[2, 2] = 1
    assert merge_small_fragments(isolated, 5).max() == 1  # nothing to merge into


def test_connected_components_min_size_and_errors():
    probability = np.zeros((10, 10), np.float32)
    probability[1:4, 1:4] = 0.9
    probability[7, 7] = 0.9
    assert connected_components(probability, min_size=2).max() == 1
    with pytest.raises(ValueError, match="2D"):
        connected_components(np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="shape"):
        seeded_watershed(probability, np.zeros((5, 5)))


def test_merge_weak_borders_keeps_only_predicted_boundaries():
    labels = np.zeros((6, 9), np.int32)
    labels[1:5, 1:4], labels[1:5, 4:7], labels[1:5, 7:9] = 1, 2, 3
    boundary = np.zeros((6, 9), np.float32)
    boundary[1:5, 3] = 0.9  # a predicted border between 1 and 2 ...
    boundary[1:5, 6:8] = 0.4  # ... and a faint ridge between 2 and 3
    merged = merge_weak_borders(labels, boundary, threshold=0.7)
    assert merged.max() == 2
    assert merged[2, 2] != merged[2, 5] and merged[2, 5] == merged[2, 8]
    # one strong pixel pair out of four is not enough: the mean decides
    boundary[2, 6] = 1.0
    assert merge_weak_borders(labels, boundary, threshold=0.7).max() == 2
    assert merge_weak_borders(labels, boundary, threshold=0.5).max() == 3


def test_watershed_does_not_split_a_nucleus_along_a_faint_ridge():
    yy, xx = np.mgrid[:30, :30]
    probability = ((yy - 15) ** 2 + (xx - 15) ** 2 <= 100).astype(np.float32)
    boundary = np.zeros_like(probability)
    boundary[:, 15] = 0.55  # a faint line across the nucleus: two interiors, no real border
    assert seeded_watershed(probability, boundary).max() == 1
    boundary[:, 15] = 0.95  # a confident border: two objects
    assert seeded_watershed(probability, boundary).max() == 2


def test_merge_weak_borders_is_transitive():
    labels = np.zeros((4, 17), np.int32)
    for index in range(4):
        labels[:, 1 + 4 * index: 5 + 4 * index] = index + 1  # four objects in a row, 1|2|3|4
    boundary = np.zeros((4, 17), np.float32)
    boundary[:, 8:10] = 0.9  # only the border between 2 and 3 is predicted
    merged = merge_weak_borders(labels, boundary, threshold=0.7)
    # 1-2 and 3-4 merge, 2-3 stays: two objects, as a union-find over the weak borders gives
    assert merged.max() == 2
    assert merged[0, 1] == merged[0, 5] != merged[0, 9] == merged[0, 13]
    boundary[:, 8:10] = 0.1  # no border predicted: a chain of weak borders joins all four
    assert merge_weak_borders(labels, boundary, threshold=0.7).max() == 1


def dense_tissue(seed: int, gaps: int = 3, grid: int = 5, shape=(128, 128)):
    """Truth labels of dense tissue with no background, and a foreground+boundary network's outputs on it.

    The cells are the Voronoi regions of a jittered grid of points (every pixel belongs to a cell,
    ~650 pixels each, as the ``ovules_mini`` crops). The boundary map is the cells' inner rims (two
    pixels between two cells, as a U-Net trained on ``find_boundaries(mode='inner')`` predicts them),
    blurred and noisy, with ``gaps`` discs of radius 3 where the network misses the boundary; the
    foreground probability is high everywhere.
    """
    rng = np.random.default_rng(seed)
    step = np.array(shape) / grid
    centres = (np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij"), -1).reshape(-1, 2) + 0.5) * step
    points = np.round(centres + rng.uniform(-0.3, 0.3, centres.shape) * step).astype(int)
    markers = np.zeros(shape, np.int32)
    markers[points[:, 0], points[:, 1]] = np.arange(1, len(points) + 1)
    _, (rows, cols) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    labels = markers[rows, cols]
    rims = segmentation.find_boundaries(labels, mode="inner")
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for y, x in rng.choice(np.argwhere(rims), gaps, replace=False):
        rims[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = False
    boundary = np.clip(1.6 * ndi.gaussian_filter(rims.astype(float), 0.8) + rng.normal(0, 0.05, shape), 0, 1)
    probability = np.clip(1 - np.abs(rng.normal(0, 0.05, shape)), 0, 1)
    return labels, probability.astype(np.float32), boundary.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_dt_watershed_counts_dense_cells(seed):
    truth, probability, boundary = dense_tissue(seed)
    n_true = len(np.unique(truth))  # no background: every value is a cell
    assert measure.label(probability > 0.5).max() == 1  # dense tissue: the foreground is one region
    assert connected_components(probability).max() == 1
    labels = instances_from_probability(probability, boundary, "dt_watershed")
    assert abs(labels.max() - n_true) <= 0.1 * n_true
    assert (labels > 0).all()  # every pixel belongs to a cell
    assert average_precision(truth, labels).mean > 0.7


def test_dt_watershed_agrees_with_flooding_from_interiors_on_closed_boundaries():
    # without gaps every cell's interior is its own region: scikit-image's watershed seeded with the
    # connected interiors is the reference partition
    truth, probability, boundary = dense_tissue(11, gaps=0)
    reference = segmentation.watershed(boundary, measure.label(boundary < 0.5, connectivity=1))
    labels = seeded_watershed(probability, boundary, seeds="distance")
    assert labels.max() == reference.max() == len(np.unique(truth))
    error, _, _ = metrics.adapted_rand_error(reference, labels)
    assert error < 0.01


def test_distance_seeds_split_cells_joined_by_a_boundary_gap():
    # two square cells side by side; the predicted wall between them has a 4-pixel gap
    boundary = np.zeros((24, 48), np.float32)
    boundary[:, 23:25] = 0.9
    boundary[10:14, 23:25] = 0.0
    probability = np.ones_like(boundary)
    # interior seeds: the gap joins the two interiors into one seed, so one object
    assert seeded_watershed(probability, boundary, seeds="interiors").max() == 1
    labels = seeded_watershed(probability, boundary, seeds="distance")
    assert labels.max() == 2
    assert len(np.unique(labels[:, :23])) == 1 and len(np.unique(labels[:, 25:])) == 1
    assert labels[0, 0] != labels[0, -1]


def test_instance_method_dispatch_and_default():
    probability = np.zeros((20, 20), np.float32)
    probability[5:15, 5:15] = 0.9
    with pytest.raises(ValueError, match="unknown instance method"):
        instances_from_probability(probability, method="plantseg")
    with pytest.raises(ValueError, match="unknown seeding"):
        seeded_watershed(probability, seeds="peaks")
    assert default_instance_method("foreground", 1.0) == "components"
    assert default_instance_method("foreground+boundary", 0.2) == "watershed"
    assert default_instance_method("foreground+boundary", 0.999) == "dt_watershed"


# -- identity with the implementation before the speed-up (issue 23) ----------------------------------------------
# The watershed's border merge and fragment merge were Python loops over pairs and fragments (one
# binary dilation per fragment); they are now computed with compiled routines and must give the
# same labels, bit for bit. The loops are kept here, and only here, as the reference.

def reference_sequential(labels):
    return segmentation.relabel_sequential(np.asarray(labels).astype(np.int32, copy=False))[0]


def reference_remove_small_objects(labels, min_size):
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
    return reference_sequential(labels)


def reference_merge_small_fragments(labels, min_size):
    labels = np.asarray(labels).astype(np.int32, copy=True)
    if min_size <= 1 or labels.max() == 0:
        return reference_sequential(labels)
    sizes = np.bincount(labels.ravel())
    boxes = {label: box for label, box in enumerate(ndi.find_objects(labels), start=1) if box is not None}
    height, width = labels.shape
    for label in np.argsort(sizes, kind="stable"):
        if label == 0 or sizes[label] == 0 or sizes[label] >= min_size:
            continue
        rows, cols = boxes[label]
        window = (slice(max(rows.start - 1, 0), min(rows.stop + 1, height)),
                  slice(max(cols.start - 1, 0), min(cols.stop + 1, width)))
        region = labels[window] == label
        ring = ndi.binary_dilation(region, structure=np.ones((3, 3), bool)) & ~region
        neighbours = labels[window][ring]
        neighbours = neighbours[neighbours > 0]
        if neighbours.size == 0:
            continue
        target = int(np.argmax(np.bincount(neighbours)))
        labels[window][region] = target
        sizes[target] += sizes[label]
        sizes[label] = 0
        target_rows, target_cols = boxes[target]
        boxes[target] = (slice(min(rows.start, target_rows.start), max(rows.stop, target_rows.stop)),
                         slice(min(cols.start, target_cols.start), max(cols.stop, target_cols.stop)))
    return reference_sequential(labels)


def reference_merge_weak_borders(labels, boundary, threshold=0.7):
    labels = np.asarray(labels).astype(np.int32, copy=False)
    pairs, strengths = [], []
    for first, second, first_value, second_value in (
            (labels[:, :-1], labels[:, 1:], boundary[:, :-1], boundary[:, 1:]),
            (labels[:-1, :], labels[1:, :], boundary[:-1, :], boundary[1:, :])):
        border = (first != second) & (first > 0) & (second > 0)
        pairs.append(np.stack([np.minimum(first[border], second[border]), np.maximum(first[border], second[border])], 1))
        strengths.append(np.maximum(first_value[border], second_value[border]))
    pairs, strengths = np.concatenate(pairs), np.concatenate(strengths)
    if not len(pairs):
        return reference_sequential(labels)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    mean_strength = np.bincount(inverse, strengths) / np.bincount(inverse)
    parent = np.arange(labels.max() + 1)

    def root(label):
        while parent[label] != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    for (low, high), strength in zip(unique, mean_strength):
        if strength < threshold:
            a, b = root(low), root(high)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return reference_sequential(np.array([root(i) for i in range(parent.size)])[labels])


def reference_seeded_watershed(probability, boundary=None, threshold=0.5, min_size=0):
    mask = probability > threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    fragment_size = min_size if min_size > 0 else 8
    if boundary is not None:
        boundary = boundary.astype(np.float32, copy=False)
        interior = ndi.binary_opening(mask & (boundary < 0.5), structure=ndi.generate_binary_structure(2, 1))
        seeds = reference_remove_small_objects(measure.label(interior, connectivity=1), max(1, fragment_size // 2))
        elevation = boundary
    else:
        distance = ndi.distance_transform_edt(mask)
        peaks = morphology.h_maxima(ndi.gaussian_filter(distance, 1.0), 0.5)
        seeds = measure.label(peaks & mask, connectivity=2)
        elevation = -distance
    labels = segmentation.watershed(elevation, seeds, mask=mask)
    if boundary is not None:
        labels = reference_merge_weak_borders(labels, boundary)
    unseeded = measure.label(mask & (labels == 0), connectivity=2)
    labels = np.where(unseeded > 0, unseeded + labels.max(), labels).astype(np.int32)
    labels = reference_merge_small_fragments(labels, fragment_size)
    return reference_remove_small_objects(labels, min_size)


def network_like_maps(truth, noise, seed):
    """Foreground and boundary probabilities a foreground+boundary U-Net might predict for ``truth``:
    blurred, with noise (strong noise leaves hundreds of specks and fragments to merge)."""
    rng = np.random.default_rng(seed)
    ring = segmentation.find_boundaries(truth, mode="inner").astype(float)
    probability = ndi.gaussian_filter((truth > 0).astype(float), 1.2) + rng.normal(0, noise, truth.shape)
    boundary = 2.5 * ndi.gaussian_filter(ring, 0.8) + rng.normal(0, 1.5 * noise, truth.shape)
    return np.clip(probability, 0, 1).astype(np.float32), np.clip(boundary, 0, 1).astype(np.float32)


def assert_same_labels(new, reference):
    assert new.dtype == reference.dtype == np.int32
    np.testing.assert_array_equal(new, reference)


def check_against_reference(truth, seed, noises=(0.05, 0.25, 0.45)):
    for noise in noises:
        probability, boundary = network_like_maps(truth, noise, seed)
        for min_size in (0, 30):
            assert_same_labels(seeded_watershed(probability, boundary, min_size=min_size),
                               reference_seeded_watershed(probability, boundary, min_size=min_size))
        assert_same_labels(seeded_watershed(probability, None), reference_seeded_watershed(probability, None))
        basins = segmentation.watershed(boundary, measure.label(boundary < 0.3, connectivity=1), mask=probability > 0.5)
        for threshold in (0.3, 0.7):
            assert_same_labels(merge_weak_borders(basins, boundary, threshold),
                               reference_merge_weak_borders(basins, boundary, threshold))
        for min_size in (2, 8, 40):
            assert_same_labels(merge_small_fragments(basins, min_size), reference_merge_small_fragments(basins, min_size))
            assert_same_labels(remove_small_objects(basins, min_size), reference_remove_small_objects(basins, min_size))


@pytest.mark.parametrize("seed", range(3))
def test_watershed_and_merges_equal_the_reference_loops_on_synthetic_nuclei(seed):
    truth, _, _ = touching_nuclei(seed, n=20, shape=(160, 128))
    check_against_reference(truth, seed)


def test_merges_equal_the_reference_loops_on_random_partitions():
    """Chains of fragments, ties between neighbours, objects at the image border, gaps in the ids."""
    rng = np.random.default_rng(5)
    for size, density in ((12, 0.3), (40, 0.05), (64, 0.02)):
        seeds = np.where(rng.random((size, size)) < density, rng.integers(1, 4 * size, (size, size)), 0)
        labels = segmentation.watershed(rng.random((size, size)), seeds, mask=rng.random((size, size)) < 0.8)
        boundary = rng.random((size, size)).astype(np.float32)
        for min_size in (2, 5, 20):
            assert_same_labels(merge_small_fragments(labels, min_size), reference_merge_small_fragments(labels, min_size))
        assert_same_labels(merge_weak_borders(labels, boundary, 0.5), reference_merge_weak_borders(labels, boundary, 0.5))
    for labels in (np.zeros((9, 9), np.int32), np.full((9, 9), 3, np.int32), np.eye(9, dtype=np.int32) * 7):
        assert_same_labels(merge_small_fragments(labels, 4), reference_merge_small_fragments(labels, 4))
        assert_same_labels(merge_weak_borders(labels, np.zeros((9, 9))), reference_merge_weak_borders(labels, np.zeros((9, 9))))
        assert_same_labels(remove_small_objects(labels, 4), reference_remove_small_objects(labels, 4))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not found at {SHARED_DATA}")
@pytest.mark.parametrize("dataset", ["dsb2018_fluo_256", "dsb2018_fluo_520x696", "dsb2018_histo", "usiigaci_cells",
                                     "ovules_mini"])
def test_watershed_and_merges_equal_the_reference_loops_on_real_objects(dataset):
    """Real object shapes and crowding (nuclei, dense nuclei, stained tissue, cells, tissue without background)."""
    import tifffile

    files = sorted((SHARED_DATA / dataset / "labels").glob("*.tif"))
    if not files:
        pytest.skip(f"no labels in {SHARED_DATA / dataset}")
    truth = tifffile.imread(files[len(files) // 2]).astype(np.int32)[:192, :192]
    check_against_reference(truth, 0, noises=(0.05, 0.3))

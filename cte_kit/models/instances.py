"""Instance labels from semantic outputs: connected components or seeded watershed.

* :func:`connected_components` - every connected foreground region is one object (the CTE
  reference code's choice); touching objects merge.
* :func:`seeded_watershed` - touching objects are split. With a boundary channel (a kit U-Net
  trained with ``--task instance``) the seeds are the object interiors the network predicts,
  cleaned of the thin rims and specks that a blurred boundary ring leaves, and the flooding runs
  on the boundary map; without one, the seeds are the h-maxima of the distance transform.
  Two touching objects stay apart only where the network predicts their border: objects whose
  shared border has a mean boundary probability below :data:`WATERSHED_SPLIT` are merged again
  (:func:`merge_weak_borders`). Fragments smaller than ``min_size`` are merged into the
  neighbour they share the longest border with, so no object is ever cut into pieces smaller
  than that, and a foreground region that received no seed is kept whole rather than dropped:
  on every region the result is either the connected component itself or a split of it into
  objects of at least ``min_size`` pixels along a predicted boundary.
"""

from __future__ import annotations

import numpy as np
from ..types import InputTypeError
from scipy import ndimage as ndi
from skimage import measure, morphology, segmentation

__all__ = [
    "INSTANCE_METHODS",
    "WATERSHED_MIN_SIZE",
    "connected_components",
    "instances_from_probability",
    "merge_small_fragments",
    "merge_weak_borders",
    "remove_small_objects",
    "seeded_watershed",
]

INSTANCE_METHODS = ("components", "watershed")

#: Smallest object (pixels) that :func:`seeded_watershed` creates by splitting a region when the
#: caller sets no ``min_size``: a quarter of the smallest DSB2018 nuclei (median area ~150 px on
#: the 256 x 256 sub-domain, ~1 %-quantile ~30 px), so real small nuclei survive while the
#: specks of a noisy boundary map do not become objects.
WATERSHED_MIN_SIZE = 8

#: Mean boundary probability a border between two touching objects needs for them to stay split.
#: Under-trained or out-of-domain networks draw faint ridges inside nuclei; splitting there made
#: the watershed worse than connected components. Chosen on the DSB2018 bank (fluo_256 and
#: fluo_520x696 targets; ``benchmarks/bench_instances.py`` reports the others): at 0.7 the
#: watershed's mAP was at least that of connected components for every model, at 0.5 for 9 of 14.
WATERSHED_SPLIT = 0.7


def _check_map(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) map, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputTypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Delete objects with fewer than ``min_size`` pixels, keeping every other object as it is.

    Unlike relabelling the remaining foreground, touching objects stay separate.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels, 0 = background.
    min_size : int

    Returns
    -------
    (H, W) int32 ndarray
        Objects renumbered 1..N in the order of their old ids.
    """
    labels = _check_map(labels, "labels")
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels = np.where(small[labels], 0, labels)
    return segmentation.relabel_sequential(labels.astype(np.int32, copy=False))[0]


def merge_small_fragments(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Merge objects smaller than ``min_size`` into the touching object they share most border with.

    Fragments are visited from the smallest up, so a chain of small pieces grows into its
    largest neighbour. A small object that touches no other object is left as it is (whether
    it is noise is a separate choice: :func:`remove_small_objects`).

    Parameters
    ----------
    labels : (H, W) int ndarray
    min_size : int

    Returns
    -------
    (H, W) int32 ndarray, renumbered 1..N
    """
    labels = _check_map(labels, "labels").astype(np.int32, copy=True)
    if min_size <= 1 or labels.max() == 0:
        return segmentation.relabel_sequential(labels)[0]
    sizes = np.bincount(labels.ravel())
    boxes = {label: box for label, box in enumerate(ndi.find_objects(labels), start=1) if box is not None}
    height, width = labels.shape
    for label in np.argsort(sizes, kind="stable"):
        if label == 0 or sizes[label] == 0 or sizes[label] >= min_size:
            continue
        rows, cols = boxes[label]
        # one pixel of margin: the fragment's 4-connected border lies inside it
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
    return segmentation.relabel_sequential(labels)[0]


def merge_weak_borders(labels: np.ndarray, boundary: np.ndarray, threshold: float = WATERSHED_SPLIT) -> np.ndarray:
    """Merge touching objects whose shared border is not a predicted boundary.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels, 0 = background.
    boundary : (H, W) float ndarray
        Boundary probability.
    threshold : float
        Two objects stay apart when the mean, over the pixel pairs that straddle their shared
        border (4-connected), of the larger boundary probability of the pair reaches it.

    Returns
    -------
    (H, W) int32 ndarray, renumbered 1..N
    """
    labels = _check_map(labels, "labels").astype(np.int32, copy=False)
    boundary = _check_map(boundary, "boundary")
    if boundary.shape != labels.shape:
        raise ValueError(f"boundary shape {boundary.shape} differs from labels shape {labels.shape}")
    pairs, strengths = [], []
    for first, second, first_value, second_value in (
            (labels[:, :-1], labels[:, 1:], boundary[:, :-1], boundary[:, 1:]),
            (labels[:-1, :], labels[1:, :], boundary[:-1, :], boundary[1:, :])):
        border = (first != second) & (first > 0) & (second > 0)
        pairs.append(np.stack([np.minimum(first[border], second[border]), np.maximum(first[border], second[border])], 1))
        strengths.append(np.maximum(first_value[border], second_value[border]))
    pairs, strengths = np.concatenate(pairs), np.concatenate(strengths)
    if not len(pairs):
        return segmentation.relabel_sequential(labels)[0]
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    mean_strength = np.bincount(inverse, strengths) / np.bincount(inverse)
    parent = np.arange(labels.max() + 1)

    def root(label: int) -> int:
        while parent[label] != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    for (low, high), strength in zip(unique, mean_strength):
        if strength < threshold:
            a, b = root(low), root(high)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return segmentation.relabel_sequential(np.array([root(i) for i in range(parent.size)])[labels])[0]


def connected_components(probability: np.ndarray, threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """Label the connected foreground regions (full connectivity, as the CTE reference code).

    Parameters
    ----------
    probability : (H, W) float ndarray
    threshold : float
        Foreground is ``probability > threshold``.
    min_size : int
        Objects with fewer pixels are removed.

    Returns
    -------
    (H, W) int32 ndarray, 0 = background, objects numbered 1..N
    """
    labels = measure.label(_check_map(probability, "probability") > threshold, connectivity=2)
    return remove_small_objects(labels, min_size)


def _interior_seeds(mask: np.ndarray, boundary: np.ndarray, min_seed_size: int) -> np.ndarray:
    """Connected interiors ``mask & boundary < 0.5``, opened and freed of specks."""
    interior = mask & (boundary < 0.5)
    # An opening removes the one- or two-pixel rims that lie outside a blurred boundary ring:
    # left in, each rim became a seed of its own and cut a nucleus into a dozen slivers.
    interior = ndi.binary_opening(interior, structure=ndi.generate_binary_structure(2, 1))
    seeds = measure.label(interior, connectivity=1)
    return remove_small_objects(seeds, min_seed_size)


def seeded_watershed(
    probability: np.ndarray,
    boundary: np.ndarray | None = None,
    threshold: float = 0.5,
    min_size: int = 0,
) -> np.ndarray:
    """Split touching objects with a seeded watershed inside the foreground mask.

    Parameters
    ----------
    probability : (H, W) float ndarray
        Foreground probability.
    boundary : (H, W) float ndarray, optional
        Boundary probability (a foreground+boundary U-Net). Seeds are the connected interiors
        ``foreground & (boundary < 0.5)`` after a 4-connected opening, with at least
        ``max(1, min_size // 2)`` pixels; the flooding runs on the boundary map. Without it,
        seeds are the h-maxima of the distance transform of the foreground.
    threshold : float
        Foreground is ``probability > threshold``.
    min_size : int
        Smallest object (pixels). Fragments below it are merged into a touching object, and
        isolated objects below it are removed, as :func:`connected_components` does. 0 uses
        :data:`WATERSHED_MIN_SIZE` for the merging and removes nothing.

    Returns
    -------
    (H, W) int32 ndarray, 0 = background, objects numbered 1..N
    """
    probability = _check_map(probability, "probability")
    mask = probability > threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    fragment_size = min_size if min_size > 0 else WATERSHED_MIN_SIZE
    if boundary is not None:
        boundary = _check_map(boundary, "boundary").astype(np.float32, copy=False)
        if boundary.shape != mask.shape:
            raise ValueError(f"boundary shape {boundary.shape} differs from probability shape {mask.shape}")
        seeds = _interior_seeds(mask, boundary, max(1, fragment_size // 2))
        elevation = boundary
    else:
        distance = ndi.distance_transform_edt(mask)
        # h-maxima rather than plain peaks: plateaus of elongated nuclei give one seed, not many
        peaks = morphology.h_maxima(ndi.gaussian_filter(distance, 1.0), 0.5)
        seeds = measure.label(peaks & mask, connectivity=2)
        elevation = -distance
    labels = segmentation.watershed(elevation, seeds, mask=mask)
    if boundary is not None:
        labels = merge_weak_borders(labels, boundary)
    # A region the seeds never reached (no interior predicted) is one object, not background.
    unseeded = measure.label(mask & (labels == 0), connectivity=2)
    labels = np.where(unseeded > 0, unseeded + labels.max(), labels).astype(np.int32)
    labels = merge_small_fragments(labels, fragment_size)
    return remove_small_objects(labels, min_size)


def instances_from_probability(
    probability: np.ndarray,
    boundary: np.ndarray | None = None,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 0,
) -> np.ndarray:
    """Dispatch to :func:`connected_components` or :func:`seeded_watershed` by name."""
    if method == "components":
        return connected_components(probability, threshold, min_size)
    if method == "watershed":
        return seeded_watershed(probability, boundary, threshold, min_size)
    raise ValueError(f"unknown instance method {method!r}; choose from {INSTANCE_METHODS}")

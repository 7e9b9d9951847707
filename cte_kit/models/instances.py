"""Instance labels from semantic outputs: connected components or a seeded watershed.

* :func:`connected_components` - every connected foreground region is one object (the CTE
  reference code's choice); touching objects merge.
* :func:`seeded_watershed` - touching objects are split by flooding the boundary map (a kit U-Net
  trained with ``--task instance``) from seeds, inside the foreground mask. Two seedings:

  - ``seeds='interiors'`` (instance method ``'watershed'``, for nuclei and cells on a background):
    the seeds are the object interiors the network predicts, cleaned of the thin rims and specks
    that a blurred boundary ring leaves;
  - ``seeds='distance'`` (instance method ``'dt_watershed'``, for dense tissue with no background,
    as PlantSeg's distance-transform watershed): the seeds are the maxima of the distance to the
    nearest predicted boundary pixel. A boundary with a gap joins the interiors of two cells into
    one region, whose distance map still has one peak per cell, so the cells stay apart where
    interior seeds would merge them.

  Without a boundary channel the seeds are the h-maxima of the distance transform of the
  foreground. Two touching objects stay apart only where the network predicts their border:
  objects whose shared border has a mean boundary probability below :data:`WATERSHED_SPLIT` are
  merged again (:func:`merge_weak_borders`). Fragments smaller than ``min_size`` are merged into
  the neighbour they share the longest border with, so no object is ever cut into pieces smaller
  than that, and a foreground region that received no seed is kept whole rather than dropped: on
  every region the result is either the connected component itself or a split of it into objects
  of at least ``min_size`` pixels along a predicted boundary.

Which method a model uses is its ``instances`` setting (stored in a kit U-Net's checkpoint, or set
in a bank entry); :func:`default_instance_method` is what ``cte-kit train`` stores.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph
from skimage import measure, morphology, segmentation

from ..types import InputTypeError

__all__ = [
    "DENSE_FOREGROUND",
    "DT_WATERSHED_SPLIT",
    "INSTANCE_METHODS",
    "SEEDINGS",
    "WATERSHED_MIN_SIZE",
    "connected_components",
    "default_instance_method",
    "instances_from_probability",
    "merge_small_fragments",
    "merge_weak_borders",
    "remove_small_objects",
    "seeded_watershed",
]

#: Instance methods a model can declare (its ``instances`` setting): connected components, the
#: boundary watershed seeded by predicted interiors, and the one seeded by distance maxima.
INSTANCE_METHODS = ("components", "watershed", "dt_watershed")

#: Seedings of :func:`seeded_watershed`, and the instance method that uses each.
SEEDINGS = {"interiors": "watershed", "distance": "dt_watershed"}

#: Mean foreground fraction of the training labels from which a boundary model counts as trained
#: on dense tissue (every pixel belongs to an object; ``ovules_mini``: 0.9998, DSB2018 nuclei
#: 0.03-0.35, ``usiigaci_cells`` 0.18) and gets ``'dt_watershed'`` by default.
DENSE_FOREGROUND = 0.9

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

#: :data:`WATERSHED_SPLIT` for distance seeds (``'dt_watershed'``). Those seeds exist to keep apart
#: two cells whose predicted wall has a gap; at 0.7 a gap over a third of the wall merged them again.
#: On the 5 validation slices of ``ovules_mini`` (never its test slices), a ``cte-kit train --task
#: instance`` model of its other slices reached mAP 0.50, 0.51, 0.52, 0.53, 0.44, 0.34 at 0.3 ... 0.8:
#: 0.5 lies inside the plateau, away from the drop above 0.6.
DT_WATERSHED_SPLIT = 0.5


def _check_map(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) map, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputTypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Objects renumbered 1..N in the order of their ids, 0 kept as background: (H, W) int32, a new array.

    What ``skimage.segmentation.relabel_sequential`` returns for non-negative ids, through a lookup
    table (a fifth of its time on a 256 x 256 image), and a plain copy when the ids are already 1..N.
    """
    labels = np.asarray(labels)
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    if present[1:].all():
        return labels.astype(np.int32)
    lookup = np.zeros(present.size, np.int32)
    lookup[present] = np.arange(1, np.count_nonzero(present) + 1, dtype=np.int32)
    return lookup[labels]


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
    return _sequential(_without_small(_check_map(labels, "labels"), min_size))


def _without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with the objects of fewer than ``min_size`` pixels set to 0, the other ids unchanged."""
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            return np.where(small[labels], 0, labels)
    return labels


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
    labels = _check_map(labels, "labels").astype(np.int32, copy=False)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if min_size <= 1 or not small.any():
        return _sequential(labels)
    # Each fragment's border as {neighbour: pixels of it that touch the fragment (8-connected)}, for
    # every fragment at once. A merge of A into B turns A's pixels into B's, so in the border of
    # any other fragment the pixels of A are added to those of B; only a fragment that absorbed
    # another one has a new border, counted again from the image if it is still small when visited.
    borders = _borders(labels, small)
    watchers: dict[int, set[int]] = defaultdict(set)  # object -> fragments whose border holds it
    for fragment, counts in borders.items():
        for neighbour in counts:
            watchers[neighbour].add(fragment)
    boxes = dict(enumerate(ndi.find_objects(labels), start=1))
    current = np.arange(sizes.size)  # the object each original id now belongs to
    members: dict[int, list[int]] = {}
    grown: set[int] = set()
    for label in np.argsort(sizes, kind="stable").tolist():
        if label == 0 or sizes[label] == 0 or sizes[label] >= min_size:
            continue
        if label in grown:
            borders[label] = _border(labels, current, boxes[label], label)
            for neighbour in borders[label]:
                watchers[neighbour].add(label)
        counts = borders.pop(label, None)
        if not counts:
            continue
        target = min(counts, key=lambda neighbour: (-counts[neighbour], neighbour))  # ties: the smallest id
        for original in members.pop(label, [label]):
            current[original] = target
            members.setdefault(target, [target]).append(original)
        sizes[target] += sizes[label]
        sizes[label] = 0
        grown.add(target)
        for watcher in watchers.pop(label, ()):
            found = borders.get(watcher)
            if watcher != target and found is not None and label in found:
                found[target] = found.get(target, 0) + found.pop(label)
                watchers[target].add(watcher)
        (rows, cols), (target_rows, target_cols) = boxes[label], boxes[target]
        boxes[target] = (slice(min(rows.start, target_rows.start), max(rows.stop, target_rows.stop)),
                         slice(min(cols.start, target_cols.start), max(cols.stop, target_cols.stop)))
    return _sequential(current[labels])


#: The 8 neighbours of a pixel.
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def _borders(labels: np.ndarray, fragments: np.ndarray) -> dict[int, dict[int, int]]:
    """``{fragment: {object: its pixels 8-adjacent to the fragment}}`` for the ids where ``fragments`` is True."""
    height, width = labels.shape
    padded = np.pad(labels, 1, constant_values=0)
    rows, cols = np.nonzero(fragments[labels])
    own = labels[rows, cols].astype(np.int64)
    touching = []
    for dy, dx in _OFFSETS:
        other = padded[rows + 1 + dy, cols + 1 + dx]
        near = (other > 0) & (other != own)
        touching.append(own[near] * labels.size + (rows[near] + dy) * width + cols[near] + dx)
    # a pixel that touches a fragment at several of its pixels counts once
    fragment, pixel = np.divmod(np.unique(np.concatenate(touching)), labels.size)
    n_ids = int(labels.max()) + 1
    pairs, counts = np.unique(fragment * n_ids + labels.ravel()[pixel], return_counts=True)
    found: dict[int, dict[int, int]] = {}
    for fragment, neighbour, count in zip(*(part.tolist() for part in np.divmod(pairs, n_ids)), counts.tolist()):
        found.setdefault(fragment, {})[neighbour] = count
    return found


def _border(labels: np.ndarray, current: np.ndarray, box: tuple[slice, slice], label: int) -> dict[int, int]:
    """The border of object ``label`` now (``current[labels]``) inside ``box``, as :func:`_borders` counts it."""
    (rows, cols), (height, width) = box, labels.shape
    # one pixel of margin: the object's 8-connected border lies inside it
    window = current[labels[max(rows.start - 1, 0):min(rows.stop + 1, height),
                            max(cols.start - 1, 0):min(cols.stop + 1, width)]]
    region = window == label
    grown = region.copy()  # the 3 x 3 dilation, one axis after the other
    grown[1:] |= region[:-1]
    grown[:-1] |= region[1:]
    dilated = grown.copy()
    dilated[:, 1:] |= grown[:, :-1]
    dilated[:, :-1] |= grown[:, 1:]
    neighbours = window[dilated & ~region]
    counts = np.bincount(neighbours[neighbours > 0])
    return {int(n): int(counts[n]) for n in np.flatnonzero(counts)}


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
    n_ids = int(labels.max()) + 1
    keys, strengths = [], []
    for first, second, first_value, second_value in (
            (labels[:, :-1], labels[:, 1:], boundary[:, :-1], boundary[:, 1:]),
            (labels[:-1, :], labels[1:, :], boundary[:-1, :], boundary[1:, :])):
        border = (first != second) & (first > 0) & (second > 0)
        low, high = np.minimum(first[border], second[border]), np.maximum(first[border], second[border])
        keys.append(low.astype(np.int64) * n_ids + high)  # one integer per pair, ordered as the pairs
        strengths.append(np.maximum(first_value[border], second_value[border]))
    keys, strengths = np.concatenate(keys), np.concatenate(strengths)
    if not len(keys):
        return _sequential(labels)
    pairs, inverse = np.unique(keys, return_inverse=True)
    mean_strength = np.bincount(inverse, strengths) / np.bincount(inverse)
    weak = pairs[mean_strength < threshold]
    # objects joined by weak borders, directly or through others, are one object: the connected
    # components of the graph of weak borders, numbered in the order of their smallest id
    graph = sparse.coo_matrix((np.ones(weak.size, np.int8), (weak // n_ids, weak % n_ids)), shape=(n_ids, n_ids))
    merged = csgraph.connected_components(graph, directed=False)[1]
    return _sequential(merged[labels])


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
    # not renumbered: the border merge that follows the flooding numbers the objects in the same order
    return _without_small(measure.label(interior, connectivity=1), min_seed_size)


def _distance_seeds(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seeds at the h-maxima of the smoothed distance transform of ``region``, and that distance.

    h-maxima rather than plain peaks: the plateau of an elongated object gives one seed, not many.
    """
    distance = ndi.distance_transform_edt(region)
    peaks = morphology.h_maxima(ndi.gaussian_filter(distance, 1.0), 0.5)
    return measure.label(peaks & region, connectivity=2), distance


def seeded_watershed(
    probability: np.ndarray,
    boundary: np.ndarray | None = None,
    threshold: float = 0.5,
    min_size: int = 0,
    seeds: str = "interiors",
    split: float | None = None,
) -> np.ndarray:
    """Split touching objects with a seeded watershed inside the foreground mask.

    Parameters
    ----------
    probability : (H, W) float ndarray
        Foreground probability. On dense tissue (no background) it is high everywhere and the
        mask is the whole image.
    boundary : (H, W) float ndarray, optional
        Boundary probability (a foreground+boundary U-Net); the flooding runs on it. Without it,
        seeds are the h-maxima of the distance transform of the foreground and the flooding runs
        on the negated distance.
    threshold : float
        Foreground is ``probability > threshold``.
    min_size : int
        Smallest object (pixels). Fragments below it are merged into a touching object, and
        isolated objects below it are removed, as :func:`connected_components` does. 0 uses
        :data:`WATERSHED_MIN_SIZE` for the merging and removes nothing.
    seeds : {'interiors', 'distance'}
        With a boundary map: ``'interiors'`` seeds the connected interiors ``foreground &
        (boundary < 0.5)`` after a 4-connected opening, with at least ``max(1, min_size // 2)``
        pixels, and floods the boundary map; ``'distance'`` seeds the h-maxima (h = 0.5 pixel) of
        the distance, smoothed with a Gaussian of 1 pixel, from each interior pixel to the
        nearest boundary or background pixel (PlantSeg's distance-transform watershed), and floods
        the boundary map smoothed with a Gaussian of 1 pixel minus a tenth of the normalised
        distance. Over-seeded cells are joined again by :func:`merge_weak_borders`, since no
        predicted boundary separates their seeds.
    split : float, optional
        Mean boundary probability a border needs for its two objects to stay apart
        (:func:`merge_weak_borders`); default :data:`WATERSHED_SPLIT` for interior seeds,
        :data:`DT_WATERSHED_SPLIT` for distance seeds.

    Returns
    -------
    (H, W) int32 ndarray, 0 = background, objects numbered 1..N
    """
    if seeds not in SEEDINGS:
        raise ValueError(f"unknown seeding {seeds!r}; choose from {tuple(SEEDINGS)}")
    probability = _check_map(probability, "probability")
    mask = probability > threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    fragment_size = min_size if min_size > 0 else WATERSHED_MIN_SIZE
    if boundary is not None:
        boundary = _check_map(boundary, "boundary").astype(np.float32, copy=False)
        if boundary.shape != mask.shape:
            raise ValueError(f"boundary shape {boundary.shape} differs from probability shape {mask.shape}")
        if seeds == "interiors":
            markers = _interior_seeds(mask, boundary, max(1, fragment_size // 2))
            elevation = boundary
        else:
            markers, distance = _distance_seeds(mask & (boundary < 0.5))
            # In a cell's flat interior the noise of the boundary map decides the flooding order:
            # a neighbour's flood, entering through a gap in the wall, ran along the lowest noise
            # pixels around a seed before the seed's own flood did, leaving it a one-pixel basin.
            # Smoothing and a slope towards each seed (PlantSeg blends the distance in as well)
            # let each seed flood its own cell first.
            elevation = ndi.gaussian_filter(boundary, 1.0) - 0.1 * distance / max(float(distance.max()), 1.0)
    else:
        markers, distance = _distance_seeds(mask)
        elevation = -distance
    labels = segmentation.watershed(elevation, markers, mask=mask)
    if boundary is not None:
        if split is None:
            split = WATERSHED_SPLIT if seeds == "interiors" else DT_WATERSHED_SPLIT
        labels = merge_weak_borders(labels, boundary, split)
    # A region the seeds never reached (no interior predicted) is one object, not background.
    unseeded = measure.label(mask & (labels == 0), connectivity=2)
    labels = np.where(unseeded > 0, unseeded + labels.max(), labels).astype(np.int32)
    labels = merge_small_fragments(labels, fragment_size)
    return remove_small_objects(labels, min_size) if min_size > 1 else labels


def default_instance_method(output: str, foreground_fraction: float) -> str:
    """The instance method a model trained on some labels declares unless told otherwise.

    Parameters
    ----------
    output : {'foreground', 'foreground+boundary'}
        The model's outputs.
    foreground_fraction : float
        Mean fraction of foreground pixels in its training labels.

    Returns
    -------
    str
        ``'components'`` without a boundary channel; with one, ``'dt_watershed'`` for dense
        tissue (foreground fraction at least :data:`DENSE_FOREGROUND`), where the foreground mask
        is the whole image and only the boundary map separates cells, else ``'watershed'``.
    """
    if output != "foreground+boundary":
        return "components"
    return "dt_watershed" if foreground_fraction >= DENSE_FOREGROUND else "watershed"


def instances_from_probability(
    probability: np.ndarray,
    boundary: np.ndarray | None = None,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 0,
) -> np.ndarray:
    """Instance labels by the method a model declares (one of :data:`INSTANCE_METHODS`).

    ``'components'``: :func:`connected_components`; ``'watershed'`` and ``'dt_watershed'``:
    :func:`seeded_watershed` with interior or distance seeds.
    """
    if method == "components":
        return connected_components(probability, threshold, min_size)
    seeding = {name: seeding for seeding, name in SEEDINGS.items()}
    if method in seeding:
        return seeded_watershed(probability, boundary, threshold, min_size, seeding[method])
    raise ValueError(f"unknown instance method {method!r}; choose from {INSTANCE_METHODS}")

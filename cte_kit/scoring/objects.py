"""Per-object measurements of a label image, and how well each object is matched in other label images.

* :func:`object_properties` - id, area and centroid of every object (one ``np.bincount`` each);
* :func:`best_iou` - for every object of one label image, the largest IoU it reaches with any object
  of another (0 where nothing overlaps it), from one :func:`~cte_kit.scoring.metrics.contingency` table;
* :func:`mean_best_iou` - the same averaged over several other label images: the perturbed
  predictions of the same image (how an object survives a perturbation) or the predictions of other
  models (how much the bank agrees on it), and against the truth, whether an object is matched;
* :func:`convex_hull_areas` - the pixels of every object's convex hull, as scikit-image counts them.

An object matched at IoU > 0.5 has exactly one partner (two objects that each cover more than half of
the union cannot share a third), so ``best_iou >= 0.5`` is the one-to-one matching of
:func:`~cte_kit.scoring.metrics.match_instances` at that threshold, up to ties at exactly 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import check_label_image, contingency

__all__ = ["ObjectProperties", "best_iou", "convex_hull_areas", "mean_best_iou", "object_properties"]


@dataclass(frozen=True)
class ObjectProperties:
    """The objects of one label image, in increasing id order.

    Attributes
    ----------
    ids : (n,) int64 ndarray
        Object ids (non-zero labels present in the image).
    area : (n,) int64 ndarray
        Pixels per object.
    centroid_y, centroid_x : (n,) float64 ndarray
        Mean row and column of each object's pixels.
    """

    ids: np.ndarray
    area: np.ndarray
    centroid_y: np.ndarray
    centroid_x: np.ndarray


def object_properties(labels) -> ObjectProperties:
    """Id, area and centroid of every object of a label image.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels, 0 = background; ids need not be consecutive.

    Returns
    -------
    ObjectProperties
        As ``skimage.measure.regionprops`` gives ``label``, ``area`` and ``centroid`` (each object
        taken as one region, connected or not).
    """
    labels = check_label_image(labels)
    flat = labels.ravel()
    ids = np.unique(flat)
    ids = ids[ids > 0].astype(np.int64)
    if ids.size == 0:
        empty = np.zeros(0)
        return ObjectProperties(np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty.copy())
    codes = np.searchsorted(ids, flat) + 1
    codes[flat == 0] = 0
    rows, cols = np.indices(labels.shape)
    area = np.bincount(codes, minlength=ids.size + 1)[1:]
    y = np.bincount(codes, weights=rows.ravel(), minlength=ids.size + 1)[1:] / area
    x = np.bincount(codes, weights=cols.ravel(), minlength=ids.size + 1)[1:] / area
    return ObjectProperties(ids, area.astype(np.int64), y, x)


def best_iou(labels, other) -> tuple[np.ndarray, np.ndarray]:
    """For every object of ``labels``, the largest IoU it has with any object of ``other``.

    Parameters
    ----------
    labels : (H, W) int ndarray
        The objects to score (0 = background).
    other : (H, W) int ndarray
        Another label image of the same pixels (another prediction, or the truth).

    Returns
    -------
    ids : (n,) int64 ndarray
        The object ids of ``labels``, increasing.
    iou : (n,) float64 ndarray
        In [0, 1]: 0 where no object of ``other`` overlaps the object, 1 where one has exactly its pixels.
    """
    labels = check_label_image(labels, name="labels")
    other = check_label_image(other, name="other", shape=labels.shape)
    table = contingency(labels, other)
    areas, other_areas = table.row_sums(), table.col_sums()
    rows_present = np.flatnonzero(areas[1:]) + 1
    best = np.zeros(rows_present.size)
    objects = (table.rows > 0) & (table.cols > 0)
    rows, cols, overlap = table.rows[objects], table.cols[objects], table.counts[objects]
    np.maximum.at(best, np.searchsorted(rows_present, rows), overlap / (areas[rows] + other_areas[cols] - overlap))
    # a table that compacted ids too large for a dense count has the sorted ids' ranks as rows
    return table.ids[0][rows_present], best


def mean_best_iou(labels, others: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_iou` of every object of ``labels`` averaged over several other label images.

    Parameters
    ----------
    labels : (H, W) int ndarray
    others : sequence of (H, W) int ndarray
        At least one.

    Returns
    -------
    ids : (n,) int64 ndarray
    value : (n,) float64 ndarray
        In [0, 1]; the mean of the objects' best IoU over ``others``.
    """
    if len(others) == 0:
        raise ValueError("mean_best_iou needs at least one other label image")
    found = [best_iou(labels, other) for other in others]
    return found[0][0], np.mean([values for _, values in found], axis=0)


def convex_hull_areas(labels, ids=None) -> np.ndarray:
    """Pixels of the convex hull of each object, as ``skimage.measure.regionprops`` counts ``area_convex``.

    The hull is that of the midpoints of the object's pixel edges; a pixel counts when its centre
    lies inside the hull or on its border. Row by row, the hull spans from its left chain to its
    right chain; the left chain is the lower convex envelope of the leftmost edge midpoints at each
    height (half rows included), the right chain likewise. The chains of all objects are found at
    once (:func:`_envelope_ceil_half`) and evaluated exactly in integers (doubled coordinates), where
    scikit-image runs Qhull and a point-in-polygon test per object (ten times the time on a nuclei
    image).

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels, 0 = background; an object need not be connected.
    ids : sequence of int, optional
        The objects to measure, each present in ``labels`` (default: every object, increasing).

    Returns
    -------
    (n,) int64 ndarray
        One count per id, in the order of ``ids``.
    """
    labels = check_label_image(labels)
    ids = (np.unique(labels[labels > 0]) if ids is None else np.asarray(ids).ravel()).astype(np.int64)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    index = np.full(int(max(labels.max(), ids.max())) + 1, -1, np.int64)
    index[ids] = np.arange(ids.size)
    rows, cols = np.nonzero(index[labels] >= 0)
    own = index[labels[rows, cols]]
    if ids.min() <= 0 or np.unique(ids).size != ids.size or np.unique(own).size != ids.size:
        raise ValueError("ids must be distinct objects (positive labels) of the label image")
    # pixels come row by row with increasing columns; grouped by object they stay in that order
    order = np.argsort(own, kind="stable")
    own, rows, cols = own[order], rows[order], cols[order]
    starts = np.flatnonzero(np.r_[True, (own[1:] != own[:-1]) | (rows[1:] != rows[:-1])])
    group, row = own[starts], rows[starts]
    first, last = cols[starts], cols[np.r_[starts[1:], own.size] - 1]
    # At each height (doubled coordinates: rows 2r, half rows 2r - 1 and 2r + 1) the leftmost and the
    # rightmost edge midpoint of the first and last pixel of each row; the right side is mirrored so
    # that both chains are lower convex envelopes.
    height = np.concatenate([2 * row, 2 * row - 1, 2 * row + 1])
    span = 2 * labels.shape[0] + 3
    keys = np.tile(group, 3) * span + height + 1
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    at = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    keys = keys[at]
    left = np.minimum.reduceat(np.concatenate([2 * first - 1, 2 * first, 2 * first])[order], at)
    right = -np.maximum.reduceat(np.concatenate([2 * last + 1, 2 * last, 2 * last])[order], at)
    heights = keys % span - 1
    # every row from each object's first to its last
    top, bottom = np.full(ids.size, labels.shape[0]), np.full(ids.size, -1)
    np.minimum.at(top, group, row)
    np.maximum.at(bottom, group, row)
    counts = bottom - top + 1
    query_object = np.repeat(np.arange(ids.size), counts)
    query_row = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + top[query_object]
    queries = query_object * span + 2 * query_row + 1
    lowest = _envelope_ceil_half(keys, heights, left, queries, span)
    highest = -_envelope_ceil_half(keys, heights, right, queries, span)
    return np.bincount(query_object, weights=highest - lowest + 1, minlength=ids.size).astype(np.int64)


def _envelope_ceil_half(keys, heights, values, queries, span) -> np.ndarray:
    """``ceil(e / 2)`` of the lower convex envelope ``e`` of each object's (height, value) points at the query keys.

    ``keys`` (object * span + height + 1) are sorted, and so are the points they key. A point on or
    above the chord between its neighbours is no corner of the envelope (it lies below every chord),
    so all such points are dropped at once, again until none is left: a convex chain remains, each
    object's first and last point among its corners. Exact in integers.
    """
    objects = keys // span
    alive = np.ones(keys.size, bool)
    while True:
        corner = np.flatnonzero(alive)
        before, point, after = corner[:-2], corner[1:-1], corner[2:]
        inside = (objects[before] == objects[point]) & (objects[after] == objects[point])
        # a point on or above the chord of its neighbours: (y_j - y_i)(x_k - x_i) - (x_j - x_i)(y_k - y_i) <= 0
        cross = ((heights[point] - heights[before]) * (values[after] - values[before])
                 - (values[point] - values[before]) * (heights[after] - heights[before]))
        dropped = point[inside & (cross <= 0)]
        if dropped.size == 0:
            break
        alive[dropped] = False
    corner = np.flatnonzero(alive)
    right = corner[np.searchsorted(keys[corner], queries)]
    exact = keys[right] == queries
    left = corner[np.maximum(np.searchsorted(keys[corner], queries) - 1, 0)]
    left = np.where(exact, right, left)
    height = queries % span - 1
    rise = np.where(exact, 1, heights[right] - heights[left])
    numerator = values[left] * rise + (values[right] - values[left]) * (height - heights[left])
    return -((-numerator) // (2 * rise))

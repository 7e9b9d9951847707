"""Per-object measurements of a label image, and how well each object is matched in other label images.

* :func:`object_properties` - id, area and centroid of every object (one ``np.bincount`` each);
* :func:`best_iou` - for every object of one label image, the largest IoU it reaches with any object
  of another (0 where nothing overlaps it), from one :func:`~cte_kit.scoring.metrics.contingency` table;
* :func:`mean_best_iou` - the same averaged over several other label images: the perturbed
  predictions of the same image (how an object survives a perturbation) or the predictions of other
  models (how much the bank agrees on it), and against the truth, whether an object is matched.

An object matched at IoU > 0.5 has exactly one partner (two objects that each cover more than half of
the union cannot share a third), so ``best_iou >= 0.5`` is the one-to-one matching of
:func:`~cte_kit.scoring.metrics.match_instances` at that threshold, up to ties at exactly 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import check_label_image, contingency

__all__ = ["ObjectProperties", "best_iou", "mean_best_iou", "object_properties"]


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
    if table.shape[0] == int(labels.max(initial=0)) + 1:
        return rows_present.astype(np.int64), best
    # the table compacted ids too large for a dense count: its rows are the sorted ids' ranks
    return np.unique(labels[labels > 0]).astype(np.int64), best


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

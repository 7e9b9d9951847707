"""Ground-truth performance of a segmentation: what the CTE ranking is judged against.

Semantic metrics compare a binarised probability map with the foreground of a label image:

* :func:`f1_score` - foreground F1 (Dice), the paper's semantic performance measure;
* :func:`iou_score` - foreground intersection over union.

Instance metrics compare two label images (0 = background):

* :func:`match_instances` - optimal one-to-one matching of objects at an IoU threshold, with
  the same assignment and the same conventions as ``stardist.matching.matching``;
* :func:`average_precision` - the DSB2018 score ``TP / (TP + FP + FN)`` averaged over IoU
  thresholds 0.5, 0.55, ..., 0.95 (the paper's instance mAP);
* :func:`adapted_rand_error` - equal to ``skimage.metrics.adapted_rand_error``.

The counting helpers (:func:`contingency`, :func:`rand_pair_counts`, :func:`relabel`,
:func:`mask_overlap`) are shared with :mod:`cte_kit.scoring.consistency`. Everything is computed from
one ``np.bincount`` contingency table per pair of images; labels are never cast to a narrow
dtype, so ids of any size (e.g. 70000 in a uint32 image) are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..data.images import check_labels
from ..types import InputTypeError

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "InstanceMatch",
    "AveragePrecision",
    "f1_score",
    "iou_score",
    "match_instances",
    "average_precision",
    "adapted_rand_error",
    "check_probability",
    "check_threshold",
    "check_label_image",
    "mask_overlap",
    "relabel",
    "Contingency",
    "contingency",
    "rand_pair_counts",
]

#: IoU thresholds of the DSB2018 / paper mAP: 0.5, 0.55, ..., 0.95, rounded so that each is the
#: double nearest its decimal value (``np.arange`` accumulates error, e.g. 0.7000000000000002,
#: which would reject an object with an IoU of exactly 7/10).
DEFAULT_IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)

# A dense bincount is used while the value range is at most this many times the number of
# values (plus a small constant); beyond that, sorting (np.unique) needs less memory.
_DENSE_RANGE_FACTOR = 4
_DENSE_RANGE_SLACK = 1 << 16


# -- input validation -------------------------------------------------------------------------
def check_probability(array, name: str = "probability", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validate a 2D foreground probability map or boolean mask.

    Parameters
    ----------
    array : array_like, shape (H, W), float in [0, 1] or bool
    name : str
        Used in error messages.
    shape : tuple of int, optional
        The shape ``array`` must have (that of the map it is compared with).

    Returns
    -------
    ndarray, shape (H, W)
        The input as an array (no copy), float or bool.

    Raises
    ------
    TypeError
        For integer or other non-float dtypes (pass ``labels > 0`` for a label image).
    ValueError
        For a wrong number of dimensions, a shape mismatch, NaN/inf, or values outside [0, 1].
    """
    array = np.asarray(array)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.floating):
        raise InputTypeError(
            f"{name}: expected a float probability map or a bool mask, got dtype {array.dtype} "
            "(for a label image pass `labels > 0`)"
        )
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2D (H, W) map, got shape {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{name}: shape {array.shape} does not match {tuple(shape)}")
    if array.dtype != bool and array.size:
        low, high = array.min(), array.max()  # NaN and infinities reach the extremes: no mask of the map is made
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{name}: probability map contains NaN or infinite values")
        if low < 0 or high > 1:
            raise ValueError(
                f"{name}: probabilities must lie in [0, 1], got range [{low:g}, {high:g}] "
                "(apply a sigmoid to logits first)"
            )
    return array


def check_threshold(threshold) -> float:
    """The foreground threshold as a float in [0, 1) (a map is foreground where ``> threshold``)."""
    threshold = float(threshold)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    return threshold


def check_label_image(labels, name: str = "labels", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validate a 2D label image, without copying integer input.

    Parameters
    ----------
    labels : array_like, shape (H, W)
        Non-negative integers (any integer dtype), bool, or floats holding integer values.
    name : str
        Used in error messages.
    shape : tuple of int, optional
        The shape ``labels`` must have.

    Returns
    -------
    ndarray, shape (H, W)
        Integer input as it is (its own dtype); other input converted to int64 by
        :func:`cte_kit.data.images.check_labels`, which also raises the errors for it.
    """
    array = np.asarray(labels)
    integer = array.dtype.kind == "u" or (array.dtype.kind == "i" and array.min(initial=0) >= 0)
    # Integer images are the common, large case: check them in place instead of an int64 copy.
    if not (integer and array.ndim == 2):
        array = check_labels(array, name=name)
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{name}: shape {array.shape} does not match {tuple(shape)}")
    return array


def _check_label_pair(truth, prediction) -> tuple[np.ndarray, np.ndarray]:
    truth = check_label_image(truth, name="truth")
    return truth, check_label_image(prediction, name="prediction", shape=truth.shape)


# -- shared counting helpers ------------------------------------------------------------------
def _is_dense(value_range: int, n_values: int) -> bool:
    return value_range <= _DENSE_RANGE_FACTOR * n_values + _DENSE_RANGE_SLACK


def relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the label values of an image to compact codes ``0 .. n - 1``, keeping 0 as 0.

    Unlike a cast to a narrow dtype this never wraps large ids around, and unlike
    ``np.unique`` it needs no sort while the ids are not much larger than the number of pixels.

    Parameters
    ----------
    labels : ndarray of non-negative int
        Any shape.

    Returns
    -------
    codes : int64 ndarray, same shape as ``labels``
        Code 0 is label 0 (whether or not it occurs); the other codes keep the label order.
    ids : int ndarray, shape (n,)
        ``ids[code]`` is the original label; ``ids[0] == 0``.
    """
    flat = np.asarray(labels).ravel()
    if flat.dtype == bool:  # indexing with a bool array would mean masking
        flat = flat.view(np.uint8)
    if flat.size == 0:
        return np.zeros(np.shape(labels), np.int64), np.zeros(1, np.int64)
    top = int(flat.max())
    if _is_dense(top, flat.size):
        present = np.zeros(top + 1, dtype=bool)
        present[flat] = True
        present[0] = True
        lookup = np.cumsum(present) - 1
        return lookup[flat].reshape(np.shape(labels)), np.flatnonzero(present)
    ids, codes = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids, codes = np.concatenate((np.zeros(1, ids.dtype), ids)), codes + 1
    return codes.reshape(np.shape(labels)).astype(np.int64, copy=False), ids


def _value_counts(values: np.ndarray, value_range: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a flat non-negative int array and their counts, ascending."""
    if _is_dense(value_range, values.size):
        counts = np.bincount(values, minlength=value_range)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(values, return_counts=True)


@dataclass(frozen=True)
class Contingency:
    """The non-zero cells of the contingency table of two labelings of the same pixels.

    Attributes
    ----------
    rows, cols : (n_cells,) int64 ndarray
        Row (first labeling) and column (second labeling) of each cell. Index 0 is label 0;
        the other indices are the labels themselves, or their order-preserving compact codes
        when the ids are too large for a dense table.
    counts : (n_cells,) int64 ndarray
        Pixels in each cell (all > 0).
    shape : (int, int)
        Number of rows and columns of the full table.
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    shape: tuple[int, int]
    #: ``(row ids, column ids)``: the label of each row and column index, where they are compact codes
    #: (None: the indices are the labels).
    compacted: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        """``(row ids, column ids)``: the label of each row and column index of the table."""
        if self.compacted is not None:
            return self.compacted
        return np.arange(self.shape[0], dtype=np.int64), np.arange(self.shape[1], dtype=np.int64)

    def row_sums(self) -> np.ndarray:
        """(shape[0],) int64: pixels of each row label (0 for absent ids)."""
        # bincount weights are float64, exact for any image below 2**53 pixels.
        return np.bincount(self.rows, weights=self.counts, minlength=self.shape[0]).astype(np.int64)

    def col_sums(self) -> np.ndarray:
        """(shape[1],) int64: pixels of each column label (0 for absent ids)."""
        return np.bincount(self.cols, weights=self.counts, minlength=self.shape[1]).astype(np.int64)


#: Pixels counted at a time by :func:`contingency`: the pair codes of a chunk, not of the whole image, are
#: in memory (at most about 30 MB; a 1024 x 1024 image is one chunk, an 8192 x 8192 section 64).
CONTINGENCY_CHUNK = 1 << 20


def contingency(u: np.ndarray, v: np.ndarray, keep: np.ndarray | None = None) -> Contingency:
    """Contingency table of two label images: one ``np.bincount`` of pixel pair codes.

    (``np.unique`` replaces the bincount when the codes are too sparse for a dense count.) Images
    larger than :data:`CONTINGENCY_CHUNK` pixels are counted chunk by chunk and the counts added:
    the table is the same, and memory holds one chunk's codes.

    Parameters
    ----------
    u, v : ndarray of non-negative int, same shape
        Two labelings of the same pixels (any integer dtype).
    keep : bool ndarray, same shape, optional
        Pixels to count (default: all).

    Returns
    -------
    Contingency
    """
    u, v = np.ravel(u), np.ravel(v)
    keep = None if keep is None else np.ravel(keep)
    n_u, n_v = int(u.max(initial=0)) + 1, int(v.max(initial=0)) + 1
    if u.size <= CONTINGENCY_CHUNK:
        return _contingency(u, v, keep, n_u, n_v)
    parts = [_contingency(u[start:start + CONTINGENCY_CHUNK], v[start:start + CONTINGENCY_CHUNK],
                          None if keep is None else keep[start:start + CONTINGENCY_CHUNK])
             for start in range(0, u.size, CONTINGENCY_CHUNK)]
    # every chunk's cells by their ids, then the cells of equal ids added, in (row, column) order
    rows = np.concatenate([part.ids[0][part.rows] for part in parts])
    cols = np.concatenate([part.ids[1][part.cols] for part in parts])
    counts = np.concatenate([part.counts for part in parts])
    order = np.lexsort((cols, rows))
    rows, cols, counts = rows[order], cols[order], counts[order]
    starts = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])])
    rows, cols, counts = rows[starts], cols[starts], np.add.reduceat(counts, starts)
    if _is_dense(n_u * n_v, u.size):
        return Contingency(rows, cols, counts, (n_u, n_v))
    # as the whole image would be counted: ids compacted to their ranks among the ids present (0 first)
    u_ids, v_ids = np.union1d(rows, [0]), np.union1d(cols, [0])
    return Contingency(np.searchsorted(u_ids, rows), np.searchsorted(v_ids, cols), counts, (len(u_ids), len(v_ids)),
                       (u_ids, v_ids))


def _contingency(u: np.ndarray, v: np.ndarray, keep: np.ndarray | None, n_u: int | None = None,
                 n_v: int | None = None) -> Contingency:
    """:func:`contingency` of flat arrays counted at once (``n_u``, ``n_v``: their largest ids + 1, if known)."""
    n_kept = u.size if keep is None else int(np.count_nonzero(keep))
    if n_u is None:
        n_u, n_v = int(u.max(initial=0)) + 1, int(v.max(initial=0)) + 1
    ids = None
    if _is_dense(n_u * n_v, u.size):
        # Small ids (the usual case): pair codes of the raw labels, in int32 while they fit
        # (half the memory traffic of int64). Excluded pixels get code 0, which is not counted.
        dtype = np.int32 if n_u * n_v <= np.iinfo(np.int32).max else np.int64
        joint = u.astype(dtype, copy=False) * dtype(n_v)
        joint += v
        if keep is not None:
            joint *= keep
    else:
        # Large ids: compact them (0 stays 0) so that the pair code cannot overflow int64.
        if keep is not None:
            u, v = u[keep], v[keep]
        (u, u_ids), (v, v_ids) = relabel(u), relabel(v)
        n_u, n_v, ids = len(u_ids), len(v_ids), (u_ids.astype(np.int64), v_ids.astype(np.int64))
        joint = u * n_v + v
    # Code 0, background in both images, is most of a microscopy image: count only the other
    # codes (selecting them first is cheaper than counting them all) and infer cell (0, 0).
    joint = joint[joint != 0]
    cells, counts = _value_counts(joint, n_u * n_v)
    if n_kept > joint.size:
        cells, counts = np.concatenate(([0], cells)), np.concatenate(([n_kept - joint.size], counts))
    rows, cols = np.divmod(cells, n_v)
    return Contingency(rows.astype(np.int64), cols.astype(np.int64), counts.astype(np.int64), (n_u, n_v), ids)


def _ordered_pairs(sizes: np.ndarray) -> int:
    """sum c (c - 1): ordered pairs of distinct pixels within each group of the given sizes."""
    return int(sizes @ sizes) - int(sizes.sum())


def rand_pair_counts(table: Contingency, singleton_background: bool = False) -> tuple[int, int, int]:
    """Pair counts of the Rand index from a contingency table.

    Parameters
    ----------
    table : Contingency
        Of ``u`` (rows) against ``v`` (columns).
    singleton_background : bool
        If True, every pixel labelled 0 is a segment of its own. A singleton pairs with
        nothing, so such pixels are simply left out of the pair counts instead of being given
        fresh ids. If False, 0 is an ordinary label.

    Returns
    -------
    joint, pairs_u, pairs_v : int
        ``sum_ij n_ij (n_ij - 1)``, ``sum_i a_i (a_i - 1)`` and ``sum_j b_j (b_j - 1)`` with row
        sums ``a_i`` and column sums ``b_j`` (ordered pairs: twice the unordered counts).
    """
    counts, sizes_u, sizes_v = table.counts, table.row_sums(), table.col_sums()
    if singleton_background:
        counts = counts[(table.rows > 0) & (table.cols > 0)]
        sizes_u, sizes_v = sizes_u[1:], sizes_v[1:]
    return _ordered_pairs(counts), _ordered_pairs(sizes_u), _ordered_pairs(sizes_v)


def mask_overlap(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Intersection and union sizes of two boolean masks of the same shape."""
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))


# -- semantic metrics -------------------------------------------------------------------------
def _foreground_overlap(truth, prediction, threshold) -> tuple[int, int, int]:
    truth = check_label_image(truth, name="truth") > 0
    predicted = check_probability(prediction, name="prediction", shape=truth.shape) > check_threshold(threshold)
    intersection, union = mask_overlap(predicted, truth)
    return intersection, union, int(np.count_nonzero(predicted)) + int(np.count_nonzero(truth))


def f1_score(truth, prediction, threshold: float = 0.5) -> float:
    """Foreground F1 (Dice) of a binarised prediction against the truth's foreground.

    Truth first, as in scikit-learn, scikit-image and StarDist (and every metric of this module).

    Parameters
    ----------
    truth : (H, W) int or bool ndarray
        Label image; every non-zero pixel is foreground. A float array here is refused, so that
        arguments passed the other way round give an error, not a number.
    prediction : (H, W) float ndarray in [0, 1] or bool ndarray
        Foreground probability (binarised at ``> threshold``) or mask.
    threshold : float

    Returns
    -------
    float
        ``2 |P & T| / (|P| + |T|)``. **0.0 when the truth has no foreground**, whatever the
        prediction, as the official CRank evaluation does.
    """
    intersection, _, total = _foreground_overlap(truth, prediction, threshold)
    return 2.0 * intersection / total if intersection else 0.0


def iou_score(truth, prediction, threshold: float = 0.5) -> float:
    """Foreground intersection over union of a binarised prediction and the truth.

    Parameters and conventions as :func:`f1_score`: **0.0 when the truth has no foreground.**
    """
    intersection, union, _ = _foreground_overlap(truth, prediction, threshold)
    return intersection / union if intersection else 0.0


# -- instance metrics -------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceMatch:
    """Object-level agreement of a predicted label image with the truth at one IoU threshold.

    Attributes
    ----------
    threshold : float
        Pairs need ``IoU >= threshold`` to match.
    tp, fp, fn : int
        Matched pairs, unmatched predicted objects, unmatched true objects.
    precision, recall, f1 : float
        ``TP / (TP + FP)``, ``TP / (TP + FN)``, ``2 TP / (2 TP + FP + FN)``.
    accuracy : float
        ``TP / (TP + FP + FN)``, the DSB2018 "average precision" at this threshold.
    mean_matched_iou : float
        Mean IoU of the matched pairs.
    n_true, n_pred : int
        Objects in the truth and in the prediction.

    Notes
    -----
    As in ``stardist.matching``, every ratio is 0.0 when there is no true positive, including
    when both images are empty.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    mean_matched_iou: float
    n_true: int
    n_pred: int


@dataclass(frozen=True)
class AveragePrecision:
    """DSB2018 average precision over IoU thresholds.

    Attributes
    ----------
    thresholds : (n,) float ndarray
    precision : (n,) float ndarray
        ``TP / (TP + FP + FN)`` at each threshold (:attr:`InstanceMatch.accuracy`).
    mean : float
        Mean of ``precision`` (the mAP).
    """

    thresholds: np.ndarray
    precision: np.ndarray
    mean: float


def _iou_matrix(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(n_true, n_pred) IoU of every true object with every predicted object."""
    table = contingency(truth, prediction)
    # Areas from the full table, so the pixels an object shares with background count.
    area_true, area_pred = table.row_sums(), table.col_sums()
    true_ids, pred_ids = np.flatnonzero(area_true[1:]) + 1, np.flatnonzero(area_pred[1:]) + 1
    iou = np.zeros((true_ids.size, pred_ids.size))
    objects = (table.rows > 0) & (table.cols > 0)
    rows, cols, overlap = table.rows[objects], table.cols[objects], table.counts[objects]
    iou[np.searchsorted(true_ids, rows), np.searchsorted(pred_ids, cols)] = overlap / (
        area_true[rows] + area_pred[cols] - overlap
    )
    return iou


def _ratio(numerator: int, denominator: int) -> float:
    # stardist's convention: no true positive means every ratio is 0, even 0 / 0.
    return numerator / denominator if numerator else 0.0


def _match(iou: np.ndarray, threshold: float) -> InstanceMatch:
    n_true, n_pred = iou.shape
    n_matched = min(n_true, n_pred)
    tp, matched_iou_sum = 0, 0.0
    if n_matched:
        # As stardist: maximise the number of pairs above threshold; the scaled IoU term (< 1/2
        # in total) only breaks ties between assignments with equally many pairs.
        costs = -(iou >= threshold).astype(float) - iou / (2 * n_matched)
        rows, cols = linear_sum_assignment(costs)
        scores = iou[rows, cols]
        matched = scores >= threshold
        tp, matched_iou_sum = int(np.count_nonzero(matched)), float(scores[matched].sum())
    fp, fn = n_pred - tp, n_true - tp
    return InstanceMatch(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=_ratio(tp, tp + fp + fn),
        mean_matched_iou=matched_iou_sum / tp if tp else 0.0,
        n_true=n_true,
        n_pred=n_pred,
    )


def match_instances(truth, prediction, threshold: float = 0.5) -> InstanceMatch:
    """Match predicted objects to true objects one-to-one at an IoU threshold.

    The optimal assignment (``scipy.optimize.linear_sum_assignment``) is the one
    ``stardist.matching.matching(truth, prediction, thresh=threshold)`` computes, so ``tp``,
    ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` and ``accuracy`` agree with it.

    Parameters
    ----------
    truth, prediction : (H, W) int ndarray
        Label images, 0 = background. Ids need not be sequential and may be large.
    threshold : float
        Minimum IoU of a matched pair.

    Returns
    -------
    InstanceMatch
        All ratios are 0.0 without a true positive, also when both images are empty (as
        stardist; an empty image therefore scores 0, not 1).
    """
    truth, prediction = _check_label_pair(truth, prediction)
    return _match(_iou_matrix(truth, prediction), float(threshold))


def average_precision(truth, prediction, thresholds=None) -> AveragePrecision:
    """DSB2018 average precision ``TP / (TP + FP + FN)`` over IoU thresholds, and its mean.

    Parameters
    ----------
    truth, prediction : (H, W) int ndarray
        Label images, 0 = background.
    thresholds : sequence of float, optional
        IoU thresholds; default :data:`DEFAULT_IOU_THRESHOLDS` (0.5, 0.55, ..., 0.95).

    Returns
    -------
    AveragePrecision
        The IoU matrix is computed once and matched at every threshold.
    """
    truth, prediction = _check_label_pair(truth, prediction)
    thresholds = DEFAULT_IOU_THRESHOLDS if thresholds is None else np.atleast_1d(np.asarray(thresholds, float))
    if thresholds.ndim != 1 or thresholds.size == 0 or not np.isfinite(thresholds).all():
        raise ValueError(f"thresholds must be a non-empty 1D sequence of finite floats, got {thresholds!r}")
    iou = _iou_matrix(truth, prediction)
    precision = np.array([_match(iou, t).accuracy for t in thresholds])
    return AveragePrecision(thresholds=thresholds.copy(), precision=precision, mean=float(precision.mean()))


def adapted_rand_error(truth, prediction, ignore_labels=(0,)) -> tuple[float, float, float]:
    """Adapted Rand error, equal to ``skimage.metrics.adapted_rand_error`` (alpha = 0.5).

    Parameters
    ----------
    truth, prediction : (H, W) int ndarray
        Label images of the same shape.
    ignore_labels : sequence of int or None
        Pixels whose *true* label is one of these are left out (default: true background).
        Predicted background is an ordinary segment, as in scikit-image.

    Returns
    -------
    error, precision, recall : float
        ``error = 1 - F`` with ``F = sum n_ij(n_ij-1) / (1/2 sum a_i(a_i-1) + 1/2 sum b_j(b_j-1))``
        (rows ``i``: truth). ``precision`` and ``recall`` are named as scikit-image returns
        them: ``sum n_ij(n_ij-1)`` over the truth's and over the prediction's pairs
        respectively. A zero denominator gives NaN (scikit-image gives NaN with a warning).
    """
    truth, prediction = _check_label_pair(truth, prediction)
    ignored = np.asarray(ignore_labels if ignore_labels is not None else (), dtype=np.int64)
    keep = ~np.isin(truth, ignored) if ignored.size else None
    joint, pairs_truth, pairs_pred = rand_pair_counts(contingency(truth, prediction, keep))
    nan = float("nan")
    fscore = joint / (0.5 * pairs_truth + 0.5 * pairs_pred) if pairs_truth + pairs_pred else nan
    precision = joint / pairs_truth if pairs_truth else nan
    recall = joint / pairs_pred if pairs_pred else nan
    return 1.0 - fscore, precision, recall

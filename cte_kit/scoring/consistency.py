"""Per-image consistency between a clean prediction and perturbed ones (paper, section 2.3).

Three measures, each 1 for a perfectly stable model, computed only inside the union ``M`` of
the clean and the perturbed predicted foregrounds (microscopy images are mostly background,
which every model trivially keeps):

* ``hard`` - :func:`hard_consistency`: 1 - normalised Hamming distance of the binarised
  predictions inside ``M``, which equals their IoU (eq. 5);
* ``soft`` - :func:`soft_consistency`: the Effective Invariance ``sqrt(q(u) q(v))`` of the
  agreed class, 0 where the classes disagree, averaged over ``M`` (eq. 4);
* ``instance`` - :func:`instance_consistency`: 1 - adapted Rand error of the label images,
  inside ``M`` minus a boundary band of the clean labels, background pixels as singletons
  (eq. 6, as the official implementation computes it).

:func:`image_consistency` averages a measure over the ``N_pert`` perturbed predictions of an
image (``CTE_i``, eq. 3) and :func:`summarize` aggregates the images of a target (the kit's
default mean, the paper's median, a trimmed mean or the tie-aware median).

**No ground truth is used anywhere.** The official implementation drops patches whose
*ground-truth* foreground fraction is small before summarising; this kit does not filter
images or patches by labels. It filters on the unperturbed prediction's foreground instead:
an image whose ``M`` is empty (or, for ``instance``, whose clean labels are empty) gets a NaN
score, which :func:`image_consistency` and :func:`summarize` skip and count in ``n_empty``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.ndimage import binary_dilation, generate_binary_structure

from .metrics import (check_label_image, check_probability, check_threshold, contingency, mask_overlap, rand_pair_counts)
from ..types import Prediction

__all__ = [
    "BLIND_SPOTS",
    "CONSISTENCY_KINDS",
    "STATISTICS",
    "DEFAULT_STATISTIC",
    "PAPER_STATISTIC",
    "CTESummary",
    "foreground_union",
    "hard_consistency",
    "soft_consistency",
    "boundary_band",
    "instance_consistency",
    "pair_consistency",
    "prediction_foreground",
    "image_consistency",
    "nan_statistic",
    "summarize",
]

CONSISTENCY_KINDS = ("hard", "soft", "instance")
#: What a consistency cannot see, said beside every model it recommends. Instance consistency
#: compares a model's objects with its own objects under perturbation: a model that merges
#: touching cells the same way every time scores as high as one that separates them. On the held-out
#: usiigaci_cells images a kit U-Net that put three quarters of the cells inside merged objects (mAP
#: 0.065) kept 0.906 of its objects under gamma:0.7, one that separates them (mAP 0.199) 0.898, and no
#: label-free check of the kit told them apart (README, "Ranking cells").
BLIND_SPOTS = {
    "instance": ("instance consistency measures how much of a model's partition into objects survives the "
                 "perturbation, not whether the objects are right: a model that merges touching objects, or cuts "
                 "them along the wrong borders, the same way every time is as consistent as one that separates "
                 "them. Look at the recommended model's objects on a few images (or score a few labelled ones) "
                 "before you follow it"),
}
STATISTICS = ("median", "mean", "trimmed", "tie-aware")
#: The paper aggregates images by the median. The kit's default is the mean: when most images are
#: perfectly stable, the medians of good models tie at exactly 1.0 and the ranking is lost; the
#: mean ranked the usable models of the DSB2018 benchmark better (README, "Choosing a perturbation").
PAPER_STATISTIC = "median"
DEFAULT_STATISTIC = "mean"
#: Weight of the mean in the ``tie-aware`` statistic: small enough to only break ties of the median.
TIE_BREAK_WEIGHT = 1e-6


#: Rows per band in which the semantic consistencies sum over pixels: a large image's masks and
#: temporaries are made one band at a time, never whole.
BAND_ROWS = 512


# -- semantic consistency ---------------------------------------------------------------------
def _check_pair(u, v, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    u = check_probability(u, name="u")
    return u, check_probability(v, name="v", shape=u.shape), check_threshold(threshold)


def _bands(height: int):
    return (slice(start, start + BAND_ROWS) for start in range(0, height, BAND_ROWS))


def foreground_union(u, v, threshold: float = 0.5) -> np.ndarray:
    """The pixels ``M = {u > t} | {v > t}`` over which the semantic consistencies are taken.

    Parameters
    ----------
    u, v : (H, W) float ndarray in [0, 1] or bool ndarray
        Clean and perturbed foreground probabilities (or masks).
    threshold : float

    Returns
    -------
    (H, W) bool ndarray
    """
    u, v, threshold = _check_pair(u, v, threshold)
    return (u > threshold) | (v > threshold)


def hard_consistency(u, v, threshold: float = 0.5) -> float:
    """1 - normalised Hamming distance of the binarised maps inside ``M`` (eq. 5).

    The pixels of ``M`` that flip are the symmetric difference of the foregrounds ``U`` and
    ``V``, so the score is ``|U & V| / |U | V|``, the IoU of the binarised predictions.

    Parameters
    ----------
    u, v : (H, W) float ndarray in [0, 1] or bool ndarray
        Clean and perturbed foreground probabilities (or masks); same shape.
    threshold : float
        Foreground is ``> threshold``.

    Returns
    -------
    float
        In [0, 1]; NaN when neither map has foreground (``M`` empty).
    """
    u, v, threshold = _check_pair(u, v, threshold)
    intersection = union = 0
    for rows in _bands(u.shape[0]):  # integer counts: the same in bands as whole
        both, either = mask_overlap(u[rows] > threshold, v[rows] > threshold)
        intersection, union = intersection + both, union + either
    return intersection / union if union else float("nan")


def soft_consistency(u, v, threshold: float = 0.5) -> float:
    """Mean Effective Invariance over ``M`` (eq. 4).

    Per pixel, ``sqrt(q_c(u) q_c(v))`` for the class ``c`` both maps agree on, with
    ``q_1(x) = x`` and ``q_0(x) = 1 - x``, and 0 where the classes disagree. Inside ``M`` the
    two maps cannot agree on background, so only agreed foreground pixels contribute
    ``sqrt(u v)``.

    Parameters
    ----------
    u, v : (H, W) float ndarray in [0, 1] or bool ndarray
        Clean and perturbed foreground probabilities; same shape.
    threshold : float

    Returns
    -------
    float
        In [0, 1] (at most the hard consistency); NaN when ``M`` is empty.
    """
    u, v, threshold = _check_pair(u, v, threshold)
    total, union = 0.0, 0
    for rows in _bands(u.shape[0]):  # float64 sums of bands: equal to one sum up to rounding
        fg_u, fg_v = u[rows] > threshold, v[rows] > threshold
        both = fg_u & fg_v
        union += np.count_nonzero(fg_u | fg_v)
        total += float(np.sqrt(u[rows][both].astype(np.float64) * v[rows][both].astype(np.float64)).sum())
    return total / union if union else float("nan")


# -- instance consistency ---------------------------------------------------------------------
def boundary_band(labels, width: int = 1) -> np.ndarray:
    """Pixels near a label change: grey dilation != grey erosion, each applied ``width`` times.

    With the cross-shaped (4-connected) footprint, the default of
    ``skimage.morphology.dilation``, and reflected image borders. Covers instance-instance
    and instance-background contours on both sides.

    Parameters
    ----------
    labels : (H, W) int ndarray
    width : int
        Number of dilations/erosions; 0 gives an empty band.

    Returns
    -------
    (H, W) bool ndarray
    """
    return _band(check_label_image(labels), _check_width(width))


def _check_width(width) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 0:
        raise ValueError(f"boundary width must be a non-negative integer, got {width!r}")
    return int(width)


def _band(labels: np.ndarray, width: int) -> np.ndarray:
    band = np.zeros(labels.shape, dtype=bool)
    if width == 0:
        return band
    # Max != min over a neighbourhood containing the pixel means some neighbour differs from
    # it; for width 1 that is a 4-neighbour, found by comparing shifted copies (no filter).
    differs = labels[1:, :] != labels[:-1, :]
    band[1:, :] |= differs
    band[:-1, :] |= differs
    differs = labels[:, 1:] != labels[:, :-1]
    band[:, 1:] |= differs
    band[:, :-1] |= differs
    if width > 1:
        # A differing pixel within L1 distance w lies one step beyond a width-1 band pixel
        # within distance w - 1, so the band grows by binary dilation (borders add nothing).
        band = binary_dilation(band, structure=generate_binary_structure(2, 1), iterations=width - 1)
    return band


def instance_consistency(labels_u, labels_v, boundary: int = 1) -> float:
    """1 - adapted Rand error of clean and perturbed label images, foreground-restricted.

    The pixels compared are ``M = ({L_u > 0} | {L_v > 0})`` minus
    ``boundary_band(L_u, boundary)``. Inside ``M`` every background pixel of either image is
    a segment of its own (a singleton, which pairs with nothing). With the contingency table
    ``n_ij`` of ``L_u[M]`` against ``L_v[M]`` and its row and column sums ``a_i``, ``b_j``::

        F = sum n_ij (n_ij - 1) / (1/2 sum a_i (a_i - 1) + 1/2 sum b_j (b_j - 1))

    the adapted Rand F-score with alpha = 0.5, equal to ``1 - skimage.metrics.
    adapted_rand_error(L_u[M], L_v[M], ignore_labels=None)[0]`` on arrays whose background
    pixels were given fresh ids. Label ids are never cast to a type too narrow for them, so
    large ids cannot wrap around (the official uint16 cast can).

    Parameters
    ----------
    labels_u, labels_v : (H, W) int ndarray
        Clean and perturbed instance labels (0 = background), any non-negative integer dtype.
    boundary : int
        Width of the boundary band of ``L_u`` left out (0: none; 1 as the official code).

    Returns
    -------
    float
        In [0, 1]. NaN if ``L_u`` has no foreground or ``M`` is empty (as the official code).
        1.0 when no two pixels of ``M`` share a segment in either image (the denominator is
        0): both partitions are then all singletons, i.e. identical.
    """
    labels_u = check_label_image(labels_u, name="labels_u")
    labels_v = check_label_image(labels_v, name="labels_v", shape=labels_u.shape)
    boundary = _check_width(boundary)
    if labels_u.max(initial=0) == 0:
        return float("nan")
    # Pixels outside M are counted too, but a pixel that is background in both images is a
    # singleton on both sides and adds to no pair count: only the band must be left out.
    table = contingency(labels_u, labels_v, keep=~_band(labels_u, boundary) if boundary else None)
    if not ((table.rows > 0) | (table.cols > 0)).any():  # M is empty
        return float("nan")
    joint, pairs_u, pairs_v = rand_pair_counts(table, singleton_background=True)
    denominator = 0.5 * pairs_u + 0.5 * pairs_v
    return joint / denominator if denominator else 1.0


# -- predictions ------------------------------------------------------------------------------
def _field(prediction: Prediction, field: str, kind: str, role: str) -> np.ndarray:
    value = getattr(prediction, field)
    if value is None:
        advice = {
            "probability": "this model gives only instance labels; use --consistency instance or hard",
            "labels": "this model gives only probability maps; use --consistency hard or soft",
        }[field]
        raise ValueError(f"{kind} consistency needs the {role} prediction's {field}: {advice}")
    return value


def prediction_foreground(prediction: Prediction) -> np.ndarray:
    """The instance labels' foreground as a bool mask if there are labels, else the probability map.

    Binarised at a model's threshold (``> threshold``) it is the foreground that hard
    consistency compares, F1 and IoU score and the guards judge. The labels come first so that
    every adapter means the same thing by foreground: StarDist's object probability is high only
    near object centres (its masks are the star-convex polygons), and Cellpose's masks are what
    its flows and size filter keep of the cell-probability map.
    """
    if prediction.labels is not None:
        return check_label_image(prediction.labels) > 0
    return prediction.probability


def pair_consistency(
    clean: Prediction, perturbed: Prediction, kind: str, threshold: float = 0.5, boundary: int = 1
) -> float:
    """Consistency of one perturbed prediction with the clean one.

    Parameters
    ----------
    clean, perturbed : Prediction
    kind : {'hard', 'soft', 'instance'}
        ``hard`` uses the labels' foreground (``labels > 0``), or the probability map of a
        prediction without labels (:func:`prediction_foreground`); ``soft`` needs probability
        maps; ``instance`` needs labels.
    threshold : float
        Foreground threshold of the probability maps (hard, soft).
    boundary : int
        Boundary band width (instance).

    Returns
    -------
    float
        NaN when the comparison is empty (see the measures).

    Raises
    ------
    ValueError
        For an unknown kind, or a prediction lacking the field the kind needs.
    """
    if kind == "hard":
        return hard_consistency(prediction_foreground(clean), prediction_foreground(perturbed), threshold)
    if kind == "soft":
        u = _field(clean, "probability", kind, "clean")
        return soft_consistency(u, _field(perturbed, "probability", kind, "perturbed"), threshold)
    if kind == "instance":
        labels_u = _field(clean, "labels", kind, "clean")
        return instance_consistency(labels_u, _field(perturbed, "labels", kind, "perturbed"), boundary)
    raise ValueError(f"unknown consistency {kind!r}; choose from {CONSISTENCY_KINDS}")


def image_consistency(
    clean: Prediction,
    perturbed: Sequence[Prediction],
    kind: str,
    threshold: float = 0.5,
    boundary: int = 1,
) -> float:
    """``CTE_i``: the mean consistency of the ``N_pert`` perturbed predictions of one image (eq. 3).

    Parameters
    ----------
    clean : Prediction
    perturbed : sequence of Prediction
        At least one.
    kind, threshold, boundary
        As :func:`pair_consistency`.

    Returns
    -------
    float
        Mean over the perturbed predictions whose score is defined; NaN only if none is.
    """
    if len(perturbed) == 0:
        raise ValueError("image_consistency needs at least one perturbed prediction")
    scores = np.array([pair_consistency(clean, p, kind, threshold, boundary) for p in perturbed])
    return float(nan_statistic(scores, "mean"))


# -- aggregation over images ------------------------------------------------------------------
def nan_statistic(values, statistic: str = "median", trim: float = 0.1) -> np.ndarray | float:
    """Median, mean, trimmed mean or tie-aware median along the last axis, ignoring NaN, without warnings.

    Parameters
    ----------
    values : float ndarray, shape (..., n)
    statistic : {'median', 'mean', 'trimmed', 'tie-aware'}
        ``trimmed`` equals ``scipy.stats.trim_mean(finite_values, trim)``: ``int(trim * k)``
        of the ``k`` finite values are cut from each end. ``tie-aware`` is the median minus
        ``TIE_BREAK_WEIGHT`` (1e-6) times ``1 - mean`` (so a score in [0, 1] stays in [0, 1]): it
        orders models like the median, except that
        models whose medians are equal (typically several at exactly 1.0 under a weak
        perturbation) are ordered by their mean.
    trim : float
        Proportion cut from each end, in [0, 0.5).

    Returns
    -------
    float ndarray of shape (...), or float for 1D input
        NaN where a row has no finite value.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose from {STATISTICS}")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must lie in [0, 0.5), got {trim}")
    values = np.sort(np.asarray(values, dtype=np.float64), axis=-1)  # NaN sorts last
    if values.shape[-1] == 0:
        return _scalar_or_array(np.full(values.shape[:-1], np.nan))
    count = np.count_nonzero(~np.isnan(values), axis=-1)
    if statistic == "tie-aware":
        median = nan_statistic(values, "median")
        mean = nan_statistic(values, "mean")
        return _scalar_or_array(np.asarray(median - TIE_BREAK_WEIGHT * (1.0 - np.asarray(mean))))
    if statistic == "median":
        lower = np.take_along_axis(values, np.maximum(count - 1, 0)[..., None] // 2, axis=-1)[..., 0]
        upper = np.take_along_axis(values, np.minimum(count // 2, values.shape[-1] - 1)[..., None], axis=-1)[..., 0]
        result = (lower + upper) / 2
    else:
        cut = np.floor(trim * count).astype(np.int64) if statistic == "trimmed" else np.zeros_like(count)
        position = np.arange(values.shape[-1])
        kept = (position >= cut[..., None]) & (position < (count - cut)[..., None])
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(kept, values, 0.0).sum(axis=-1) / (count - 2 * cut)
    return _scalar_or_array(np.where(count > 0, result, np.nan))


def _scalar_or_array(result: np.ndarray) -> np.ndarray | float:
    return float(result) if result.ndim == 0 else result


@dataclass(frozen=True)
class CTESummary:
    """CTE of one model on one target: per-image scores aggregated over images.

    Attributes
    ----------
    score : float
        The chosen statistic (what models are ranked by).
    median, mean, std : float
        Over the images with a defined score (``std`` with ddof = 0).
    n_images : int
        All images, empty ones included.
    n_empty : int
        Images whose score is NaN (empty foreground union).
    statistic : str
    """

    score: float
    median: float
    mean: float
    std: float
    n_images: int
    n_empty: int
    statistic: str


def summarize(scores, statistic: str = DEFAULT_STATISTIC, trim: float = 0.1) -> CTESummary:
    """Aggregate per-image CTE scores over a target.

    Parameters
    ----------
    scores : (n_images,) float array_like
        ``CTE_i`` of each image, NaN for empty ones.
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}
        The kit's default is the mean (:data:`DEFAULT_STATISTIC`); the paper uses the median,
        robust for small targets but tied at 1.0 for stable models; ``tie-aware`` breaks exact
        ties of the median by the mean (see :func:`nan_statistic`).
    trim : float
        Proportion cut from each end by ``'trimmed'``.

    Returns
    -------
    CTESummary
        All statistics NaN (and ``n_empty == n_images``) when no image has a score.

    Raises
    ------
    ValueError
        For scores that are not 1D, infinite scores, or an unknown statistic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1D (one per image), got shape {scores.shape}")
    if np.isinf(scores).any():
        raise ValueError("scores contain infinite values")
    finite = scores[~np.isnan(scores)]
    return CTESummary(
        score=nan_statistic(scores, statistic, trim),
        median=nan_statistic(scores, "median"),
        mean=nan_statistic(scores, "mean"),
        std=float(finite.std()) if finite.size else float("nan"),
        n_images=int(scores.size),
        n_empty=int(scores.size - finite.size),
        statistic=statistic,
    )

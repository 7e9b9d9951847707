"""Label-free quality control of a chosen model: how far to trust each image and each object it segments.

Ranking says which model to use; quality control says where its segmentation of the target can be
trusted. Everything here is computed from what a run keeps - the chosen model's clean prediction and
per-image consistency, how each of its objects survived the perturbation, and the other models' clean
predictions of the same images - never from labels. :func:`cte_kit.runs.quality.quality` runs it on a
result store; :mod:`cte_kit.evaluation.quality` judges it against labels.

**Per object** ``o`` of the clean prediction (:func:`object_scores`)::

    q_o = s_o * a_o

* ``s_o``, *stability*: the best IoU of ``o`` with an object of the perturbed prediction, averaged over
  the perturbed predictions (draws and settings; the runner computes it,
  :meth:`~cte_kit.runs.units.Setting.objects_key`). 0 for an object that vanishes under the
  perturbation, 1 for one it leaves pixel for pixel, about 1/2 for one split into two halves.
* ``a_o``, *agreement*: the best IoU of ``o`` with an object of each other model's clean prediction,
  averaged over the bank's models that the guards do not flag (:func:`image_evidence`). Without such
  a model ``a_o`` is undefined (NaN) and ``q_o = s_o``.

**Per image** ``i`` (:func:`image_scores`)::

    r_i = c_i * A_i * g_i

* ``c_i``: the model's consistency ``CTE_i`` on the image under the kit's default perturbation (hard
  consistency, :func:`cte_kit.estimators.cte.default_settings`); an image on which the model predicts
  nothing, clean or perturbed, has no ``CTE_i`` and counts 1 (nothing changed).
* ``A_i``: its agreement with the bank on the image, the mean over the same other models of the object
  F1 at IoU 0.5 between their objects and its own (:func:`~cte_kit.scoring.metrics.match_instances`):
  objects the others do not find and objects it misses both lower it. Undefined without other models,
  and then left out of the product.
* ``g_i``: 0 where the guards' checks flag the image's prediction (it floods the image, is one region,
  is empty where the bank finds objects, or has far more or fewer objects than the bank:
  :func:`~cte_kit.estimators.guards.image_flags`), else 1.

Every score lies in [0, 1], higher is more reliable. **What they do not say**: a score measures how
stable a prediction is and how much the bank agrees with it, not whether it is right. Objects that
every model gets wrong the same way (a bank trained on the same data, a systematic merge of touching
nuclei) score high; an object is doubtful, not wrong, when its score is low. Small objects lose more
IoU per pixel, so their scores are noisier. With one model there is no agreement and the scores are
the model's stability alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..scoring.metrics import match_instances
from ..scoring.objects import mean_best_iou, object_properties
from .guards import (Flag, GuardConfig, ImageStatistics, foreground_agreement, image_flags, image_statistics,
                     leave_one_out_consensus, object_agreement)

__all__ = ["ImageEvidence", "image_evidence", "image_scores", "object_scores"]


@dataclass(frozen=True)
class ImageEvidence:
    """What the bank says about one image of the chosen model (no labels).

    Attributes
    ----------
    statistics : ImageStatistics
        The chosen model's prediction: foreground fraction, objects, median object area.
    consensus_fraction, consensus_objects : float
        Median foreground fraction and object count of the other models on the image (NaN without them).
    n_others : int
        Other models compared with.
    agreement : float
        ``A_i``: mean object F1 at IoU 0.5 against each other model (NaN without them).
    consensus_iou, consensus_f1 : float
        Foreground IoU and object F1 at IoU 0.5 against the other models' strict majority vote (the
        guards' leave-one-out consensus, :func:`~cte_kit.estimators.guards.leave_one_out_consensus`).
    ids : (n,) int64 ndarray
        The chosen model's object ids.
    object_agreement : (n,) float64 ndarray
        ``a_o`` of each object (NaN without other models).
    flags : tuple of Flag
        The guards' checks on this image (:func:`~cte_kit.estimators.guards.image_flags`).
    """

    statistics: ImageStatistics
    consensus_fraction: float
    consensus_objects: float
    n_others: int
    agreement: float
    consensus_iou: float
    consensus_f1: float
    ids: np.ndarray
    object_agreement: np.ndarray
    flags: tuple[Flag, ...]


def image_evidence(foreground: np.ndarray, labels: np.ndarray, others: Sequence[tuple[np.ndarray, np.ndarray]],
                   config: GuardConfig = GuardConfig()) -> ImageEvidence:
    """Compare the chosen model's clean prediction of one image with the other models' predictions of it.

    Parameters
    ----------
    foreground : (H, W) bool ndarray
        The chosen model's foreground (at its threshold).
    labels : (H, W) int ndarray
        Its instance labels (0 = background).
    others : sequence of ((H, W) bool, (H, W) int) pairs
        The other models' foregrounds and labels of the same image (those the guards do not flag);
        may be empty.
    config : GuardConfig
        Thresholds of the per-image flags.

    Returns
    -------
    ImageEvidence
    """
    statistics = image_statistics(foreground, labels)
    if not others:
        ids = object_properties(labels).ids
        nan = float("nan")
        return ImageEvidence(statistics, nan, nan, 0, nan, nan, nan, ids, np.full(ids.size, np.nan),
                             image_flags(statistics, config=config))
    shapes = {np.shape(mask) for pair in others for mask in pair}
    if shapes != {np.shape(foreground)}:
        raise ValueError(f"the other models' predictions have shapes {sorted(shapes)}, the chosen model's "
                         f"{np.shape(foreground)}")
    found = [image_statistics(*pair) for pair in others]
    consensus_fraction = float(np.median([s.foreground_fraction for s in found]))
    consensus_objects = float(np.median([s.n_objects for s in found]))
    masks = np.stack([foreground, *(mask for mask, _ in others)])
    # the strict majority of the others; one other model is its own majority
    reference = leave_one_out_consensus(masks)[0] if len(others) >= 2 else masks[1]
    ids, values = mean_best_iou(labels, [other for _, other in others])
    empty = statistics.n_objects == 0
    pairwise = [1.0 if empty and s.n_objects == 0 else match_instances(other, labels, 0.5).f1
                for (_, other), s in zip(others, found)]
    return ImageEvidence(statistics, consensus_fraction, consensus_objects, len(others), float(np.mean(pairwise)),
                         foreground_agreement(reference, foreground), object_agreement(reference, labels), ids, values,
                         image_flags(statistics, consensus_fraction, consensus_objects, len(others), config))


def object_scores(stability, agreement) -> np.ndarray:
    """``q_o = s_o * a_o``, or ``s_o`` where the agreement is undefined.

    Parameters
    ----------
    stability : (n,) float array_like in [0, 1]
        ``s_o``: each object's mean best IoU with the perturbed predictions' objects.
    agreement : (n,) float array_like in [0, 1], NaN allowed
        ``a_o``: each object's mean best IoU with the other models' objects.

    Returns
    -------
    (n,) float64 ndarray in [0, 1]
    """
    stability, agreement = _unit_interval(stability, "stability"), _unit_interval(agreement, "agreement")
    if stability.shape != agreement.shape:
        raise ValueError(f"{stability.size} stability values but {agreement.size} agreement values")
    if np.isnan(stability).any():
        raise ValueError("every object needs a stability value")
    return np.where(np.isnan(agreement), stability, stability * agreement)


def image_scores(consistency, agreement, flagged) -> np.ndarray:
    """``r_i = c_i * A_i * g_i`` (a NaN consistency counts 1, a NaN agreement is left out).

    Parameters
    ----------
    consistency : (n_images,) float array_like in [0, 1], NaN allowed
        ``c_i``: the model's CTE_i (NaN: nothing predicted, clean or perturbed).
    agreement : (n_images,) float array_like in [0, 1], NaN allowed
        ``A_i``: agreement with the bank (NaN: no other model).
    flagged : (n_images,) bool array_like
        Whether the guards flag the image's prediction (``g_i = 0``).

    Returns
    -------
    (n_images,) float64 ndarray in [0, 1]
    """
    consistency, agreement = _unit_interval(consistency, "consistency"), _unit_interval(agreement, "agreement")
    flagged = np.asarray(flagged, dtype=bool)
    if not consistency.shape == agreement.shape == flagged.shape:
        raise ValueError(f"{consistency.size} consistency values, {agreement.size} agreement values and "
                         f"{flagged.size} flags: give one of each per image")
    score = np.nan_to_num(consistency, nan=1.0) * np.nan_to_num(agreement, nan=1.0)
    return np.where(flagged, 0.0, score)


def _unit_interval(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one value per item (1D), got shape {values.shape}")
    finite = values[~np.isnan(values)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"{name} values must lie in [0, 1], got [{finite.min():g}, {finite.max():g}]")
    return values

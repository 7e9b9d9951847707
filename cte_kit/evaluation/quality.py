"""Judging label-free quality control against labels: are the low scores where the segmentation is wrong?

* **per object**: an object of the chosen model is *right* when it matches a true object at IoU >= 0.5
  (:func:`object_matches`); a score tells right from wrong objects as well as its :func:`auroc` says
  (1: every right object scores above every wrong one, 0.5: no better than chance);
* **per image**: the Spearman correlation of the per-image score with the image's true F1 (Dice of the
  foreground) and AP (mean DSB2018 average precision over IoU 0.5 ... 0.95).

:func:`judge_quality` does both for a :class:`~cte_kit.runs.quality.QualityControl` result: the true
performance comes from the stored clean predictions (:func:`~cte_kit.evaluation.performance.fill_performance`),
so nothing is predicted again. The labels are read here only; the scores judged were computed without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats

from ..data.images import check_labels
from ..runs.quality import QualityControl
from ..runs.store import ResultStore
from ..scoring.objects import best_iou
from ..scoring.ranking import correlations
from .performance import fill_performance

__all__ = ["MATCH_IOU", "QualityJudgement", "auroc", "judge_quality", "object_matches"]

#: An object is right when a true object overlaps it with at least this IoU (the DSB2018 / StarDist convention).
MATCH_IOU = 0.5


def object_matches(truth, labels, threshold: float = MATCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Whether each predicted object matches a true object at IoU >= ``threshold``.

    Parameters
    ----------
    truth : (H, W) int ndarray
        True instance labels (0 = background).
    labels : (H, W) int ndarray
        Predicted instance labels.
    threshold : float
        At 0.5 or above a predicted object can match at most one true object and the reverse, so this is
        the one-to-one matching of :func:`~cte_kit.scoring.metrics.match_instances` (up to exact ties).

    Returns
    -------
    ids : (n,) int64 ndarray
        The predicted object ids, increasing.
    matched : (n,) bool ndarray
    """
    ids, best = best_iou(labels, truth)
    return ids, best >= threshold


def auroc(positive, score) -> float:
    """Area under the ROC curve of ``score`` for telling ``positive`` items from the others (truth first).

    The Mann-Whitney form: the probability that a random positive item scores above a random
    negative one, ties counted one half; equal to ``sklearn.metrics.roc_auc_score(positive, score)``.

    Parameters
    ----------
    positive : (n,) bool array_like
    score : (n,) float array_like
        Higher = more likely positive. Items with a NaN score are left out.

    Returns
    -------
    float
        NaN when the items left are all positive or all negative.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if positive.shape != score.shape or positive.ndim != 1:
        raise ValueError(f"auroc needs one label per score, got shapes {positive.shape} and {score.shape}")
    defined = ~np.isnan(score)
    positive, score = positive[defined], score[defined]
    n_positive, n_negative = int(positive.sum()), int((~positive).sum())
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = stats.rankdata(score, method="average")
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


@dataclass(frozen=True)
class QualityJudgement:
    """How well quality control's scores tell bad from good, judged with labels.

    Attributes
    ----------
    images : dict of str -> list
        Per image (target order): ``image``, ``score``, ``consistency``, ``agreement``, and the true
        ``f1``, ``map`` and ``ap50``.
    objects : dict of str -> list
        Per object: ``image``, ``object``, ``score``, ``stability``, ``agreement``, ``area`` and ``matched``
        (at IoU >= :data:`MATCH_IOU`).
    spearman_f1, spearman_map : float
        Spearman rho of the per-image score with the true F1 and AP over images (NaN for fewer than
        3 images or a constant column).
    spearman_f1_p, spearman_map_p : float
        Their permutation p-values (:func:`~cte_kit.scoring.ranking.correlations`).
    auroc : float
        AUROC of the object score for matched vs unmatched objects.
    auroc_stability, auroc_agreement : float
        The same for the two parts of the object score alone.
    n_images, n_objects, n_matched : int
    """

    images: dict
    objects: dict
    spearman_f1: float
    spearman_map: float
    spearman_f1_p: float
    spearman_map_p: float
    auroc: float
    auroc_stability: float
    auroc_agreement: float
    n_images: int
    n_objects: int
    n_matched: int

    def summary(self) -> dict:
        """The numbers alone (JSON-ready apart from NaN)."""
        return {key: getattr(self, key) for key in ("spearman_f1", "spearman_f1_p", "spearman_map", "spearman_map_p",
                                                    "auroc", "auroc_stability", "auroc_agreement", "n_images",
                                                    "n_objects", "n_matched")}


def judge_quality(qc: QualityControl, store: ResultStore, labels: Mapping[str, np.ndarray]) -> QualityJudgement:
    """Judge a quality-control result with the target's labels.

    Parameters
    ----------
    qc : QualityControl
        From :func:`cte_kit.runs.quality.quality` on ``store``.
    store : ResultStore
        Holds the chosen model's clean predictions; its performance table is filled here.
    labels : mapping of image name -> (H, W) int ndarray
        Instance labels of the target's images (images without labels are left out).

    Returns
    -------
    QualityJudgement
    """
    images = {image.image: image for image in qc.images if image.image in labels}
    truth = {name: check_labels(labels[name], name=f"labels of {name}") for name in images}
    keys = {name: image.image_key for name, image in images.items()}
    performance = store.performance(fill_performance(store, {qc.model: qc.model_key}, keys, truth))
    columns = {c: [] for c in ("image", "score", "consistency", "agreement", "f1", "map", "ap50")}
    for name, image in images.items():
        found = performance[qc.model_key, image.image_key]
        for column, value in (("image", name), ("score", image.score), ("consistency", image.consistency),
                              ("agreement", image.agreement), *((m, found[m]) for m in ("f1", "map", "ap50"))):
            columns[column].append(value)
    objects = {c: [] for c in ("image", "object", "score", "stability", "agreement", "area", "matched")}
    for found in qc.objects:
        if found.image not in images:
            continue
        ids, matched = object_matches(truth[found.image], store.clean_prediction(qc.model_key, keys[found.image])[1])
        if not np.array_equal(ids, found.ids):
            raise ValueError(f"the objects of {found.image} in the result differ from the stored clean labels")
        objects["image"] += [found.image] * ids.size
        objects["object"] += ids.tolist()
        objects["matched"] += matched.tolist()
        for column in ("score", "stability", "agreement", "area"):
            objects[column] += getattr(found, column).tolist()
    score = np.asarray(columns["score"], dtype=float)
    matched = np.asarray(objects["matched"], dtype=bool)
    f1, ap = (correlations(score, np.asarray(columns[m], dtype=float)) for m in ("f1", "map"))
    return QualityJudgement(
        columns, objects, f1.spearman, ap.spearman, f1.spearman_p, ap.spearman_p,
        *(auroc(matched, np.asarray(objects[c], dtype=float)) for c in ("score", "stability", "agreement")),
        len(images), int(matched.size), int(matched.sum()))

"""The consistency-based transferability estimator for one model on one target.

``estimate(model, images, perturbation)`` predicts each image clean and perturbed, computes
the per-image consistency CTE_i (eq. 3 of the paper; images whose foreground union is empty
give NaN) and aggregates it over images (median by default). ``performance`` scores clean
predictions against labels, which the estimator never sees: it exists to judge the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .consistency import (CONSISTENCY_KINDS, DEFAULT_STATISTIC, PAPER_STATISTIC, CTESummary, image_consistency,
                          summarize)
from .metrics import average_precision, f1_score, iou_score, match_instances
from .models.base import Prediction, PredictionPair, SegmentationModel
from .perturb import Perturbation, parse_perturbation

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "DEFAULT_STATISTIC",
    "PAPER_PERTURBATION",
    "PAPER_STATISTIC",
    "PERFORMANCE_METRICS",
    "PERFORMANCE_STATISTIC",
    "ModelEstimate",
    "default_perturbation",
    "default_settings",
    "estimate",
    "pair_scores",
    "performance",
    "performance_metric_for",
]

#: Per-image performance metrics: foreground F1 (Dice) and IoU at the model threshold, mean
#: average precision over IoU 0.5:0.05:0.95 and average precision at IoU 0.5 (DSB2018 definition).
PERFORMANCE_METRICS = ("f1", "iou", "map", "ap50")
#: How a model's true performance is aggregated over the target images in summaries and sweeps
#: (whatever the CTE statistic is): the median, as in the paper. Plots name it on their axes.
PERFORMANCE_STATISTIC = "median"


#: The paper's setting: channel dropout of 20 % at the bottleneck, one draw (with
#: :data:`~cte_kit.consistency.PAPER_STATISTIC`, the median over images).
PAPER_PERTURBATION = "dropout:0.2"

#: The kit's default perturbation of each consistency (with
#: :data:`~cte_kit.consistency.DEFAULT_STATISTIC`, the mean over images, and the label-free guards of
#: :mod:`cte_kit.guards`), chosen on the leave-one-sub-domain-out DSB2018 benchmark
#: (``benchmarks/bench_dsb_ranking.py``; README, "Choosing a perturbation") with a bank that holds the
#: failure modes users meet (other modalities, under-trained models). A gamma change of the input
#: ranked best for every consistency: chosen on three targets, it was the choice for every held-out
#: fourth. The mapping stays per consistency so that a later benchmark can pair them differently.
DEFAULT_PERTURBATIONS = {"hard": "gamma:0.7", "soft": "gamma:0.7", "instance": "gamma:0.7"}


def performance_metric_for(consistency: str) -> str:
    """The true-performance metric a consistency kind is judged against (paper: F1 / mAP)."""
    return "map" if consistency == "instance" else "f1"


@dataclass(frozen=True)
class ModelEstimate:
    """CTE of one model on one target.

    Attributes
    ----------
    model, perturbation, consistency : str
    per_image : (n_images,) float ndarray
        CTE_i; NaN where the foreground union was empty.
    summary : CTESummary
        The aggregated score (``summary.score``) with median, mean and the count of empty images.
    """

    model: str
    perturbation: str
    consistency: str
    per_image: np.ndarray
    summary: CTESummary

    @property
    def score(self) -> float:
        return self.summary.score


def pair_scores(
    pairs: Sequence[PredictionPair], kinds: Sequence[str], threshold: float = 0.5, boundary: int = 1
) -> dict[str, np.ndarray]:
    """CTE_i of each pair for each consistency kind: ``{kind: (n_images,) float ndarray}``."""
    unknown = [kind for kind in kinds if kind not in CONSISTENCY_KINDS]
    if unknown:
        raise ValueError(f"unknown consistency {unknown}; choose from {CONSISTENCY_KINDS}")
    return {
        kind: np.array(
            [image_consistency(pair.clean, pair.perturbed, kind, threshold=threshold, boundary=boundary) for pair in pairs],
            dtype=float,
        )
        for kind in kinds
    }


def performance(predictions: Sequence[Prediction], labels: Sequence[np.ndarray], threshold: float = 0.5) -> dict[str, np.ndarray]:
    """True per-image performance of clean predictions.

    Parameters
    ----------
    predictions : sequence of Prediction
    labels : sequence of (H, W) int arrays
        Instance labels (semantic 0/1 masks give F1 and IoU; their mAP treats each connected
        mask value as one object).
    threshold : float
        Foreground threshold of the probability maps.

    Returns
    -------
    dict of str -> (n_images,) float ndarray
        Keys of :data:`PERFORMANCE_METRICS`. Metrics a prediction cannot give (F1 without a
        probability map uses the binarised labels instead) are always filled; mAP needs
        instance labels and is NaN without them.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} label images")
    scores = {metric: np.full(len(labels), np.nan) for metric in PERFORMANCE_METRICS}
    for index, (prediction, truth) in enumerate(zip(predictions, labels)):
        foreground = prediction.probability if prediction.probability is not None else (prediction.labels > 0).astype(np.float32)
        scores["f1"][index] = f1_score(foreground, truth, threshold)
        scores["iou"][index] = iou_score(foreground, truth, threshold)
        if prediction.labels is not None:
            scores["map"][index] = average_precision(truth, prediction.labels).mean
            scores["ap50"][index] = match_instances(truth, prediction.labels, 0.5).accuracy
    return scores


def default_settings(consistencies: Sequence[str]) -> dict[str, list[str]]:
    """The kit's default pairing: ``{perturbation label: [consistencies scored under it]}``.

    Examples
    --------
    >>> default_settings(["hard", "instance"])
    {'gamma:0.7': ['hard', 'instance']}
    """
    settings: dict[str, list[str]] = {}
    for consistency in dict.fromkeys(consistencies):
        settings.setdefault(default_perturbation(consistency).label, []).append(consistency)
    return settings


def default_perturbation(consistency: str) -> Perturbation:
    """The kit's default perturbation for a consistency kind (:data:`DEFAULT_PERTURBATIONS`)."""
    if consistency not in DEFAULT_PERTURBATIONS:
        raise ValueError(f"unknown consistency {consistency!r}; choose from {CONSISTENCY_KINDS}")
    return parse_perturbation(DEFAULT_PERTURBATIONS[consistency])


def estimate(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    perturbation: Perturbation | None = None,
    consistency: str = "hard",
    n_pert: int = 1,
    seed: int = 0,
    statistic: str = DEFAULT_STATISTIC,
    boundary: int = 1,
) -> ModelEstimate:
    """CTE of ``model`` on ``images`` under one perturbation.

    Parameters
    ----------
    model : SegmentationModel
    images : sequence of (H, W) or (H, W, C) arrays
        The unlabelled target.
    perturbation : InputPerturbation or FeatureDropout, optional
        Default: the kit's default for ``consistency`` (:func:`default_perturbation`).
    consistency : {'hard', 'soft', 'instance'}
    n_pert : int
        Perturbed predictions averaged per image.
    seed : int
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}
        Aggregation over images (the kit's default: the mean; the paper: the median).
    boundary : int
        Width of the boundary band removed by instance consistency.

    Returns
    -------
    ModelEstimate
    """
    perturbation = default_perturbation(consistency) if perturbation is None else perturbation
    pairs = model.predict_pairs(images, perturbation, seed=seed, n_pert=n_pert)
    per_image = pair_scores(pairs, [consistency], threshold=model.threshold, boundary=boundary)[consistency]
    return ModelEstimate(model.name, perturbation.label, consistency, per_image, summarize(per_image, statistic))

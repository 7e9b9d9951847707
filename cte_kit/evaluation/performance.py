"""True performance of clean predictions against the target's labels.

The estimators never see labels: these scores exist to judge a ranking (and, in the runs'
store, fill the performance table when labels arrive, without recomputing any CTE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..data.images import check_labels
from ..runs.runner import rows
from ..runs.store import ResultStore, array_digest
from ..runs.units import Setting
from ..scoring.consistency import nan_statistic, prediction_foreground
from ..scoring.metrics import average_precision, f1_score, iou_score, match_instances
from ..types import Prediction

if TYPE_CHECKING:
    from ..runs.checkpoints import CheckpointChoice

__all__ = ["PERFORMANCE_METRICS", "PERFORMANCE_STATISTIC", "checkpoint_performance", "fill_performance", "labels_key",
           "performance", "performance_metric_for", "scored_rows"]

#: Per-image performance metrics: foreground F1 (Dice) and IoU at the model threshold, mean
#: average precision over IoU 0.5:0.05:0.95 and average precision at IoU 0.5 (DSB2018 definition).
PERFORMANCE_METRICS = ("f1", "iou", "map", "ap50")
#: How a model's true performance is aggregated over the target images in summaries and sweeps
#: (whatever the CTE statistic is): the median, as in the paper. Plots name it on their axes.
PERFORMANCE_STATISTIC = "median"


def performance_metric_for(consistency: str) -> str:
    """The true-performance metric a consistency kind is judged against (paper: F1 / mAP)."""
    return "map" if consistency == "instance" else "f1"


def performance(labels: Sequence[np.ndarray], predictions: Sequence[Prediction], threshold: float = 0.5) -> dict[str, np.ndarray]:
    """True per-image performance of clean predictions.

    Parameters
    ----------
    labels : sequence of (H, W) int arrays
        The truth, first as in every metric of the kit: instance labels (semantic 0/1 masks give
        F1 and IoU; their mAP treats each connected mask value as one object).
    predictions : sequence of Prediction
    threshold : float
        Foreground threshold of the probability map of a prediction without labels.

    Returns
    -------
    dict of str -> (n_images,) float ndarray
        Keys of :data:`PERFORMANCE_METRICS`. F1 and IoU score the foreground of
        :func:`~cte_kit.scoring.consistency.prediction_foreground` (the labels' foreground when
        there are labels, as hard consistency); mAP needs instance labels and is NaN without them.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} label images")
    scores = {metric: np.full(len(labels), np.nan) for metric in PERFORMANCE_METRICS}
    for index, (truth, prediction) in enumerate(zip(labels, predictions)):
        foreground = prediction_foreground(prediction)
        scores["f1"][index] = f1_score(truth, foreground, threshold)
        scores["iou"][index] = iou_score(truth, foreground, threshold)
        if prediction.labels is not None:
            scores["map"][index] = average_precision(truth, prediction.labels).mean
            scores["ap50"][index] = match_instances(truth, prediction.labels, 0.5).accuracy
    return scores


def labels_key(labels: np.ndarray) -> str:
    """A digest of one label image: performance computed from other labels is other performance."""
    return array_digest(labels)


def fill_performance(store: ResultStore, models: Mapping[str, str], images: Mapping[str, str],
                     labels: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Score the stored clean predictions against labels, into the store's performance table.

    No model runs: the run kept every clean prediction (the foreground it binarised at the model's
    threshold and the instance labels), so labels given after a run cost no recomputation of CTE.
    Pairs already scored against the same labels are skipped.

    Parameters
    ----------
    store : ResultStore
    models, images : mapping of name -> key
        A run's models and a target's images (:class:`cte_kit.runs.runner.RunReport`).
    labels : mapping of image name -> (H, W) int ndarray
        Images without labels are left out.

    Returns
    -------
    dict of str -> str
        Image key -> labels key of every image with labels: what :func:`scored_rows` reads the
        performance of this run by.
    """
    rows, keys = [], {}
    for image, key in images.items():
        if image not in labels:
            continue
        truth = check_labels(labels[image], name=f"labels of {image}")
        truth_key = keys[key] = labels_key(truth)
        for model_key in models.values():
            if store.has_performance(model_key, key, truth_key):
                continue
            kept = store.clean_prediction(model_key, key)
            if kept is None:
                continue
            foreground, instances = kept
            if foreground.shape != truth.shape:
                raise ValueError(f"labels of {image} have shape {truth.shape}, the image {foreground.shape}")
            rows.append((model_key, key, truth_key, {
                "f1": f1_score(truth, foreground), "iou": iou_score(truth, foreground),
                "map": average_precision(truth, instances).mean,
                "ap50": match_instances(truth, instances, 0.5).accuracy}))
    store.put_performance(rows)
    return keys


def scored_rows(store: ResultStore, models: Mapping[str, str], images: Mapping[str, str],
                settings: Sequence[Setting] | None = None, labels: Mapping[str, str] | None = None) -> list[dict]:
    """Stored CTE rows (:func:`cte_kit.runs.runner.rows`) with the true performance of each clean prediction.

    Parameters
    ----------
    store : ResultStore
    models, images : mapping of name -> key
        A run's models and a target's images.
    settings : sequence of Setting, optional
    labels : mapping of image key -> labels key, optional
        The labels given with this run (:func:`fill_performance`); performance that the store holds
        from other labels is not reported. None: no performance.

    Returns
    -------
    list of dict
        ``model``, ``image``, ``perturbation``, ``consistency``, ``seed``, ``n_pert``, ``cte`` (NaN: empty
        foreground) and the :data:`PERFORMANCE_METRICS` (NaN where the run has no labels for the image).
    """
    truth = store.performance(labels or {})
    missing = dict.fromkeys(PERFORMANCE_METRICS, float("nan"))
    found = rows(store, models, images, settings)
    for row in found:
        row.update(truth.get((row.pop("model_key"), row.pop("image_key")), missing))
    return found


def checkpoint_performance(store: ResultStore, choice: "CheckpointChoice", labels: Mapping[str, np.ndarray],
                           statistic: str = PERFORMANCE_STATISTIC) -> dict[int, dict[str, float]]:
    """True performance of every checkpoint an adaptation's choice ranked, to judge the choice.

    The checkpoints' clean predictions are already in the store (the ranking kept them), so this
    only scores them against the labels (:func:`fill_performance`), after the choice was made.

    Parameters
    ----------
    store : ResultStore
        The store the choice ran on.
    choice : CheckpointChoice
        From :func:`cte_kit.runs.checkpoints.choose_checkpoint`.
    labels : mapping of image name -> (H, W) int ndarray
    statistic : str
        Aggregation over images (default: :data:`PERFORMANCE_STATISTIC`, as every ranking is judged).

    Returns
    -------
    dict of int -> dict of str -> float
        ``{step: {metric: value}}`` for the :data:`PERFORMANCE_METRICS` (NaN where undefined).
    """
    report = choice.report
    (images,) = report.images.values()
    truth = store.performance(fill_performance(store, report.models, images, labels))
    found = {}
    for score in choice.scores:
        key = report.models[score.model]
        values = {metric: [truth.get((key, image), {}).get(metric, np.nan) for image in images.values()]
                  for metric in PERFORMANCE_METRICS}
        found[score.step] = {metric: float(nan_statistic(np.asarray(v, dtype=float), statistic))
                             if np.isfinite(v).any() else float("nan") for metric, v in values.items()}
    return found

"""The two label-free stopping signals of the SelfAdapt paper, and the checkpoint each threshold picks.

Both compare the model being adapted with the model it started from, never with labels:

* :func:`fn_rate` - the fraction of objects found by the initial model that the current model
  no longer finds (eq. 3 of the SelfAdapt paper);
* :func:`embedding_distance` - how far the bottleneck embeddings of the target images moved from
  the initial ones (eq. 4 of the paper), relative to the initial embeddings' norm so that one
  threshold serves networks of different widths.

Both start at 0 and grow as the model drifts; a threshold on either stops before the drift
becomes harmful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..scoring.metrics import match_instances

__all__ = ["fn_rate", "embedding_distance", "StopPoint", "choose_stop"]


def fn_rate(initial: Sequence[np.ndarray], current: Sequence[np.ndarray], iou: float = 0.5) -> float:
    """Fraction of the initial model's objects that the current model lost.

    Parameters
    ----------
    initial : sequence of (H, W) int ndarray
        Instance labels of the initial (pre-adaptation) model, the reference.
    current : sequence of (H, W) int ndarray
        Instance labels of the current model on the same images.
    iou : float
        An initial object counts as found when one current object overlaps it with ``IoU >= iou``
        (one-to-one matching).

    Returns
    -------
    float
        ``FN / (TP + FN)`` pooled over the images; 0.0 when the initial model found nothing.
    """
    if len(initial) != len(current):
        raise ValueError(f"{len(initial)} initial label images but {len(current)} current ones")
    lost = found = 0
    for reference, labels in zip(initial, current):
        match = match_instances(reference, labels, iou)
        lost, found = lost + match.fn, found + match.n_true
    return lost / found if found else 0.0


def embedding_distance(initial: np.ndarray, current: np.ndarray) -> float:
    """Mean Euclidean distance between current and initial embeddings, relative to the initial norm.

    Parameters
    ----------
    initial, current : (N, D) float ndarray
        One embedding per image (the kit uses the bottleneck features averaged over space).

    Returns
    -------
    float
        ``mean_i ||current_i - initial_i|| / mean_i ||initial_i||`` (0 when nothing moved).
    """
    initial, current = np.asarray(initial, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if initial.ndim != 2 or initial.shape != current.shape:
        raise ValueError(f"embeddings must be two (N, D) arrays of one shape, got {initial.shape} and {current.shape}")
    scale = np.linalg.norm(initial, axis=1).mean()
    if not scale > 0:
        raise ValueError("the initial embeddings are all zero; their distance has no scale")
    return float(np.linalg.norm(current - initial, axis=1).mean() / scale)


@dataclass(frozen=True)
class StopPoint:
    """The checkpoint a stopping criterion picks.

    Attributes
    ----------
    criterion : str
    threshold : float
    step : int
        Step of the last evaluation whose signal stayed at or below the threshold (0: the
        initial model).
    crossed : bool
        Whether the signal exceeded the threshold during the run (False: the run ended first).
    """

    criterion: str
    threshold: float
    step: int
    crossed: bool


def choose_stop(steps: Sequence[int], signal: Sequence[float], threshold: float, criterion: str) -> StopPoint:
    """The last step before ``signal`` first exceeds ``threshold``.

    Parameters
    ----------
    steps : sequence of int
        Evaluation steps, increasing; the first is 0 (the initial model, signal 0).
    signal : sequence of float
        The criterion's value at each step.
    threshold : float
    criterion : str
        Name recorded in the result.
    """
    steps, signal = list(steps), np.asarray(signal, dtype=float)
    if len(steps) != len(signal) or not steps:
        raise ValueError(f"{len(steps)} steps for {len(signal)} signal values")
    above = np.flatnonzero(signal > threshold)
    if above.size == 0:
        return StopPoint(criterion, float(threshold), int(steps[-1]), False)
    return StopPoint(criterion, float(threshold), int(steps[max(0, above[0] - 1)]), True)

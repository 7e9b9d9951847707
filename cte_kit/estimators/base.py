"""One protocol for every transferability estimator, and the one place that hands it data.

An estimator declares

* what it needs besides the target images (:attr:`Estimator.needs`: nothing, ``'labels'`` of the
  target, ``'source'`` images and labels of the model's training data);
* what it reads from a model (:attr:`Estimator.reads`: ``'output'`` - works for black boxes -,
  ``'features'`` of a named layer - grey boxes only -, ``'instances'`` - instance labels);
* whether it scores one model at a time or the whole bank at once (:attr:`Estimator.scope`,
  ``'model'`` or ``'bank'`` for consensus estimators);

and returns an :class:`EstimatorResult` with per-image and aggregate scores (higher = better)
under its :attr:`Estimator.key`, which names every parameter that changes the value.

:func:`run_estimator` builds each :class:`EstimatorInput` and gives labels and source data only
to estimators that declare them, so "label-free" holds by construction.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from ..models.base import ModelTraits, NotGreyBoxError, SegmentationModel
from ..types import Prediction

__all__ = [
    "NEEDS",
    "READS",
    "Estimator",
    "EstimatorInput",
    "EstimatorResult",
    "MissingInputError",
    "SourceData",
    "not_applicable",
    "run_estimator",
]

#: What an estimator may need besides the target images.
NEEDS = ("labels", "source")
#: What an estimator may read from a model.
READS = ("output", "features", "instances")


class MissingInputError(ValueError):
    """A label-based estimator was called without the target labels or source data it needs."""


@dataclass(frozen=True)
class SourceData:
    """A model's source (training) images and labels.

    Attributes
    ----------
    images : tuple of (H, W) or (H, W, C) ndarray
    labels : tuple of (H, W) int ndarray
    names : tuple of str
    """

    images: tuple
    labels: tuple
    names: tuple


@dataclass(frozen=True)
class EstimatorInput:
    """What one estimator receives for one model on one target.

    Attributes
    ----------
    images : tuple of (H, W) or (H, W, C) ndarray
        The target images (raw).
    names : tuple of str
        Their names; seeds of any sampling derive from them.
    predictions : tuple of Prediction or None
        The model's clean predictions of ``images`` (computed once and shared by estimators).
    labels : tuple of (H, W) int ndarray or None
        Target labels; only for estimators with ``'labels'`` in :attr:`Estimator.needs`.
    source : SourceData or None
        Only for estimators with ``'source'`` in :attr:`Estimator.needs`.
    """

    images: tuple
    names: tuple
    predictions: tuple | None = None
    labels: tuple | None = None
    source: SourceData | None = None

    def clean(self, model: SegmentationModel) -> tuple:
        """The clean predictions, computed here when the runner did not share them."""
        return self.predictions if self.predictions is not None else tuple(model.predict(self.images, self.names))

    def require(self, what: str, estimator: str):
        """The labels or source data, or a MissingInputError naming what is missing."""
        value = self.labels if what == "labels" else self.source
        if value is None:
            explain = ("target labels (a labels/ folder next to images/)" if what == "labels"
                       else "source images and labels (a `source:` folder in the model's bank entry)")
            raise MissingInputError(f"estimator {estimator!r} needs {explain}, but none were given")
        return value


@dataclass(frozen=True)
class EstimatorResult:
    """The score of one model on one target.

    Attributes
    ----------
    key : str
        The estimator's :attr:`Estimator.key`.
    model : str
    per_image : (n_images,) float64 ndarray
        Per-image scores (higher = better); NaN where an image has none, or everywhere for
        estimators that pool pixels of all images (OTCE, LogME, CCFV, topology).
    score : float
        The aggregate score over the target (higher = better).
    """

    key: str
    model: str
    per_image: np.ndarray
    score: float


def _format_value(value) -> str:
    if isinstance(value, Estimator):
        return value.key
    if isinstance(value, (tuple, list)):
        return "+".join(_format_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Estimator(abc.ABC):
    """Base class of all estimators; subclasses are frozen dataclasses whose fields are their parameters."""

    #: Registry name of the estimator family.
    name: ClassVar[str] = ""
    #: Subset of :data:`NEEDS`.
    needs: ClassVar[frozenset] = frozenset()
    #: One of :data:`READS`.
    reads: ClassVar[str] = "output"
    #: ``'model'`` or ``'bank'``.
    scope: ClassVar[str] = "model"
    #: Whether the estimator reads the shared clean predictions (their cost is added to its own).
    uses_predictions: ClassVar[bool] = True
    #: One line for tables and the notebook: what the estimator measures.
    description: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """The name and every parameter: two estimators with one key give the same values."""
        params = ",".join(f"{f.name}={_format_value(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{self.name}({params})" if params else self.name

    @property
    def label_free(self) -> bool:
        return not self.needs

    def not_applicable(self, model: SegmentationModel | ModelTraits) -> str | None:
        """Why this estimator cannot score ``model`` (None when it can)."""
        return not_applicable(self.reads, model)

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        """Score one model (estimators of scope ``'model'``)."""
        raise NotImplementedError(f"estimator {self.name!r} scores the whole bank at once: call score_bank")

    def score_bank(self, models: Sequence[SegmentationModel], data: Sequence[EstimatorInput]) -> list[EstimatorResult]:
        """Score every model of a bank; ``data[i]`` belongs to ``models[i]``."""
        return [self.score(model, item) for model, item in zip(models, data)]

    def score_kept(self, models: Sequence[str], kept: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]) -> list[EstimatorResult]:
        """Score a bank from its clean foregrounds and instance labels alone (what a run's store keeps).

        Parameters
        ----------
        models : sequence of str
            Model names.
        kept : sequence (one per model) of sequences (one per image) of ((H, W) bool, (H, W) int) pairs
            Each model's clean foreground (at its threshold) and instance labels.

        Raises
        ------
        NotImplementedError
            The estimator needs more than the clean masks (images, features, probabilities).
        """
        raise NotImplementedError(f"estimator {self.name!r} needs more than the stored clean masks")

    def result(self, model: SegmentationModel | str, per_image, score: float | None = None) -> EstimatorResult:
        """An :class:`EstimatorResult` under this key; the aggregate defaults to the mean over images."""
        per_image = np.asarray(per_image, dtype=np.float64)
        if score is None:
            score = float(np.nanmean(per_image)) if np.isfinite(per_image).any() else float("nan")
        return EstimatorResult(self.key, model if isinstance(model, str) else model.name, per_image, float(score))


def not_applicable(reads: str, model: SegmentationModel | ModelTraits) -> str | None:
    """Why a model cannot give what an estimator reads (None when it can)."""
    if reads == "features" and not model.grey_box:
        return f"{model.name} is a black box: no features"
    if reads == "instances" and model.output == "semantic":
        return f"{model.name} predicts no instance labels"
    return None


def run_estimator(
    estimator: Estimator,
    models: Sequence[SegmentationModel],
    images: Sequence[np.ndarray],
    names: Sequence[str],
    predictions: Sequence[Sequence[Prediction]] | None = None,
    labels: Sequence[np.ndarray] | None = None,
    sources: Sequence[SourceData | None] | None = None,
) -> list[EstimatorResult]:
    """Score ``models`` on one target, handing each estimator only what it declares.

    Parameters
    ----------
    estimator : Estimator
    models : sequence of SegmentationModel
    images : sequence of (H, W) or (H, W, C) ndarray
    names : sequence of str
    predictions : sequence (one per model) of sequences of Prediction, optional
        Clean predictions already computed (shared between estimators).
    labels : sequence of (H, W) int ndarray, optional
        Target labels: passed on only if ``'labels'`` is in ``estimator.needs``.
    sources : sequence (one per model) of SourceData or None, optional
        Passed on only if ``'source'`` is in ``estimator.needs``.

    Returns
    -------
    list of EstimatorResult, one per model

    Raises
    ------
    MissingInputError
        The estimator needs labels or source data that were not given (the message names it).
    NotGreyBoxError
        A feature-based estimator was given a black-box model.
    """
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    for model in models:
        reason = estimator.not_applicable(model)
        if reason:
            raise NotGreyBoxError(f"estimator {estimator.name!r} cannot score {reason}")
    give_labels = "labels" in estimator.needs
    give_source = "source" in estimator.needs
    if give_labels and labels is None:
        raise MissingInputError(f"estimator {estimator.name!r} needs target labels, but none were given")
    if give_source and (sources is None or any(source is None for source in sources)):
        missing = [m.name for i, m in enumerate(models) if sources is None or sources[i] is None]
        raise MissingInputError(f"estimator {estimator.name!r} needs source images and labels, missing for {missing}")
    data = [
        EstimatorInput(
            images=tuple(images),
            names=tuple(names),
            predictions=tuple(predictions[i]) if predictions is not None else None,
            labels=tuple(labels) if give_labels else None,
            source=sources[i] if give_source else None,
        )
        for i in range(len(models))
    ]
    if estimator.scope == "bank":
        return estimator.score_bank(models, data)
    return [estimator.score(model, item) for model, item in zip(models, data)]

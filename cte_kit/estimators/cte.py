"""The consistency-based transferability estimator (CTE), and rank aggregation of label-free estimators.

:func:`estimate` predicts each image of a target clean and perturbed, computes the per-image
consistency CTE_i (eq. 3 of the paper; images whose foreground union is empty give NaN) and
aggregates it over images; :func:`pair_scores` is the per-image step the runner calls.
:class:`CTE` wraps it as an estimator like the others (every consistency kind, perturbation,
layer and statistic); :class:`RankAggregate` combines estimators by the Borda count of
:func:`cte_kit.estimators.selection.aggregate_ranks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..models.base import ModelTraits, SegmentationModel
from ..perturb import FeatureDropout, Perturbation, parse_perturbation
from ..scoring.consistency import (CONSISTENCY_KINDS, DEFAULT_STATISTIC, PAPER_STATISTIC, CTESummary,
                                   image_consistency, summarize)
from ..types import Prediction, PredictionPair, image_id
from .selection import aggregate_ranks
from .base import Estimator, EstimatorInput, EstimatorResult, not_applicable
from .tasks import DEFAULT_TASK, TASKS, Task, task_defaults

__all__ = ["CTE", "DEFAULT_PERTURBATIONS", "DEFAULT_STATISTIC", "PAPER_PERTURBATION", "PAPER_STATISTIC",
           "ModelEstimate", "RankAggregate", "default_perturbation", "default_settings", "estimate", "pair_scores"]

#: The paper's setting: channel dropout of 20 % at the bottleneck, one draw (with
#: :data:`~cte_kit.scoring.consistency.PAPER_STATISTIC`, the median over images).
PAPER_PERTURBATION = "dropout:0.2"

#: The kit's default perturbation of each consistency for the default task, nuclei (with
#: :data:`~cte_kit.scoring.consistency.DEFAULT_STATISTIC`, the mean over images, and the label-free guards of
#: :mod:`cte_kit.estimators.guards`), chosen on the leave-one-sub-domain-out DSB2018 benchmark
#: (``benchmarks/bench_dsb_ranking.py``; README, "Choosing a perturbation") with a bank that holds the
#: failure modes users meet (other modalities, under-trained models). A gamma change of the input
#: ranked best for every consistency: chosen on three targets, it was the choice for every held-out
#: fourth. Every task's defaults are in :data:`cte_kit.estimators.tasks.TASKS`.
DEFAULT_PERTURBATIONS = dict(TASKS[DEFAULT_TASK].perturbations)


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


def default_settings(consistencies: Sequence[str] | None = None, task: str | Task | None = None) -> dict[str, list[str]]:
    """The kit's default pairing for a task: ``{perturbation label: [consistencies scored under it]}``.

    The rest of a task's defaults (statistic, guards) come with it:
    ``cte_kit.estimators.tasks.task_defaults(task)`` is the one place they are read from.

    Parameters
    ----------
    consistencies : sequence of {'hard', 'soft', 'instance'}, optional
        Default: the task's own (``Task.consistencies``: instance for cells, hard otherwise).
    task : str or Task, optional
        ``'nuclei'`` (the default), ``'mitochondria'`` or ``'cells'`` (:data:`~cte_kit.estimators.tasks.TASKS`).

    Examples
    --------
    >>> default_settings(["hard", "instance"])
    {'gamma:0.7': ['hard', 'instance']}
    >>> default_settings(task="cells")
    {'gamma:0.7': ['instance']}
    """
    return task_defaults(task).settings(consistencies)


def default_perturbation(consistency: str, task: str | Task | None = None) -> Perturbation:
    """The kit's default perturbation for a consistency kind and task (:func:`default_settings`)."""
    perturbations = task_defaults(task).perturbations
    if consistency not in perturbations:
        raise ValueError(f"unknown consistency {consistency!r}; choose from {CONSISTENCY_KINDS}")
    return parse_perturbation(perturbations[consistency])


def estimate(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    perturbation: Perturbation | None = None,
    consistency: str = "hard",
    n_pert: int = 1,
    seed: int = 0,
    statistic: str = DEFAULT_STATISTIC,
    boundary: int = 1,
    names: Sequence[str] | None = None,
    clean: Sequence[Prediction] | None = None,
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
    names : sequence of str, optional
        The images' names: they seed each image's perturbation, as in a run (default: the pixels).
    clean : sequence of Prediction, optional
        The images' clean predictions, when the caller has them: only the perturbed passes run.

    Returns
    -------
    ModelEstimate
    """
    perturbation = default_perturbation(consistency) if perturbation is None else perturbation
    ids = [image_id(name) for name in names] if names is not None else None
    pairs = model.predict_pairs(images, perturbation, seed=seed, n_pert=n_pert, image_ids=ids, names=names, clean=clean)
    per_image = pair_scores(pairs, [consistency], threshold=model.threshold, boundary=boundary)[consistency]
    return ModelEstimate(model.name, perturbation.label, consistency, per_image, summarize(per_image, statistic))


@dataclass(frozen=True)
class CTE(Estimator):
    """Consistency-based transferability estimation (Talks & Kreshuk).

    Parameters
    ----------
    consistency : {'hard', 'soft', 'instance'}
    perturbation : str
        A perturbation label (``'dropout:0.2'``, ``'dropout:0.1@sym1'``, ``'gamma:0.7'``);
        ``'default'`` is the kit's default for the consistency and the default task
        (:meth:`for_task` takes another task's).
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}
    n_pert : int
    seed : int
    """

    consistency: str = "hard"
    perturbation: str = "default"
    statistic: str = DEFAULT_STATISTIC
    n_pert: int = 1
    seed: int = 0
    name = "cte"
    description = "consistency of the prediction under a perturbation (label-free)"

    @classmethod
    def for_task(cls, consistency: str = "hard", task: str | Task | None = None, **parameters) -> "CTE":
        """CTE with a task's default perturbation and statistic (:func:`~cte_kit.estimators.tasks.task_defaults`)."""
        defaults = task_defaults(task)
        parameters.setdefault("statistic", defaults.statistic)
        return cls(consistency, default_perturbation(consistency, defaults).label, **parameters)

    def __post_init__(self):
        if self.consistency not in CONSISTENCY_KINDS:
            raise ValueError(f"unknown consistency {self.consistency!r}; choose from {CONSISTENCY_KINDS}")
        if self.perturbation == "default":
            object.__setattr__(self, "perturbation", default_perturbation(self.consistency).label)
        parse_perturbation(self.perturbation)  # a bad label fails here, not in the middle of a comparison

    def not_applicable(self, model: SegmentationModel | ModelTraits) -> str | None:
        if isinstance(parse_perturbation(self.perturbation), FeatureDropout) and not model.grey_box:
            return f"{model.name} is a black box: no feature dropout"
        return not_applicable("instances" if self.consistency == "instance" else "output", model)

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        # the shared clean predictions, and seeds from the images' names: the values of a run of the same setting
        result = estimate(model, list(data.images), parse_perturbation(self.perturbation), self.consistency,
                          n_pert=self.n_pert, seed=self.seed, statistic=self.statistic, names=list(data.names),
                          clean=list(data.predictions) if data.predictions is not None else None)
        return self.result(model, result.per_image, result.score)


@dataclass(frozen=True)
class RankAggregate(Estimator):
    """Borda count of several estimators' rankings of the bank (higher = better).

    Per image, the Borda score of each model's per-image values is averaged the same way, so
    the bootstrap over images has something to resample; the aggregate score is the Borda
    count of the component *aggregate* scores.
    """

    components: tuple = ()
    name = "rank_aggregate"
    scope = "bank"
    uses_predictions = False
    description = "Borda count of the component estimators' rankings"

    def __post_init__(self):
        if len(self.components) < 2:
            raise ValueError("a rank aggregate needs at least two component estimators")
        if any(component.needs for component in self.components):
            raise ValueError("combine label-free estimators only: a component needs labels or source data")

    def not_applicable(self, model: SegmentationModel | ModelTraits) -> str | None:
        reasons = [c.not_applicable(model) for c in self.components]
        return next((reason for reason in reasons if reason), None)

    def score_bank(self, models: Sequence[SegmentationModel], data: Sequence[EstimatorInput]) -> list[EstimatorResult]:
        return self.combine([component_results(c, models, data) for c in self.components])

    def combine(self, results: Sequence[Sequence[EstimatorResult]]) -> list[EstimatorResult]:
        """Combine per-component results (``results[c][m]``: component c, model m)."""
        scores = np.array([[r.score for r in component] for component in results])
        per_image = np.array([[r.per_image for r in component] for component in results])  # (c, m, images)
        combined = aggregate_ranks(scores)
        per_image_borda = np.stack(
            [aggregate_ranks(per_image[:, :, i]) if np.isfinite(per_image[:, :, i]).any() else np.full(scores.shape[1], np.nan)
             for i in range(per_image.shape[2])],
            axis=1,
        )
        return [self.result(r.model, row, value) for r, row, value in zip(results[0], per_image_borda, combined)]


def component_results(estimator: Estimator, models, data) -> list[EstimatorResult]:
    """Scores of one estimator for every model, whatever its scope."""
    if estimator.scope == "bank":
        return estimator.score_bank(models, data)
    return [estimator.score(model, item) for model, item in zip(models, data)]

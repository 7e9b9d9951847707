"""CTE as an estimator like the others, and rank aggregation of several label-free estimators.

:class:`CTE` wraps :func:`cte_kit.estimator.estimate` (every consistency kind, perturbation,
layer and statistic); :class:`RankAggregate` combines estimators by the Borda count of
:func:`cte_kit.selection.aggregate_ranks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..consistency import CONSISTENCY_KINDS, DEFAULT_STATISTIC
from ..estimator import default_perturbation, estimate
from ..models.base import SegmentationModel
from ..perturb import FeatureDropout, parse_perturbation
from ..selection import aggregate_ranks
from .base import Estimator, EstimatorInput, EstimatorResult, not_applicable

__all__ = ["CTE", "RankAggregate"]


@dataclass(frozen=True)
class CTE(Estimator):
    """Consistency-based transferability estimation (Talks & Kreshuk).

    Parameters
    ----------
    consistency : {'hard', 'soft', 'instance'}
    perturbation : str
        A perturbation label (``'dropout:0.2'``, ``'dropout:0.1@sym1'``, ``'gamma:0.7'``);
        ``'default'`` is the kit's default for the consistency.
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
    uses_predictions = False
    description = "consistency of the prediction under a perturbation (label-free)"

    def __post_init__(self):
        if self.consistency not in CONSISTENCY_KINDS:
            raise ValueError(f"unknown consistency {self.consistency!r}; choose from {CONSISTENCY_KINDS}")
        if self.perturbation == "default":
            object.__setattr__(self, "perturbation", default_perturbation(self.consistency).label)
        parse_perturbation(self.perturbation)  # a bad label fails here, not in the middle of a comparison

    def not_applicable(self, model: SegmentationModel) -> str | None:
        if isinstance(parse_perturbation(self.perturbation), FeatureDropout) and not model.grey_box:
            return f"{model.name} is a black box: no feature dropout"
        return not_applicable("instances" if self.consistency == "instance" else "output", model)

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        result = estimate(model, list(data.images), parse_perturbation(self.perturbation), self.consistency,
                          n_pert=self.n_pert, seed=self.seed, statistic=self.statistic)
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

    def not_applicable(self, model: SegmentationModel) -> str | None:
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

"""Transferability estimators: CTE, label-free baselines, label-based baselines.

See :mod:`cte_kit.estimators.base` for the protocol (what each estimator needs, reads and
scores), :mod:`.label_free`, :mod:`.label_based` and :mod:`.cte` for the estimators,
:mod:`.registry` for their names, :mod:`.guards` for the label-free validity checks of a bank and
:mod:`.selection` for label-free choices (strength, rank aggregation). Comparing them against
labels is the evaluation floor's job (:func:`cte_kit.evaluation.comparison.compare`).
"""

from .base import Estimator, EstimatorInput, EstimatorResult, MissingInputError, SourceData, run_estimator
from .cte import CTE, RankAggregate
from .registry import COMBINED, ESTIMATORS, parse_estimator

__all__ = ["COMBINED", "CTE", "ESTIMATORS", "Estimator", "EstimatorInput", "EstimatorResult",
           "MissingInputError", "RankAggregate", "SourceData", "parse_estimator", "run_estimator"]

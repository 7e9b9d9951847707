"""Transferability estimators side by side: CTE, label-free baselines, label-based baselines.

See :mod:`cte_kit.estimators.base` for the protocol (what each estimator needs, reads and
scores), :mod:`.label_free`, :mod:`.label_based` and :mod:`.cte` for the estimators, and
:mod:`.registry` for their names.
"""

from .base import Estimator, EstimatorInput, EstimatorResult, MissingInputError, SourceData, run_estimator
from .cte import CTE, RankAggregate
from .label_free import leave_one_out_consensus

__all__ = ["CTE", "Estimator", "EstimatorInput", "EstimatorResult", "MissingInputError", "RankAggregate",
           "SourceData", "leave_one_out_consensus", "run_estimator"]

"""Transferability estimators side by side: CTE, label-free baselines, label-based baselines.

See :mod:`cte_kit.estimators.base` for the protocol (what each estimator needs, reads and
scores), :mod:`.label_free`, :mod:`.label_based` and :mod:`.cte` for the estimators, and
:mod:`.registry` for their names and :mod:`.comparison` for :func:`compare`.
"""

from .base import Estimator, EstimatorInput, EstimatorResult, MissingInputError, SourceData, run_estimator
from .comparison import Comparison, Target, compare, format_comparison, load_target, write_comparison
from .cte import CTE, RankAggregate
from .registry import COMBINED, ESTIMATORS, parse_estimator

__all__ = ["COMBINED", "CTE", "ESTIMATORS", "Comparison", "Estimator", "EstimatorInput", "EstimatorResult",
           "MissingInputError", "RankAggregate", "SourceData", "Target", "compare", "format_comparison",
           "load_target", "parse_estimator", "run_estimator", "write_comparison"]

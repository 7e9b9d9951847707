"""cte_kit: rank pre-trained segmentation models on unlabelled data by consistency under perturbation.

Data flows one way: ``cte_kit.data`` (images) -> ``cte_kit.models`` (adapters, predictions)
-> ``cte_kit.scoring.consistency`` / ``cte_kit.scoring.metrics`` (per-image scores) -> ``cte_kit.scoring.ranking``
-> ``cte_kit.reports.plots``. ``cte_kit.estimators.cte`` runs a bank over a target; ``cte_kit.cli`` is the
command line.
"""

from .types import CTEKitWarning

__all__ = ["CTEKitWarning", "__version__"]

__version__ = "0.1.0"

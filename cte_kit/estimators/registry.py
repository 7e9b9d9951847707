"""Estimators by name, as ``cte-kit compare --estimators`` and :func:`~cte_kit.evaluation.comparison.compare` take them.

Names are those of :data:`ESTIMATORS`; besides them ``cte:<consistency>:<perturbation>[:<statistic>]``
builds any CTE variant (``cte:hard:dropout:0.1@sym1``, ``cte:instance:gamma:0.7:median``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..scoring.consistency import STATISTICS
from .base import Estimator
from .cte import CTE, RankAggregate
from .label_based import CCFV, LEEP, OTCE, LogME, Topology
from .label_free import BankAgreement, Confidence, Dispersion, EffectiveInvariance, Entropy, MaNo, NuNo, TTADisagreement

__all__ = ["ESTIMATORS", "COMBINED", "parse_estimator", "resolve_estimators"]

#: The label-free combination the kit recommends: Borda count of hard CTE (the kit default) and
#: semantic bank agreement, two estimators that fail for different reasons (instability vs. a
#: wrong majority). On the DSB2018 protocol (``benchmarks/bench_estimators.py``, 2026-12-05) it
#: ranks the usable models within noise of hard CTE alone (mean Kendall 0.79 vs 0.81) and the whole
#: bank better (0.47 vs 0.40), but bank agreement alone sorts the whole bank better still (0.55), and
#: on targets where most models fail (histo, brightfield) it is no better than chance. See the
#: README, "Which estimator?".
COMBINED = RankAggregate((CTE("hard"), BankAgreement("semantic")))

#: Every estimator the kit implements, with its default parameters.
ESTIMATORS: dict[str, Estimator] = {
    "cte": CTE("hard"),
    "cte_soft": CTE("soft"),
    "cte_instance": CTE("instance"),
    "cte+agreement": COMBINED,
    "entropy": Entropy(),
    "confidence": Confidence(),
    "ei_all": EffectiveInvariance(),
    "tta": TTADisagreement(),
    "nuno": NuNo(),
    "mano": MaNo(),
    "dispersion": Dispersion(),
    "agreement": BankAgreement("semantic"),
    "agreement_instance": BankAgreement("instance"),
    "leep": LEEP(),
    "logme": LogME(),
    "ccfv": CCFV(),
    "topology": Topology(),
    "otce": OTCE(),
}


def parse_estimator(text: str) -> Estimator:
    """An estimator from its registry name or a ``cte:<consistency>:<perturbation>[:<statistic>]`` label.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones) or a bad CTE label.
    """
    if text in ESTIMATORS:
        return ESTIMATORS[text]
    if text.startswith("cte:"):
        parts = text.split(":")
        if len(parts) < 3:
            raise ValueError(f"write a CTE variant as cte:<consistency>:<perturbation>[:<statistic>], got {text!r}")
        statistic = parts[-1] if parts[-1] in STATISTICS else None
        perturbation = ":".join(parts[2:-1] if statistic else parts[2:])
        return CTE(parts[1], perturbation, **({"statistic": statistic} if statistic else {}))
    raise ValueError(f"unknown estimator {text!r}; known: {', '.join(ESTIMATORS)}, or cte:<consistency>:<perturbation>")


def resolve_estimators(estimators: Sequence[str | Estimator] | Mapping[str, Estimator] | None) -> dict[str, Estimator]:
    """Display name -> estimator, for names, estimator objects or a mapping (None: all of :data:`ESTIMATORS`)."""
    if estimators is None:
        return dict(ESTIMATORS)
    if isinstance(estimators, Mapping):
        return dict(estimators)
    resolved: dict[str, Estimator] = {}
    for item in estimators:
        estimator = parse_estimator(item) if isinstance(item, str) else item
        name = item if isinstance(item, str) else next((n for n, e in ESTIMATORS.items() if e == estimator), estimator.key)
        resolved[name] = estimator
    return resolved

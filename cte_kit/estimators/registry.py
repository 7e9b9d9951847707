"""Estimators by name, as ``cte-kit compare --estimators`` and :func:`~cte_kit.evaluation.comparison.compare` take them.

Names are those of :data:`ESTIMATORS`; besides them ``cte:<consistency>:<perturbation>[:<statistic>]``
builds any CTE variant (``cte:hard:dropout:0.1@sym1``, ``cte:instance:gamma:0.7:median``). The CTE
entries take the default task's settings; :func:`estimators_for_task` gives another task's.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..scoring.consistency import STATISTICS
from .base import Estimator
from .cte import CTE, RankAggregate
from .label_based import CCFV, LEEP, OTCE, LogME, Topology
from .label_free import BankAgreement, Confidence, Dispersion, EffectiveInvariance, Entropy, MaNo, NuNo, TTADisagreement
from .tasks import Task

__all__ = ["ESTIMATORS", "COMBINED", "estimators_for_task", "parse_estimator", "resolve_estimators"]

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


def estimators_for_task(task: str | Task | None = None) -> dict[str, Estimator]:
    """:data:`ESTIMATORS` with the CTE entries (and the combination built on hard CTE) at a task's defaults."""
    hard = CTE.for_task("hard", task)
    return {**ESTIMATORS, "cte": hard, "cte_soft": CTE.for_task("soft", task),
            "cte_instance": CTE.for_task("instance", task),
            "cte+agreement": RankAggregate((hard, BankAgreement("semantic")))}


def parse_estimator(text: str, task: str | Task | None = None) -> Estimator:
    """An estimator from its registry name (at ``task``'s defaults) or a ``cte:<consistency>:<perturbation>[:<statistic>]`` label.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones) or a bad CTE label.
    """
    known = estimators_for_task(task)
    if text in known:
        return known[text]
    if text.startswith("cte:"):
        parts = text.split(":")
        if len(parts) < 3:
            raise ValueError(f"write a CTE variant as cte:<consistency>:<perturbation>[:<statistic>], got {text!r}")
        statistic = parts[-1] if parts[-1] in STATISTICS else None
        perturbation = ":".join(parts[2:-1] if statistic else parts[2:])
        return CTE(parts[1], perturbation, **({"statistic": statistic} if statistic else {}))
    raise ValueError(f"unknown estimator {text!r}; known: {', '.join(ESTIMATORS)}, or cte:<consistency>:<perturbation>")


def resolve_estimators(estimators: Sequence[str | Estimator] | Mapping[str, Estimator] | None,
                       task: str | Task | None = None) -> dict[str, Estimator]:
    """Display name -> estimator, for names (at ``task``'s defaults), estimator objects or a mapping (None: all of
    :func:`estimators_for_task`)."""
    known = estimators_for_task(task)
    if estimators is None:
        return known
    if isinstance(estimators, Mapping):
        return dict(estimators)
    resolved: dict[str, Estimator] = {}
    for item in estimators:
        estimator = parse_estimator(item, task) if isinstance(item, str) else item
        name = item if isinstance(item, str) else next((n for n, e in known.items() if e == estimator), estimator.key)
        resolved[name] = estimator
    return resolved

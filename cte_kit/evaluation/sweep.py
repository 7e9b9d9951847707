"""Rank a whole model bank on one target: the runner, then true performance when labels are given.

:func:`run_sweep` is the short way to the kit's one loop (:func:`cte_kit.runs.runner.run`) for one
target held in memory: it writes every per-image CTE and every clean prediction to the result
store ``out`` (created, or resumed), and, with labels, fills the store's performance table from
the stored predictions. :func:`read_results` gives the rows back, with their true performance,
for :func:`cte_kit.evaluation.summary.summarize_results`; :func:`sweep_guards` runs the label-free
guards on the stored predictions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..estimators.guards import GuardConfig, ModelGuards
from ..models.bank import BankEntry
from ..models.base import SegmentationModel
from ..perturb import Perturbation
from ..runs.runner import RunReport, RunTarget, run, store_guards
from ..runs.store import Failure, ResultStore
from ..runs.units import Setting
from ..types import CTEKitWarning
from .performance import fill_performance, scored_rows

__all__ = ["SweepResult", "read_results", "run_sweep", "sweep_guards"]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did.

    Attributes
    ----------
    path : Path
        The result store.
    report : RunReport
        Keys of the models and images, rows written and skipped, this run's failures.
    incomplete : dict of str -> int
        Models that lack rows on this target (failed images), with the number of missing rows.
    """

    path: Path
    report: RunReport
    incomplete: Mapping[str, int]

    @property
    def n_new_rows(self) -> int:
        return self.report.n_written

    @property
    def n_skipped_rows(self) -> int:
        return self.report.n_skipped

    @property
    def failures(self) -> list[Failure]:
        return self.report.failures


def settings_for(perturbations: Sequence[Perturbation], consistencies: Sequence[str] | Mapping[str, Sequence[str]],
                 seed: int = 0, n_pert: int = 1, boundary: int = 1) -> list[Setting]:
    """One :class:`~cte_kit.runs.units.Setting` per perturbation; ``consistencies`` for every one, or keyed
    by perturbation label (the kit's defaults pair each consistency with its own perturbation)."""
    if not perturbations:
        raise ValueError("give at least one perturbation")
    if isinstance(consistencies, Mapping):
        missing = [p.label for p in perturbations if p.label not in consistencies]
        if missing:
            raise ValueError(f"no consistencies given for perturbation(s) {missing}")
    return [Setting(p, tuple(consistencies[p.label] if isinstance(consistencies, Mapping) else consistencies),
                    seed, n_pert, boundary) for p in perturbations]


def run_sweep(
    bank: Sequence[BankEntry | SegmentationModel],
    images: Sequence[np.ndarray],
    names: Sequence[str],
    out: str | Path | ResultStore,
    perturbations: Sequence[Perturbation],
    consistencies: Sequence[str] | Mapping[str, Sequence[str]] = ("hard",),
    labels: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    n_pert: int = 1,
    boundary: int = 1,
    progress: bool = True,
    backend=None,
    target: str = "target",
) -> SweepResult:
    """Score every model of a bank on a target; resume from what ``out`` holds.

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
    images : sequence of arrays
    names : sequence of str
        One unique name per image (with its pixels, the image's key in the store).
    out : path or ResultStore
        The result store (an SQLite file; created, or resumed).
    perturbations : sequence of InputPerturbation / FeatureDropout
    consistencies : sequence of {'hard', 'soft', 'instance'}, or mapping of perturbation label to such a sequence
    labels : sequence of (H, W) int arrays, optional
        Only used to fill the performance table, after the run, from the stored predictions.
    seed, n_pert, boundary : see :class:`cte_kit.runs.units.Setting`
    progress : bool
    backend : SerialBackend or DaskBackend, optional
    target : str
        The target's name in the report.

    Returns
    -------
    SweepResult
        A :class:`~cte_kit.types.CTEKitWarning` names every model that failed (its traceback is in
        the store and in ``result.failures``).
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    settings = settings_for(perturbations, consistencies, seed, n_pert, boundary)
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    try:
        report = run(bank, RunTarget(target, tuple(images), tuple(names)), settings, store, backend=backend,
                     progress=progress)
        if labels is not None:
            fill_performance(store, report.models, report.images[target], dict(zip(report.images[target], labels)))
        incomplete = {name: n for name, n in report.missing(store, target).items() if n}
    finally:
        if not isinstance(out, ResultStore):
            store.close()
    for model in report.failed_models:
        errors = "; ".join(dict.fromkeys(f.error for f in report.failures if f.model == model))
        warnings.warn(f"Model {model!r} failed: {errors}. Its rows written so far are kept (the traceback is in the "
                      "store); rerun to retry.", CTEKitWarning, stacklevel=2)
    return SweepResult(Path(store.path), report, incomplete)


def read_results(out: str | Path | ResultStore, result: SweepResult | None = None) -> list[dict]:
    """The rows of a result store, with true performance where the store has it.

    Parameters
    ----------
    out : path or ResultStore
    result : SweepResult, optional
        Restrict to this sweep's models, images and settings; default: the latest key of each model
        and image name in the store, every setting.

    Returns
    -------
    list of dict
        ``model``, ``image``, ``perturbation``, ``consistency``, ``seed``, ``n_pert``, ``cte`` (NaN:
        empty foreground) and the :data:`~cte_kit.evaluation.performance.PERFORMANCE_METRICS`
        (NaN without labels).
    """
    if not isinstance(out, ResultStore) and not Path(out).exists():
        return []
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    try:
        if result is not None:
            target = next(iter(result.report.images))
            return scored_rows(store, result.report.models, result.report.images[target], result.report.settings)
        return scored_rows(store, *store.latest())
    finally:
        if not isinstance(out, ResultStore):
            store.close()


def sweep_guards(out: str | Path | ResultStore, models: Sequence[str], images: Sequence[str],
                 config: GuardConfig = GuardConfig()) -> dict[str, ModelGuards]:
    """The label-free guards (:func:`cte_kit.estimators.guards.compute_guards`) from a store's clean predictions
    (the latest key of each model and image name)."""
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    try:
        latest_models, latest_images = store.latest()
        unknown = [m for m in models if m not in latest_models] + [i for i in images if i not in latest_images]
        if unknown:
            raise ValueError(f"{store.path} holds no predictions of {unknown}")
        report = RunReport(models={m: latest_models[m] for m in models},
                           images={"target": {i: latest_images[i] for i in images}})
        return store_guards(store, report, "target", config=config)
    finally:
        if not isinstance(out, ResultStore):
            store.close()

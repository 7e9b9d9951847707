"""Rank a whole model bank on one target: the runner, then true performance when labels are given.

:func:`run_sweep` is the short way to the kit's one loop (:func:`cte_kit.runs.runner.run`) for one
target held in memory: it writes every per-image CTE and every clean prediction to the result
store ``out`` (created, or resumed), and, with labels, fills the store's performance table from
the stored predictions. :func:`read_results` gives the rows back, with their true performance,
for :func:`cte_kit.evaluation.summary.summarize_results`; :func:`sweep_guards` runs the label-free
guards on the stored predictions.

Both read what the sweep they are given computed: its model keys, image keys, settings and
labels (:class:`SweepResult`). A store keeps the rows of every run, and a model or an image name
can stand for several keys there (weights retrained, a threshold edited, an image replaced by
another of the same name); reading by name would report rows of another run as this one's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
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
    target : str
        The target's name in ``report.images``.
    labels : dict of str -> str
        Image key -> labels key of the labels given with this sweep (empty without labels): the
        only labels its true performance is read from.
    """

    path: Path
    report: RunReport
    incomplete: Mapping[str, int]
    target: str = "target"
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def models(self) -> dict[str, str]:
        """Model name -> model key, in bank order."""
        return self.report.models

    @property
    def images(self) -> dict[str, str]:
        """Image name -> image key, in target order."""
        return self.report.images[self.target]

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
        labels_keys = {}
        if labels is not None:
            labels_keys = fill_performance(store, report.models, report.images[target],
                                           dict(zip(report.images[target], labels)))
        incomplete = {name: n for name, n in report.missing(store, target).items() if n}
    finally:
        if not isinstance(out, ResultStore):
            store.close()
    for model in report.failed_models:
        errors = "; ".join(dict.fromkeys(f.error for f in report.failures if f.model == model))
        warnings.warn(f"Model {model!r} failed: {errors}. Its rows written so far are kept (the traceback is in the "
                      "store); rerun to retry.", CTEKitWarning, stacklevel=2)
    return SweepResult(Path(store.path), report, incomplete, target, labels_keys)


def _single_run(store: ResultStore) -> SweepResult:
    """The run a store holds when it holds one key per model name and per image name (and one set of labels)."""
    models, images = store.keys_by_name()
    shared = {name: keys for name, keys in {**models, **images}.items() if len(keys) > 1}
    if shared:
        listed = "; ".join(f"{name!r} ({len(keys)} keys)" for name, keys in shared.items())
        raise ValueError(f"{store.path} holds the rows of several runs: {listed} stand for more than one model or "
                         "image. Pass the SweepResult that run_sweep returned (read_results(result), "
                         "sweep_guards(result)) to read the rows of that run.")
    image_keys = {name: keys[0] for name, keys in images.items()}
    labels = store.labels_keys(list(image_keys.values()))
    several = [key for key, found in labels.items() if len(found) > 1]
    if several:
        raise ValueError(f"{store.path} holds true performance from several label images of {several}; pass the "
                         "SweepResult of the run whose labels you mean")
    report = RunReport(models={name: keys[0] for name, keys in models.items()}, images={"target": image_keys})
    return SweepResult(Path(store.path), report, {}, "target", {key: found[0] for key, found in labels.items()})


def _store_and_run(out, result: SweepResult | None) -> tuple[ResultStore, SweepResult]:
    if isinstance(out, SweepResult):
        out, result = out.path, out
    store = out if isinstance(out, ResultStore) else ResultStore(out)
    try:
        return store, result if result is not None else _single_run(store)
    except Exception:
        if not isinstance(out, ResultStore):
            store.close()
        raise


def read_results(out: SweepResult | str | Path | ResultStore, result: SweepResult | None = None) -> list[dict]:
    """The rows of one sweep, with true performance from its labels.

    Parameters
    ----------
    out : SweepResult, or path or ResultStore
        The sweep (:func:`run_sweep`'s result), or its store.
    result : SweepResult, optional
        With a store: the sweep to read. Without one the store must hold a single run (one key per
        model name and per image name), else a ValueError says so; a missing file gives no rows.

    Returns
    -------
    list of dict
        ``model``, ``image``, ``perturbation``, ``consistency``, ``seed``, ``n_pert``, ``cte`` (NaN:
        empty foreground) and the :data:`~cte_kit.evaluation.performance.PERFORMANCE_METRICS`
        (NaN without labels in that sweep).
    """
    if not isinstance(out, (ResultStore, SweepResult)) and not Path(out).exists():
        return []
    store, run = _store_and_run(out, result)
    try:
        return scored_rows(store, run.models, run.images, run.report.settings or None, run.labels)
    finally:
        if store is not out:
            store.close()


def sweep_guards(out: SweepResult | str | Path | ResultStore, models: Sequence[str] | None = None,
                 images: Sequence[str] | None = None, config: GuardConfig = GuardConfig(),
                 result: SweepResult | None = None) -> dict[str, ModelGuards]:
    """The label-free guards (:func:`cte_kit.estimators.guards.compute_guards`) of one sweep's clean predictions.

    Parameters
    ----------
    out : SweepResult, or path or ResultStore
        As for :func:`read_results`.
    models, images : sequence of str, optional
        Names of the sweep's models and images to judge (default: all of them).
    config : GuardConfig
    result : SweepResult, optional
        With a store: the sweep whose predictions are judged.
    """
    store, run = _store_and_run(out, result)
    try:
        models = list(models) if models is not None else list(run.models)
        images = list(images) if images is not None else list(run.images)
        unknown = [m for m in models if m not in run.models] + [i for i in images if i not in run.images]
        if unknown:
            raise ValueError(f"{store.path} holds no predictions of {unknown} in this run")
        report = RunReport(models={m: run.models[m] for m in models}, images={"target": {i: run.images[i] for i in images}})
        return store_guards(store, report, "target", config=config)
    finally:
        if store is not out:
            store.close()

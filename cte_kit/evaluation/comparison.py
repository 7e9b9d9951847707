"""Every estimator side by side on the same bank and targets.

:func:`compare` scores each (estimator, model, target) through the runner
(:func:`cte_kit.runs.runner.estimate`), judges each estimator's ranking against the models' true
performance (labels enter here and, through the runner, in the label-based estimators that
declare them only), and returns one row per (estimator, target): Kendall / Spearman / Pearson over
all models and over the usable ones, an interval of Kendall (+- 1.96 bootstrap standard errors over
images), what the estimator needed and its cost relative to one forward pass. Results are written to the result
store ``comparison.sqlite`` in the output folder as they are computed, so a rerun skips the work
already done.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ..data.folder import load_folder
from ..estimators.base import Estimator, SourceData
from ..estimators.registry import resolve_estimators
from ..models.bank import BankEntry, read_bank
from ..runs.runner import RunTarget, estimate
from ..runs.store import ResultStore
from ..scoring.ranking import correlations
from .performance import fill_performance
from .summary import regret

__all__ = ["Target", "Comparison", "load_target", "compare", "ROW_COLUMNS"]

#: Columns of the comparison CSV, one row per (estimator, target).
ROW_COLUMNS = (
    "estimator", "target", "kendall", "kendall_low", "kendall_high", "spearman", "pearson", "weighted_kendall",
    "kendall_usable", "spearman_usable", "pearson_usable", "regret", "pick", "n_models", "n_usable", "needs", "reads",
    "scope", "cost", "not_applicable", "key",
)


@dataclass(frozen=True)
class Target:
    """A labelled target: images, their labels (to judge rankings only) and names."""

    name: str
    images: list
    labels: list
    names: list


def _crop(array: np.ndarray, side: int | None) -> np.ndarray:
    if side is None:
        return array
    height, width = array.shape[:2]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return array[top : top + side, left : left + side]


def load_target(folder, max_images: int | None = None, crop: int | None = None, name: str | None = None) -> Target:
    """Read a folder with ``images/`` and ``labels/``; keep a seeded subset and centre crops.

    Parameters
    ----------
    folder : str or Path
    max_images : int, optional
        Keep this many images, drawn with a fixed seed (sorted by name).
    crop : int, optional
        Centre crops of at most ``crop x crop`` pixels.
    name : str, optional
        Default: the folder name (``<parent>/<name>`` for a ``test``/``train`` split folder).
    """
    folder = Path(folder)
    data = load_folder(folder / "images", folder / "labels", progress=False)
    order = np.arange(len(data.names))
    if max_images is not None and len(order) > max_images:
        order = np.sort(np.random.default_rng(0).choice(len(order), max_images, replace=False))
    default = f"{folder.parent.name}/{folder.name}" if folder.name in ("test", "train") else folder.name
    return Target(name or default, [_crop(data.images[i], crop) for i in order],
                  [_crop(data.labels[i], crop) for i in order], [data.names[i] for i in order])


def _needs_label(estimator: Estimator) -> str:
    return "+".join(["images", *sorted(estimator.needs)])


@dataclass
class Comparison:
    """What :func:`compare` found.

    Attributes
    ----------
    rows : list of dict
        One per (estimator, target), keys :data:`ROW_COLUMNS`.
    scores : dict
        ``(estimator, target) -> {model: score}`` (NaN where not applicable).
    truth : dict
        ``target -> {model: mean true F1}``.
    not_applicable : dict
        ``(estimator, target) -> reason`` for estimators that scored no model at all.
    failures : list of Failure
        What raised (a model that cannot load or predict, an estimator's bug), with tracebacks.
    """

    rows: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    not_applicable: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)


def _bank(bank) -> list:
    if isinstance(bank, (str, Path, Mapping)):
        return read_bank(bank)
    return list(bank)


def _source(entry, max_images, crop) -> SourceData | None:
    if not isinstance(entry, BankEntry) or entry.source is None:
        return None
    loaded = load_target(entry.source, max_images, crop)
    return SourceData(tuple(loaded.images), tuple(loaded.labels), tuple(loaded.names))


def _bootstrap_kendall(estimate: float, per_image: np.ndarray, truth: np.ndarray, n_boot: int,
                       seed: int) -> tuple[float, float]:
    """Kendall's tau +- 1.96 bootstrap standard errors over target images (paired resamples), within [-1, 1].

    The interval is centred on the estimate on purpose: resampling images with replacement repeats
    some of them, which ties models and pulls every resampled tau below the estimate, so the
    percentile interval can miss the estimate altogether. The standard error still says how much
    tau moves with the choice of images.
    """
    defined = np.isfinite(per_image).any(axis=1) & np.isfinite(truth).any(axis=1)
    if n_boot < 1 or defined.sum() < 3 or not np.isfinite(estimate):
        return math.nan, math.nan
    x, y = per_image[defined], truth[defined]
    rng = np.random.default_rng(seed)
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            pick = rng.integers(0, x.shape[1], x.shape[1])
            a, b = np.nanmean(x[:, pick], axis=1), np.nanmean(y[:, pick], axis=1)
            keep = np.isfinite(a) & np.isfinite(b)
            if keep.sum() >= 3 and np.ptp(a[keep]) > 0 and np.ptp(b[keep]) > 0:
                values.append(stats.kendalltau(a[keep], b[keep]).statistic)
    if len(values) < 2:
        return math.nan, math.nan
    error = 1.96 * float(np.std(values, ddof=1))
    return max(-1.0, estimate - error), min(1.0, estimate + error)


def compare(
    bank,
    targets: Sequence,
    estimators: Sequence[str | Estimator] | Mapping[str, Estimator] | None = None,
    out: str | Path | None = None,
    max_images: int | None = None,
    crop: int | None = None,
    exclude: Mapping[str, Sequence[str]] | None = None,
    usable: float = 0.5,
    n_boot: int = 200,
    seed: int = 0,
    progress: bool = True,
    backend=None,
    task=None,
) -> Comparison:
    """Score every estimator on every target and judge it against true performance.

    Parameters
    ----------
    bank : path of a bank YAML, or sequence of BankEntry or SegmentationModel
    targets : sequence of folders (with ``images/`` and ``labels/``) or objects with ``name``,
        ``images``, ``labels``, ``names`` (:class:`Target`, :class:`cte_kit.teaching.demo.DemoTarget`)
    estimators : names, Estimator objects or a mapping name -> Estimator, optional
        Default: every estimator of :data:`~cte_kit.estimators.registry.ESTIMATORS`; those that
        cannot score a model (black box, no instances, no ``source:`` in its bank entry) are
        reported as not applicable with the reason.
    out : str or Path, optional
        Folder of the result store ``comparison.sqlite`` (a rerun skips what it holds); default:
        a store in memory.
    max_images, crop : int, optional
        Limit targets (and source folders) to a seeded subset and centre crops.
    exclude : mapping of target name -> model names, optional
        Models left out for a target (the leave-one-source-out protocol).
    usable : float
        True F1 from which a model counts as usable.
    n_boot : int
        Bootstrap replicates of Kendall over images (0: no interval).
    seed : int
    progress : bool
    backend : SerialBackend or DaskBackend, optional
        Where the runner computes (default: this process).
    task : str or Task, optional
        The segmentation problem whose defaults the CTE estimators named ``cte``, ``cte_soft``,
        ``cte_instance`` and ``cte+agreement`` take (:func:`cte_kit.estimators.tasks.task_defaults`;
        default: nuclei).

    Returns
    -------
    Comparison
    """
    chosen = resolve_estimators(estimators, task)
    entries = _bank(bank)
    sources = {e.name: _source(e, max_images, crop) for e in entries} if "source" in _all_needs(chosen) else {}
    comparison = Comparison()
    with ResultStore(Path(out) / "comparison.sqlite" if out is not None else ":memory:") as store:
        for raw_target in targets:
            target = raw_target if hasattr(raw_target, "images") else load_target(raw_target, max_images, crop)
            left_out = set((exclude or {}).get(target.name, ()))
            members = [e for e in entries if e.name not in left_out]
            report = estimate(members, RunTarget(target.name, tuple(target.images), tuple(target.names)),
                              list(chosen.values()), store, labels=target.labels, sources=sources, backend=backend,
                              progress=progress)
            comparison.failures.extend(report.failures)
            labels_keys = fill_performance(store, report.models, report.images, dict(zip(target.names, target.labels)))
            truth_images = _true_f1(store, report.models, report.images, labels_keys)
            names = list(report.models)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a model that failed has no F1 at all
                truth = np.nanmean(truth_images, axis=1)
            comparison.truth[target.name] = dict(zip(names, truth.tolist()))
            failed = {f.model: f"{f.model}: failed ({f.error})" for f in report.failures}
            for label, estimator in chosen.items():
                found = report.results.get(estimator.key, {})
                records = {name: found[name] for name in names if name in found and not found[name].note}
                reasons = {name: found[name].note for name in names if name in found and found[name].note}
                reasons.update({name: failed[name] for name in names if name not in found and name in failed})
                scores = np.array([records[n].score if n in records else np.nan for n in names], dtype=float)
                per_image = np.array([records[n].per_image if n in records else [np.nan] * len(target.names)
                                      for n in names], dtype=float)
                comparison.scores[(label, target.name)] = dict(zip(names, scores.tolist()))
                if not records:
                    comparison.not_applicable[(label, target.name)] = _summarise(reasons)
                comparison.rows.append(_row(label, estimator, target.name, names, scores, per_image, truth, truth_images,
                                            records, reasons, usable, n_boot, seed))
    return comparison


def _true_f1(store: ResultStore, models: Mapping[str, str], images: Mapping[str, str],
             labels: Mapping[str, str]) -> np.ndarray:
    """(models, images) true foreground F1 of the stored clean predictions against the target's labels
    (image key -> labels key; NaN where a model failed)."""
    truth = store.performance(labels)
    return np.array([[truth.get((model, image), {}).get("f1", np.nan) for image in images.values()]
                     for model in models.values()], dtype=float)


def _all_needs(chosen: Mapping[str, Estimator]) -> set:
    return {need for estimator in chosen.values() for need in estimator.needs}


def _row(label, estimator, target, names, scores, per_image, truth, truth_images, records, reasons, usable, n_boot, seed) -> dict:
    everything = correlations(scores, truth, n_resamples=200, seed=seed)
    keep = truth >= usable
    among = correlations(scores[keep], truth[keep], n_resamples=200, seed=seed)
    low, high = _bootstrap_kendall(everything.kendall, per_image, truth_images, n_boot, seed)
    costs = [record.cost for record in records.values()]
    pick = int(np.nanargmax(scores)) if np.isfinite(scores).any() else None
    return {
        "estimator": label, "target": target, "kendall": everything.kendall, "kendall_low": low, "kendall_high": high,
        "spearman": everything.spearman, "pearson": everything.pearson, "weighted_kendall": everything.weighted_kendall,
        "regret": regret(truth, pick), "pick": names[pick] if pick is not None else None,
        "kendall_usable": among.kendall, "spearman_usable": among.spearman, "pearson_usable": among.pearson,
        "n_models": int(np.isfinite(scores).sum()), "n_usable": int((keep & np.isfinite(scores)).sum()),
        "needs": _needs_label(estimator), "reads": estimator.reads, "scope": estimator.scope,
        "cost": float(np.mean(costs)) if costs else math.nan,
        "not_applicable": _summarise(reasons), "key": estimator.key,
    }


def _summarise(reasons: Mapping[str, str]) -> str:
    """Reasons without the model names, each with the number of models it concerns."""
    counts: dict[str, int] = {}
    for model, reason in reasons.items():
        general = reason.replace(f"{model}: ", "").replace(model, "the model")
        counts[general] = counts.get(general, 0) + 1
    return "; ".join(f"{reason} ({n} model{'s' if n > 1 else ''})" for reason, n in counts.items())

"""Every estimator side by side on the same bank and targets.

:func:`compare` scores each (estimator, model, target), judges each estimator's ranking against
the models' true performance (labels enter here and in label-based estimators only), and
returns one row per (estimator, target): Kendall / Spearman / Pearson over all models and over
the usable ones, a bootstrap interval of Kendall over images, what the estimator needed and its
cost relative to one forward pass. Scores are appended to ``estimates.jsonl`` in the output
folder as they are computed, so a rerun skips the work already done.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from ..data.folder import load_folder
from .performance import performance
from ..models.bank import BankEntry, load_model, read_bank
from ..models.base import SegmentationModel
from ..scoring.ranking import correlations
from ..estimators.base import Estimator, EstimatorResult, SourceData, run_estimator
from ..estimators.cte import RankAggregate
from ..estimators.registry import resolve_estimators

__all__ = ["Target", "Comparison", "load_target", "compare", "ROW_COLUMNS"]

#: Columns of the comparison CSV, one row per (estimator, target).
ROW_COLUMNS = (
    "estimator", "target", "kendall", "kendall_low", "kendall_high", "spearman", "pearson", "weighted_kendall",
    "kendall_usable", "spearman_usable", "pearson_usable", "n_models", "n_usable", "needs", "reads", "scope",
    "cost", "not_applicable", "key",
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
    """

    rows: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    not_applicable: dict = field(default_factory=dict)


class _Store:
    """Append-only JSON-lines cache of (target, model, estimator key) results."""

    def __init__(self, path: Path | None):
        self.path = path
        self.records: dict[tuple, dict] = {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash is recomputed
                    continue
                self.records[(record["target"], record["model"], record["key"], record["images"])] = record

    def get(self, target: str, model: str, key: str, images: str) -> dict | None:
        return self.records.get((target, model, key, images))

    def put(self, record: dict) -> None:
        self.records[(record["target"], record["model"], record["key"], record["images"])] = record
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _image_set(names: Sequence[str], images: Sequence[np.ndarray]) -> str:
    """Identifies the target's image subset and crop, so a changed --max-images or --crop recomputes."""
    shapes = "|".join("x".join(map(str, np.shape(image))) for image in images)
    return hashlib.sha256(("\x1f".join(names) + "#" + shapes).encode()).hexdigest()[:16]


def _bank(bank) -> list:
    if isinstance(bank, (str, Path, Mapping)):
        return read_bank(bank)
    return list(bank)


def _source(entry, max_images, crop) -> SourceData | None:
    if not isinstance(entry, BankEntry) or entry.source is None:
        return None
    loaded = load_target(entry.source, max_images, crop)
    return SourceData(tuple(loaded.images), tuple(loaded.labels), tuple(loaded.names))


def _bootstrap_kendall(per_image: np.ndarray, truth: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of Kendall's tau when target images are resampled (paired)."""
    defined = np.isfinite(per_image).any(axis=1) & np.isfinite(truth).any(axis=1)
    if n_boot < 1 or defined.sum() < 3:
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
    if not values:
        return math.nan, math.nan
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


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
        Folder of the cache ``estimates.jsonl`` (a rerun skips what it holds).
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

    Returns
    -------
    Comparison
    """
    chosen = resolve_estimators(estimators)
    store = _Store(Path(out) / "estimates.jsonl" if out is not None else None)
    entries = _bank(bank)
    loaded: dict[str, SegmentationModel] = {}
    sources: dict[str, SourceData | None] = {}
    comparison = Comparison()
    for raw_target in targets:
        target = raw_target if hasattr(raw_target, "images") else load_target(raw_target, max_images, crop)
        left_out = set((exclude or {}).get(target.name, ()))
        members = [e for e in entries if e.name not in left_out]
        models = []
        for entry in members:
            if entry.name not in loaded:
                loaded[entry.name] = entry if isinstance(entry, SegmentationModel) else load_model(entry)
                sources[entry.name] = _source(entry, max_images, crop) if "source" in _all_needs(chosen) else None
            models.append(loaded[entry.name])
        images_id = _image_set(target.names, target.images)
        predictions, forward, truth_images = {}, {}, {}
        for model in tqdm(models, desc=f"{target.name}: forward passes", disable=not progress, leave=False):
            start = time.perf_counter()
            predictions[model.name] = model.predict(target.images, target.names)
            forward[model.name] = time.perf_counter() - start
            truth_images[model.name] = performance(target.labels, predictions[model.name], model.threshold)["f1"]
        truth = np.array([np.nanmean(truth_images[m.name]) for m in models])
        comparison.truth[target.name] = dict(zip([m.name for m in models], truth.tolist()))
        for label, estimator in tqdm(list(chosen.items()), desc=f"{target.name}: estimators", disable=not progress):
            records, reasons = _score(estimator, models, target, predictions, forward, sources, store, images_id)
            scores = np.array([records[m.name]["score"] if m.name in records else np.nan for m in models])
            per_image = np.array([records[m.name]["per_image"] if m.name in records else [np.nan] * len(target.names)
                                  for m in models], dtype=float)
            comparison.scores[(label, target.name)] = dict(zip([m.name for m in models], scores.tolist()))
            if not records:
                comparison.not_applicable[(label, target.name)] = _summarise(reasons)
            comparison.rows.append(_row(label, estimator, target.name, scores, per_image, truth,
                                        np.array([truth_images[m.name] for m in models]), records, reasons,
                                        usable, n_boot, seed))
    return comparison


def _all_needs(chosen: Mapping[str, Estimator]) -> set:
    return {need for estimator in chosen.values() for need in estimator.needs}


def _score(estimator, models, target, predictions, forward, sources, store, images_id):
    """Records ``{model: {score, per_image, cost}}`` of one estimator on one target, and reasons for the others."""
    reasons: dict[str, str] = {}
    for model in models:
        reason = estimator.not_applicable(model)
        if reason is None and "source" in estimator.needs and sources.get(model.name) is None:
            reason = f"{model.name} has no `source:` folder in its bank entry"
        if reason:
            reasons[model.name] = reason
    usable_models = [m for m in models if m.name not in reasons]
    base_id = images_id
    if estimator.scope == "bank":  # a consensus score changes with the bank: the members are part of its cache key
        members = "\x1f".join(sorted(m.name for m in usable_models))
        images_id = f"{images_id}@{hashlib.sha256(members.encode()).hexdigest()[:12]}"
    records = {m.name: store.get(target.name, m.name, estimator.key, images_id) for m in usable_models}
    todo = [m for m in usable_models if records[m.name] is None]
    if todo:
        if isinstance(estimator, RankAggregate):
            parts = [_score(c, usable_models, target, predictions, forward, sources, store, base_id)[0]
                     for c in estimator.components]
            if all(len(p) == len(usable_models) for p in parts):
                combined = estimator.combine([[_as_result(c.key, m.name, p[m.name]) for m in usable_models]
                                              for c, p in zip(estimator.components, parts)])
                for model, result in zip(usable_models, combined):
                    cost = sum(p[model.name]["cost"] for p in parts)
                    records[model.name] = _put(store, target.name, images_id, result, cost)
        else:
            group = usable_models if estimator.scope == "bank" else None
            batches = [group] if group is not None else [[m] for m in todo]
            for batch in batches:
                if estimator.scope == "bank" and len(batch) < 3:
                    reasons.update({m.name: "bank agreement needs at least 3 scorable models" for m in batch})
                    continue
                start = time.perf_counter()
                try:
                    results = run_estimator(estimator, batch, target.images, target.names,
                                            predictions=[predictions[m.name] for m in batch], labels=target.labels,
                                            sources=[sources.get(m.name) for m in batch])
                except (ValueError, TypeError, NotImplementedError) as error:
                    reasons.update({m.name: f"{m.name}: {error}" for m in batch})
                    continue
                seconds = (time.perf_counter() - start) / len(batch)
                for model, result in zip(batch, results):
                    shared = forward[model.name] if estimator.uses_predictions else 0.0
                    cost = (seconds + shared) / max(forward[model.name], 1e-9)
                    records[model.name] = _put(store, target.name, images_id, result, cost)
    return {name: record for name, record in records.items() if record is not None}, reasons


def _as_result(key: str, model: str, record: dict) -> EstimatorResult:
    return EstimatorResult(key, model, np.array(record["per_image"], dtype=float), record["score"])


def _put(store: _Store, target: str, images_id: str, result: EstimatorResult, cost: float) -> dict:
    record = {"target": target, "model": result.model, "key": result.key, "images": images_id,
              "score": None if not math.isfinite(result.score) else result.score,
              "per_image": [None if not math.isfinite(v) else v for v in result.per_image.tolist()],
              "cost": cost}
    store.put(record)
    return store.get(target, result.model, result.key, images_id)


def _row(label, estimator, target, scores, per_image, truth, truth_images, records, reasons, usable, n_boot, seed) -> dict:
    scores = np.array([np.nan if s is None else s for s in scores], dtype=float)
    per_image = np.where(np.equal(per_image, None), np.nan, per_image).astype(float)
    everything = correlations(scores, truth, n_resamples=200, seed=seed)
    keep = truth >= usable
    among = correlations(scores[keep], truth[keep], n_resamples=200, seed=seed)
    low, high = _bootstrap_kendall(per_image, truth_images, n_boot, seed)
    costs = [record["cost"] for record in records.values()]
    return {
        "estimator": label, "target": target, "kendall": everything.kendall, "kendall_low": low, "kendall_high": high,
        "spearman": everything.spearman, "pearson": everything.pearson, "weighted_kendall": everything.weighted_kendall,
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

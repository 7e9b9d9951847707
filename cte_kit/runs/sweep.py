"""Rank a whole model bank on a target, writing results as they are computed.

A sweep visits every (model, perturbation) of the bank, predicts the images that are not yet in
the results file, and appends one CSV row per (model, image, perturbation, consistency). Rows
are flushed to disk after every batch, so a crash loses at most the batch in flight, and a rerun
with the same file resumes where it stopped. A model that fails (missing weights, an image it
cannot process) is reported and skipped; the others go on.

Beside the rows, the clean prediction of every (model, image) is kept in a folder next to the
results file (:func:`predictions_folder`: foreground mask and instance labels, compressed), so
that :func:`sweep_guards` can compare each model with the rest of the bank without predicting
again (:mod:`cte_kit.estimators.guards`).

:func:`cte_kit.evaluation.summary.summarize_results` turns the rows into per-model scores, ranks
and the correlation between CTE and true performance (when labels were given).
"""

from __future__ import annotations

import csv
import io
import math
import os
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from urllib.parse import quote

from ..estimators.cte import pair_scores
from ..estimators.guards import GuardConfig, ModelGuards, compute_guards
from ..evaluation.performance import PERFORMANCE_METRICS, performance
from ..models.bank import BankEntry, load_model
from ..models.base import SegmentationModel
from ..models.instances import connected_components
from ..perturb import Perturbation
from ..scoring.consistency import prediction_foreground
from ..types import CTEKitWarning, Prediction, image_id

__all__ = ["RESULT_COLUMNS", "SweepFailure", "SweepResult", "load_clean_prediction", "predictions_folder", "read_results",
           "run_sweep", "sweep_guards"]

RESULT_COLUMNS = ("model", "image", "perturbation", "consistency", "seed", "n_pert", "cte", *PERFORMANCE_METRICS)
_KEY = ("model", "image", "perturbation", "consistency", "seed", "n_pert")


@dataclass(frozen=True)
class SweepFailure:
    """A model that could not be scored, and why."""

    model: str
    perturbation: str
    error: str


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: the results file, the rows computed now and the failures."""

    path: Path
    n_new_rows: int
    n_skipped_rows: int
    failures: tuple[SweepFailure, ...] = field(default_factory=tuple)


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def read_results(path: str | Path) -> list[dict]:
    """Rows of a results CSV, numbers as floats.

    A last line cut short by a crash is ignored (it is rewritten on resume).

    Raises
    ------
    ValueError
        The file is not a cte_kit results file (different columns).
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    if not text.strip():
        return []
    lines = text.splitlines(keepends=True)
    header = next(csv.reader([lines[0]]))
    if tuple(header) != RESULT_COLUMNS:
        raise ValueError(
            f"{path} is not a cte_kit results file (columns {header}); choose another --out or delete it"
        )
    complete = lines[1:] if text.endswith("\n") else lines[1:-1]
    rows = []
    for values in csv.reader(complete):
        if len(values) != len(RESULT_COLUMNS):
            continue
        row = dict(zip(RESULT_COLUMNS, values))
        for column in ("cte", *PERFORMANCE_METRICS):
            row[column] = float(row[column]) if row[column] != "" else math.nan
        row["seed"], row["n_pert"] = int(row["seed"]), int(row["n_pert"])
        rows.append(row)
    return rows


def _open_for_append(path: Path) -> io.TextIOBase:
    """Open the results file for appending, writing the header or dropping a torn last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        text = path.read_text()
        if not text.endswith("\n"):
            path.write_text(text[: text.rfind("\n") + 1])
        return path.open("a", newline="")
    handle = path.open("w", newline="")
    csv.writer(handle).writerow(RESULT_COLUMNS)
    return handle


def predictions_folder(out: str | Path) -> Path:
    """Where a sweep writing ``out`` keeps its clean predictions: ``<out stem>_predictions/`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_predictions")


def _prediction_path(folder: Path, model: str, image: str) -> Path:
    # names come from users (bank) and file stems: quote them into safe file names
    return folder / quote(model, safe="") / f"{quote(image, safe='')}.npz"


def _save_clean_prediction(folder: Path, model: SegmentationModel, image: str, prediction: Prediction) -> None:
    path = _prediction_path(folder, model.name, image)
    if path.exists():
        return
    foreground = prediction_foreground(prediction) > model.threshold
    labels = prediction.labels if prediction.labels is not None else connected_components(foreground, 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez_compressed(partial, foreground=np.packbits(foreground), shape=np.asarray(foreground.shape),
                        labels=np.asarray(labels, dtype=np.int32))
    os.replace(partial, path)  # atomic: a crash never leaves a half-written prediction behind


def load_clean_prediction(out: str | Path, model: str, image: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The clean prediction a sweep kept: ``((H, W) bool foreground, (H, W) int32 labels)``, or None.

    Raises
    ------
    ValueError
        The stored file is corrupt (delete it and rerun the sweep to predict it again).
    """
    path = _prediction_path(predictions_folder(out), model, image)
    if not path.exists():
        return None
    try:
        with np.load(path) as stored:
            shape = tuple(int(v) for v in stored["shape"])
            foreground = np.unpackbits(stored["foreground"], count=int(np.prod(shape))).reshape(shape).astype(bool)
            return foreground, stored["labels"]
    except Exception as error:
        raise ValueError(f"stored prediction {path} is corrupt ({error}); delete it and rerun") from None


def sweep_guards(out: str | Path, models: Sequence[str], images: Sequence[str],
                 config: GuardConfig = GuardConfig()) -> dict[str, ModelGuards]:
    """The label-free guards (:func:`cte_kit.estimators.guards.compute_guards`) from a sweep's kept predictions."""
    return compute_guards(models, images, lambda model, image: load_clean_prediction(out, model, image), config)


def run_sweep(
    bank: Sequence[BankEntry | SegmentationModel],
    images: Sequence[np.ndarray],
    names: Sequence[str],
    out: str | Path,
    perturbations: Sequence[Perturbation],
    consistencies: Sequence[str] | Mapping[str, Sequence[str]] = ("hard",),
    labels: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    n_pert: int = 1,
    boundary: int = 1,
    progress: bool = True,
    load: Callable[[BankEntry], SegmentationModel] = load_model,
) -> SweepResult:
    """Score every model of a bank on a target and append the rows to ``out``.

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
        Entries are loaded one at a time (only if they still have work), models are used as given.
    images : sequence of arrays
        The target images.
    names : sequence of str
        One unique name per image (the results key, so keep them stable across reruns).
    out : path
        Results CSV; created, or resumed if it exists.
    perturbations : sequence of InputPerturbation / FeatureDropout
    consistencies : sequence of {'hard', 'soft', 'instance'}, or mapping of str to such a sequence
        Scored for every perturbation; or, keyed by perturbation label, for that perturbation
        only (the kit's defaults pair each consistency with its own perturbation).
    labels : sequence of arrays, optional
        Target labels; only used to fill the performance columns.
    seed, n_pert, boundary : see :func:`cte_kit.estimators.cte.estimate`
    progress : bool
    load : callable
        Turns a BankEntry into a model (tests inject failures here).

    Returns
    -------
    SweepResult
    """
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique (they key the results file)")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    if not perturbations:
        raise ValueError("give at least one perturbation")
    if isinstance(consistencies, Mapping):
        missing = [p.label for p in perturbations if p.label not in consistencies]
        if missing:
            raise ValueError(f"no consistencies given for perturbation(s) {missing}")

    def kinds_for(perturbation) -> Sequence[str]:
        return consistencies[perturbation.label] if isinstance(consistencies, Mapping) else consistencies

    path = Path(out)
    folder = predictions_folder(path)
    done = {tuple(str(row[k]) for k in _KEY) for row in read_results(path)}
    positions = {name: index for index, name in enumerate(names)}
    failures: list[SweepFailure] = []
    n_new = n_skipped = 0
    handle = _open_for_append(path)
    writer = csv.writer(handle)
    try:
        for item in tqdm(bank, desc="models", disable=not progress):
            model_name = item.name
            todo = []
            for perturbation in perturbations:
                keys = {(name, kind): (model_name, name, perturbation.label, kind, str(seed), str(n_pert))
                        for name in names for kind in kinds_for(perturbation)}
                n_skipped += sum(key in done for key in keys.values())
                remaining = [name for name in names
                             if any(keys[name, kind] not in done for kind in kinds_for(perturbation))]
                if remaining:
                    todo.append((perturbation, remaining))
            unkept = [name for name in names if not _prediction_path(folder, model_name, name).exists()]
            if not todo and not unkept:
                continue
            try:
                model = item if isinstance(item, SegmentationModel) else load(item)
            except Exception as error:  # a broken entry must not stop the bank
                settings = [p.label for p, _ in todo] or ["clean"]
                failures.extend(SweepFailure(model_name, label, f"could not load: {error}") for label in settings)
                warnings.warn(f"Model {model_name!r} skipped: could not load it ({error}).", CTEKitWarning,
                              stacklevel=2)
                continue
            for perturbation, remaining in todo:
                try:
                    n_new += _score_model(model, perturbation, remaining, images, labels, positions,
                                          kinds_for(perturbation), seed, n_pert, boundary, writer, handle, progress,
                                          done, folder)
                except Exception as error:
                    _record_failure(failures, model_name, perturbation.label, error)
            unkept = [name for name in names if not _prediction_path(folder, model_name, name).exists()]
            if unkept:  # scored before predictions were kept: the guards need them
                try:
                    for name, prediction in zip(unkept, model.predict([images[positions[n]] for n in unkept], unkept)):
                        _save_clean_prediction(folder, model, name, prediction)
                except Exception as error:
                    _record_failure(failures, model_name, "clean", error)
    finally:
        handle.close()
    return SweepResult(path, n_new, n_skipped, tuple(failures))


def _record_failure(failures: list, model_name: str, setting: str, error: Exception) -> None:
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    failures.append(SweepFailure(model_name, setting, detail))
    warnings.warn(f"Model {model_name!r} failed under {setting}: {detail}. The rows written so far are kept; rerun "
                  "to retry.", CTEKitWarning, stacklevel=3)


def _score_model(model, perturbation, remaining, images, labels, positions, consistencies, seed, n_pert, boundary,
                 writer, handle, progress, done, folder) -> int:
    written = 0
    chunk = max(1, model.batch_size)
    bar = tqdm(total=len(remaining), desc=f"{model.name} {perturbation.label}", disable=not progress, leave=False)
    for start in range(0, len(remaining), chunk):
        batch_names = remaining[start : start + chunk]
        ids = [positions[name] for name in batch_names]
        # seeds from the image's name, not its position: adding an image changes no other image's draw
        pairs = model.predict_pairs([images[i] for i in ids], perturbation, seed=seed, n_pert=n_pert,
                                    image_ids=[image_id(name) for name in batch_names], names=batch_names)
        for name, pair in zip(batch_names, pairs):
            _save_clean_prediction(folder, model, name, pair.clean)
        scores = pair_scores(pairs, consistencies, threshold=model.threshold, boundary=boundary)
        truth = (performance([labels[i] for i in ids], [p.clean for p in pairs], model.threshold)
                 if labels is not None else {m: np.full(len(ids), np.nan) for m in PERFORMANCE_METRICS})
        for position, name in enumerate(batch_names):
            for kind in consistencies:
                if (model.name, name, perturbation.label, kind, str(seed), str(n_pert)) in done:
                    continue
                row = [model.name, name, perturbation.label, kind, seed, n_pert, float(scores[kind][position]),
                       *(float(truth[m][position]) for m in PERFORMANCE_METRICS)]
                writer.writerow([_format(v) for v in row])
                written += 1
        handle.flush()
        os.fsync(handle.fileno())
        bar.update(len(batch_names))
    bar.close()
    return written

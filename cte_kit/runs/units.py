"""A unit of work: one model, a chunk of images and the settings still to compute on them.

:func:`score_unit` is what a backend runs (in this process or on a Dask worker): it predicts
each image clean once and reuses that prediction for every setting, scores every consistency,
keeps the clean predictions for the guards and the performance table, and records failures with
their tracebacks instead of raising.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..estimators.cte import pair_scores
from ..models.bank import BankEntry, load_model
from ..models.base import SegmentationModel
from ..models.instances import connected_components
from ..perturb import Perturbation, parse_perturbation
from ..scoring.consistency import CONSISTENCY_KINDS, prediction_foreground
from ..types import Prediction, image_id
from .store import Failure, Score

__all__ = ["Setting", "Unit", "UnitResult", "estimator_key", "parse_estimator_key", "score_unit"]


@dataclass(frozen=True)
class Setting:
    """What is computed under one perturbation.

    Parameters
    ----------
    perturbation : InputPerturbation, FeatureDropout or str
        A perturbation or its label (``'gamma:0.7'``, ``'dropout:0.2'``).
    consistencies : sequence of {'hard', 'soft', 'instance'}
    seed : int
        Run seed; with the image's name and the draw it fixes every random number.
    n_pert : int
        Perturbed predictions per image.
    boundary : int
        Boundary band width of instance consistency.
    """

    perturbation: Perturbation | str
    consistencies: tuple[str, ...] = ("hard",)
    seed: int = 0
    n_pert: int = 1
    boundary: int = 1

    def __post_init__(self):
        perturbation = parse_perturbation(self.perturbation) if isinstance(self.perturbation, str) else self.perturbation
        consistencies = (self.consistencies,) if isinstance(self.consistencies, str) else tuple(self.consistencies)
        unknown = [c for c in consistencies if c not in CONSISTENCY_KINDS]
        if unknown or not consistencies:
            raise ValueError(f"unknown consistency {unknown or consistencies}; choose from {CONSISTENCY_KINDS}")
        if int(self.n_pert) < 1:
            raise ValueError(f"n_pert must be >= 1, got {self.n_pert}")
        object.__setattr__(self, "perturbation", perturbation)
        object.__setattr__(self, "consistencies", tuple(dict.fromkeys(consistencies)))

    def keys(self) -> dict[str, str]:
        """``{consistency: estimator key}``."""
        return {c: estimator_key(self.perturbation.label, c, self.n_pert, self.boundary) for c in self.consistencies}


def estimator_key(perturbation: str, consistency: str, n_pert: int = 1, boundary: int = 1) -> str:
    """Every parameter that changes a per-image CTE value, in one readable string.

    The boundary band only changes instance consistency, so it is part of that key alone.

    Examples
    --------
    >>> estimator_key("gamma:0.7", "instance")
    'gamma:0.7|instance|n_pert=1|boundary=1'
    """
    key = f"{perturbation}|{consistency}|n_pert={int(n_pert)}"
    return f"{key}|boundary={int(boundary)}" if consistency == "instance" else key


def parse_estimator_key(key: str) -> dict:
    """The fields of an :func:`estimator_key`: ``perturbation``, ``consistency``, ``n_pert``, ``boundary``."""
    perturbation, consistency, *rest = key.split("|")
    fields = dict(part.split("=", 1) for part in rest)
    return {"perturbation": perturbation, "consistency": consistency, "n_pert": int(fields.get("n_pert", 1)),
            "boundary": int(fields.get("boundary", 1))}


@dataclass(frozen=True)
class Unit:
    """One model, one chunk of images and what is still to compute on them."""

    model: BankEntry | SegmentationModel
    model_key: str
    images: tuple
    names: tuple[str, ...]
    image_keys: tuple[str, ...]
    settings: tuple[Setting, ...]
    predictions: bool


@dataclass(frozen=True)
class UnitResult:
    """What a unit computed: score rows, clean predictions (foreground, labels) and failures."""

    scores: tuple[Score, ...]
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]
    failures: tuple[Failure, ...]


def _kept(model: SegmentationModel, prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
    foreground = prediction_foreground(prediction) > model.threshold
    labels = prediction.labels if prediction.labels is not None else connected_components(foreground, 0.5)
    return foreground, np.asarray(labels, dtype=np.int32)


def _score_batch(model: SegmentationModel, unit: Unit, indices: Sequence[int]) -> tuple[list[Score], dict]:
    images = [unit.images[i] for i in indices]
    names = [unit.names[i] for i in indices]
    ids = [image_id(name) for name in names]
    scores: list[Score] = []
    clean = None
    for setting in unit.settings:
        pairs = model.predict_pairs(images, setting.perturbation, seed=setting.seed, n_pert=setting.n_pert,
                                    image_ids=ids, names=names, clean=clean)
        clean = [pair.clean for pair in pairs]  # every later setting reuses these clean predictions
        values = pair_scores(pairs, setting.consistencies, threshold=model.threshold, boundary=setting.boundary)
        for consistency, key in setting.keys().items():
            scores.extend(Score(unit.model_key, unit.image_keys[i], key, setting.seed, float(v))
                          for i, v in zip(indices, values[consistency]))
    if clean is None and unit.predictions:
        clean = model.predict(images, names)
    kept = {unit.image_keys[i]: _kept(model, p) for i, p in zip(indices, clean)} if clean is not None else {}
    return scores, kept


def _failure(unit: Unit, error: BaseException, index: int | None) -> Failure:
    settings = ", ".join(s.perturbation.label for s in unit.settings) or "clean"
    return Failure(unit.model_key, unit.model.name, None if index is None else unit.image_keys[index],
                   None if index is None else unit.names[index], settings,
                   "".join(traceback.format_exception_only(type(error), error)).strip(),
                   "".join(traceback.format_exception(type(error), error, error.__traceback__)))


def score_unit(unit: Unit, model: SegmentationModel | None) -> UnitResult:
    """Compute one unit with a loaded model (None: it could not be loaded; the error is raised again).

    The chunk is predicted in one go; if that raises, image by image, so that one bad image is
    recorded as the failure and the model's other images are still scored.
    """
    if model is None:
        try:
            model = unit.model if isinstance(unit.model, SegmentationModel) else load_model(unit.model)
        except Exception as error:  # a broken entry must not stop the bank
            return UnitResult((), {}, (_failure(unit, error, None),))
    everything = list(range(len(unit.images)))
    try:
        scores, kept = _score_batch(model, unit, everything)
        return UnitResult(tuple(scores), kept, ())
    except Exception as error:
        if len(everything) == 1:
            return UnitResult((), {}, (_failure(unit, error, 0),))
    scores, kept, failures = [], {}, []
    for index in everything:
        try:
            image_scores, image_kept = _score_batch(model, unit, [index])
        except Exception as error:
            failures.append(_failure(unit, error, index))
            continue
        scores.extend(image_scores)
        kept.update(image_kept)
    return UnitResult(tuple(scores), kept, tuple(failures))

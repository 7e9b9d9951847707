"""Units of work, and what a backend runs on them (in this process or on a Dask worker).

* :class:`Unit` - one model, a chunk of images and the CTE settings still to compute on them.
  :func:`score_unit` predicts each image clean once and reuses that prediction for every setting,
  scores every consistency, measures how each object of the clean prediction survives the
  perturbation (:meth:`Setting.objects_key`) and keeps the clean predictions for the guards, the
  performance table and quality control.
* :class:`EstimateUnit` - one model, a whole target and the model-scope estimators still to compute
  (many pool samples over every image of the target, so a target is not cut into chunks).
  :func:`estimate_unit` predicts the target once, hands each estimator only what it declares it
  needs, times it in clean forward passes and records why an estimator does not apply.

Both record failures with their tracebacks instead of raising; :func:`compute_unit` runs either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..estimators.base import Estimator, EstimatorResult, SourceData, run_estimator
from ..estimators.cte import pair_scores
from ..models.bank import BankEntry, load_model
from ..models.base import SegmentationModel
from ..models.instances import connected_components
from ..perturb import Perturbation, parse_perturbation
from ..scoring.consistency import CONSISTENCY_KINDS, prediction_foreground
from ..scoring.objects import mean_best_iou
from ..types import Prediction, image_id
from .store import Estimate, Failure, ObjectValues, Score

__all__ = ["EstimateUnit", "FORWARD_KEY", "Setting", "Unit", "UnitResult", "compute_unit", "estimate_unit",
           "estimator_key", "parse_estimator_key", "score_unit", "stored_result"]

#: Estimator key of the row that records a model's clean forward pass over a target (its ``score`` is
#: the seconds it took): the unit of every estimator's cost.
FORWARD_KEY = "forward"


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
        for name, least in (("n_pert", 1), ("boundary", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")
        object.__setattr__(self, "perturbation", perturbation)
        object.__setattr__(self, "consistencies", tuple(dict.fromkeys(consistencies)))

    def keys(self) -> dict[str, str]:
        """``{consistency: estimator key}``."""
        return {c: estimator_key(self.perturbation.label, c, self.n_pert, self.boundary) for c in self.consistencies}

    def objects_key(self) -> str:
        """Key of the per-object stability rows (store table ``objects``): for every object of the clean
        prediction, its best IoU with an object of a perturbed prediction, averaged over the ``n_pert`` draws."""
        return estimator_key(self.perturbation.label, "objects", self.n_pert)


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
class EstimateUnit:
    """One model, every image of a target and the model-scope estimators still to compute on them.

    Attributes
    ----------
    labels : tuple of (H, W) int arrays, optional
        The target's labels: present only when an estimator of the unit declares it needs them.
    source : SourceData, optional
        The model's source images and labels: present only when an estimator needs them.
    inputs_keys : tuple of str
        One per estimator: what its result is stored under (images, and the labels or source it reads).
    images_key : str
        The target's images: the key of the clean forward pass's row (:data:`FORWARD_KEY`).
    """

    model: BankEntry | SegmentationModel
    model_key: str
    images: tuple
    names: tuple[str, ...]
    image_keys: tuple[str, ...]
    estimators: tuple[Estimator, ...]
    inputs_keys: tuple[str, ...]
    images_key: str
    labels: tuple | None = None
    source: SourceData | None = None


@dataclass(frozen=True)
class UnitResult:
    """What a unit computed: score rows, clean predictions (foreground, labels), failures, estimator
    results and what the loaded model can give (its traits)."""

    scores: tuple[Score, ...]
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]
    failures: tuple[Failure, ...]
    estimates: tuple[Estimate, ...] = ()
    traits: Mapping[str, object] = field(default_factory=dict)
    objects: tuple[ObjectValues, ...] = ()


def _kept(model: SegmentationModel, prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
    """``((H, W) bool foreground, (H, W) int labels)`` of a prediction, as the store keeps them."""
    foreground = prediction_foreground(prediction) > model.threshold
    return foreground, _labels(model, prediction, foreground)


def _labels(model: SegmentationModel, prediction: Prediction, foreground: np.ndarray | None = None) -> np.ndarray:
    """A prediction's instance labels in their own integer type (a stitched large image's are uint16: an int32
    copy would double them), or the components of its foreground."""
    if prediction.labels is None:
        foreground = prediction_foreground(prediction) > model.threshold if foreground is None else foreground
        return connected_components(foreground, 0.5)
    labels = np.asarray(prediction.labels)
    return labels if labels.dtype.kind in "iu" else labels.astype(np.int32)


def _score_batch(model: SegmentationModel, unit: Unit,
                 indices: Sequence[int]) -> tuple[list[Score], dict, list[ObjectValues]]:
    images = [unit.images[i] for i in indices]
    names = [unit.names[i] for i in indices]
    ids = [image_id(name) for name in names]
    scores: list[Score] = []
    objects: list[ObjectValues] = []
    clean = kept = None
    # normalised once for every setting
    prepared = [model.prepare(image, name) for image, name in zip(images, names)] if unit.settings else None
    soft = any("soft" in setting.consistencies for setting in unit.settings)
    for setting in unit.settings:
        # without soft consistency nothing reads a probability map of a prediction with labels: none is kept
        pairs = model.predict_pairs(images, setting.perturbation, seed=setting.seed, n_pert=setting.n_pert,
                                    image_ids=ids, names=names, clean=clean, prepared=prepared, probability=soft)
        if clean is None:  # every later setting reuses these clean predictions
            clean = [pair.clean for pair in pairs]
            kept = [_kept(model, p) for p in clean]
        values = pair_scores(pairs, setting.consistencies, threshold=model.threshold, boundary=setting.boundary)
        for consistency, key in setting.keys().items():
            scores.extend(Score(unit.model_key, unit.image_keys[i], key, setting.seed, float(v))
                          for i, v in zip(indices, values[consistency]))
        for i, (_, labels), pair in zip(indices, kept, pairs):
            # the objects the store keeps, matched with the objects the perturbed predictions make of the same pixels
            found = mean_best_iou(labels, [_labels(model, p) for p in pair.perturbed])
            objects.append(ObjectValues(unit.model_key, unit.image_keys[i], setting.objects_key(), setting.seed, *found))
        pairs = pair = None  # the next setting's perturbed predictions take their place, not their side
    if clean is None and unit.predictions:
        kept = [_kept(model, p) for p in model.predict(images, names)]
    return scores, dict(zip((unit.image_keys[i] for i in indices), kept)) if kept is not None else {}, objects


def _failure(unit: Unit | EstimateUnit, error: BaseException, index: int | None, setting: str | None = None) -> Failure:
    if setting is None:
        setting = ", ".join(s.perturbation.label for s in unit.settings) or "clean"
    return Failure.from_error(error, unit.model_key, unit.model.name, setting,
                              None if index is None else unit.image_keys[index], None if index is None else unit.names[index])


def score_unit(unit: Unit, model: SegmentationModel | None) -> UnitResult:
    """Compute one unit with a loaded model (None: it could not be loaded; the error is raised again).

    The chunk is predicted in one go; if that raises, image by image, so that one bad image is
    recorded as the failure and the model's other images are still scored.
    """
    if model is None:
        model, failure = _load_again(unit)
        if failure is not None:
            return UnitResult((), {}, (failure,))
    everything = list(range(len(unit.images)))
    try:
        scores, kept, objects = _score_batch(model, unit, everything)
        return UnitResult(tuple(scores), kept, (), objects=tuple(objects))
    except Exception as error:
        if len(everything) == 1:
            return UnitResult((), {}, (_failure(unit, error, 0),))
    scores, kept, failures, objects = [], {}, [], []
    for index in everything:
        try:
            image_scores, image_kept, image_objects = _score_batch(model, unit, [index])
        except Exception as error:
            failures.append(_failure(unit, error, index))
            continue
        scores.extend(image_scores)
        kept.update(image_kept)
        objects.extend(image_objects)
    return UnitResult(tuple(scores), kept, tuple(failures), objects=tuple(objects))


def stored_result(result: EstimatorResult, model_key: str, inputs_key: str, cost: float) -> Estimate:
    """An estimator's result for one model as the store keeps it."""
    return Estimate(model_key, inputs_key, result.key, result.score, tuple(float(v) for v in result.per_image), cost)


def _load_again(unit: Unit | EstimateUnit) -> tuple[SegmentationModel | None, Failure | None]:
    """Load a unit's model to record why it cannot be loaded (a broken entry must not stop the bank)."""
    try:
        return (unit.model if isinstance(unit.model, SegmentationModel) else load_model(unit.model)), None
    except Exception as error:
        return None, _failure(unit, error, None, setting="load")


def estimate_unit(unit: EstimateUnit, model: SegmentationModel | None) -> UnitResult:
    """Compute one estimate unit with a loaded model (None: it could not be loaded; the error is raised again).

    An estimator that does not apply to the model (a black box, no instances, no source data) or
    refuses its inputs (``ValueError``, ``NotImplementedError``) gets a result with the reason;
    any other error is a failure with its traceback, and is retried by the next run.
    """
    if model is None:
        model, failure = _load_again(unit)
        if failure is not None:
            return UnitResult((), {}, (failure,))
    traits = {"grey_box": model.grey_box, "output": model.output}
    try:
        start = time.perf_counter()
        clean = model.predict(list(unit.images), list(unit.names))
        forward = time.perf_counter() - start
    except Exception as error:
        return UnitResult((), {}, (_failure(unit, error, None, setting="clean"),), traits=traits)
    kept = {key: _kept(model, prediction) for key, prediction in zip(unit.image_keys, clean)}
    estimates = [Estimate(unit.model_key, unit.images_key, FORWARD_KEY, forward, (), 1.0)]
    failures = []
    for estimator, inputs_key in zip(unit.estimators, unit.inputs_keys):
        reason = estimator.not_applicable(model)
        if reason is None and "source" in estimator.needs and unit.source is None:
            reason = f"{model.name} has no `source:` folder in its bank entry"
        if reason is None:
            try:
                start = time.perf_counter()
                # labels and source data go to the estimators that declare them, and to no other
                (result,) = run_estimator(estimator, [model], list(unit.images), list(unit.names), predictions=[clean],
                                          labels=unit.labels if "labels" in estimator.needs else None,
                                          sources=[unit.source if "source" in estimator.needs else None])
                seconds = time.perf_counter() - start + (forward if estimator.uses_predictions else 0.0)
            except (ValueError, NotImplementedError) as error:
                reason = f"{model.name}: {error}"
            except Exception as error:
                failures.append(_failure(unit, error, None, setting=estimator.key))
                continue
        if reason is None:
            estimates.append(stored_result(result, unit.model_key, inputs_key, seconds / max(forward, 1e-9)))
        else:
            estimates.append(Estimate(unit.model_key, inputs_key, estimator.key, float("nan"), (), float("nan"), reason))
    return UnitResult((), kept, tuple(failures), tuple(estimates), traits)


def compute_unit(unit: Unit | EstimateUnit, model: SegmentationModel | None) -> UnitResult:
    """What a backend runs: :func:`score_unit` or :func:`estimate_unit`, by the kind of unit."""
    return estimate_unit(unit, model) if isinstance(unit, EstimateUnit) else score_unit(unit, model)

"""Quality control of one model of a bank on a target, on the runner and its result store.

:func:`quality` makes sure the store holds what quality control reads - the chosen model's per-image
consistency and per-object stability under the kit's default perturbation
(:func:`cte_kit.estimators.cte.default_settings`) and a clean prediction of every image by every model
of the bank - by calling the runner (:func:`cte_kit.runs.runner.run`): rows a ranking run already wrote
into the same store are not computed again, and the other models get only a clean pass when the store
lacks one. It then scores every image and every object of the chosen model
(:mod:`cte_kit.estimators.quality`, where the scores are defined) from the stored values alone and
writes the scores back: the per-image scores as an ``estimates`` row, the per-object scores in the
``objects`` table, under :data:`QUALITY_KEY` and the keys of the settings and of the models compared
with. No label is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..estimators.cte import default_settings
from ..estimators.guards import GuardConfig, ModelGuards
from ..estimators.tasks import Task, task_defaults
from ..estimators.quality import ImageEvidence, image_evidence, image_scores, object_scores
from ..models.bank import BankEntry, load_model
from ..models.base import SegmentationModel
from ..scoring.objects import object_properties
from ..types import Prediction, image_id
from .runner import RunReport, RunTarget, run, store_guards
from .store import Estimate, Failure, ObjectValues, ResultStore, digest
from .units import Setting, _kept

__all__ = ["DOUBTFUL", "QUALITY_KEY", "ImageObjects", "ImageQuality", "QualityControl", "perturbed_foregrounds",
           "quality", "quality_settings"]

#: Name of the quality-control rows in the store (per-image ``estimates``, per-object ``objects``).
QUALITY_KEY = "quality"
#: An object scoring below this is counted as doubtful in the per-image table and the report: on
#: average a perturbed prediction or another model overlaps it by less than half (IoU).
DOUBTFUL = 0.5


def quality_settings(seed: int = 0, n_pert: int = 1, task: str | Task | None = None) -> list[Setting]:
    """The settings quality control reads: the task's default perturbation of hard consistency
    (:func:`cte_kit.estimators.cte.default_settings`), whose runs also measure every object's stability."""
    return [Setting(label, tuple(consistencies), seed, n_pert)
            for label, consistencies in default_settings(["hard"], task).items()]


@dataclass(frozen=True)
class ImageQuality:
    """One image of the target: its reliability score and what it is made of (see :mod:`cte_kit.estimators.quality`).

    Attributes
    ----------
    image, image_key : str
    score : float
        ``r_i`` in [0, 1] (higher: more reliable).
    consistency : float
        ``c_i``: hard CTE_i under the default perturbation (NaN: nothing predicted clean or perturbed).
    agreement : float
        ``A_i``: mean object F1 against the other models (NaN without them).
    consensus_iou : float
        Foreground IoU with the other models' majority vote (NaN without them).
    foreground_fraction, consensus_fraction : float
        The model's and the other models' median foreground fraction of the image.
    n_objects : int
    consensus_objects : float
        The other models' median object count.
    n_doubtful : int
        Objects scoring below :data:`DOUBTFUL`.
    flags : tuple of str
        The guards' reasons for flagging this image's prediction (empty when none).
    """

    image: str
    image_key: str
    score: float
    consistency: float
    agreement: float
    consensus_iou: float
    foreground_fraction: float
    consensus_fraction: float
    n_objects: int
    consensus_objects: float
    n_doubtful: int
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageObjects:
    """The objects of the chosen model's clean prediction of one image, with their scores.

    Attributes
    ----------
    image : str
    ids : (n,) int64 ndarray
        Object ids in the stored clean labels (the label image that quality control exports).
    area : (n,) int64 ndarray
    centroid_y, centroid_x : (n,) float64 ndarray
    score : (n,) float64 ndarray
        ``q_o`` in [0, 1].
    stability, agreement : (n,) float64 ndarray
        ``s_o`` and ``a_o`` (NaN without other models).
    """

    image: str
    ids: np.ndarray
    area: np.ndarray
    centroid_y: np.ndarray
    centroid_x: np.ndarray
    score: np.ndarray
    stability: np.ndarray
    agreement: np.ndarray


#: Columns of :meth:`QualityControl.image_table` and :meth:`QualityControl.object_table`.
IMAGE_COLUMNS = ("image", "score", "consistency", "agreement", "consensus_iou", "foreground_fraction",
                 "consensus_fraction", "n_objects", "consensus_objects", "n_doubtful", "flags")
OBJECT_COLUMNS = ("image", "object", "centroid_y", "centroid_x", "area", "score", "stability", "agreement")


@dataclass
class QualityControl:
    """Quality control of one model on one target (:func:`quality`).

    Attributes
    ----------
    model, model_key, target : str
    settings : tuple of Setting
        What the consistency and stability were measured under.
    compared_with : tuple of str
        The other models whose agreement counts (the bank less the models the guards flag or that failed).
    left_out : dict of str -> str
        Models of the bank not compared with, and why.
    guards : ModelGuards or None
        The chosen model's guard values and flags on the whole target (None: no prediction).
    images : tuple of ImageQuality
        In target order (:meth:`ranked` sorts them).
    objects : tuple of ImageObjects
        In target order.
    failures : tuple of Failure
        What failed in this call's runs (images of the chosen model without a prediction are missing
        from ``images``).
    """

    model: str
    model_key: str
    target: str
    settings: tuple
    compared_with: tuple
    left_out: dict
    guards: ModelGuards | None
    images: tuple
    objects: tuple
    failures: tuple = field(default_factory=tuple)

    def ranked(self) -> list[ImageQuality]:
        """The images from the least to the most reliable (ties in target order)."""
        return sorted(self.images, key=lambda image: image.score)

    def image_table(self) -> dict[str, list]:
        """Per-image columns (:data:`IMAGE_COLUMNS`), least reliable first; ``flags`` joined by ``'; '``."""
        rows = self.ranked()
        return {column: ["; ".join(r.flags) if column == "flags" else getattr(r, column) for r in rows]
                for column in IMAGE_COLUMNS}

    def object_table(self) -> dict[str, list]:
        """Per-object columns (:data:`OBJECT_COLUMNS`), in target order and object id order."""
        table: dict[str, list] = {column: [] for column in OBJECT_COLUMNS}
        for objects in self.objects:
            table["image"] += [objects.image] * objects.ids.size
            table["object"] += objects.ids.tolist()
            for column in OBJECT_COLUMNS[2:]:
                table[column] += getattr(objects, column).tolist()
        return table

    def scores(self) -> np.ndarray:
        """``r_i`` of every image, in target order."""
        return np.array([image.score for image in self.images])


def _names(bank: Sequence[BankEntry | SegmentationModel], model: str) -> list[str]:
    names = [item.name for item in bank]
    if model not in names:
        raise ValueError(f"no model {model!r} in the bank; models: {names}")
    return names


def quality(bank: Sequence[BankEntry | SegmentationModel], target: RunTarget, model: str, store: ResultStore,
            settings: Sequence[Setting] | None = None, backend=None, config: GuardConfig | None = None,
            progress: bool = True, task: str | Task | None = None) -> QualityControl:
    """Label-free quality control of one model of a bank on a target, per image and per object.

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
        The chosen model and the models it is compared with (the bank it was ranked in).
    target : RunTarget
        The unlabelled images.
    model : str
        The chosen model's name.
    store : ResultStore
        Read first (a ranking run into the same store is reused), then written.
    settings : sequence of Setting, optional
        The perturbations the consistency and object stability are measured under; default
        :func:`quality_settings` (the task's default). Their hard consistency is used.
    backend : SerialBackend or DaskBackend, optional
    config : GuardConfig, optional
        The guards' thresholds: which models are compared with, and the per-image flags; default the task's.
    progress : bool
    task : str or Task, optional
        The segmentation problem (:mod:`cte_kit.estimators.tasks`): its default perturbation and guards.

    Returns
    -------
    QualityControl

    Raises
    ------
    ValueError
        ``model`` is not in the bank, or a setting scores no hard consistency.
    """
    names = _names(bank, model)
    settings = list(settings) if settings is not None else quality_settings(task=task)
    config = config if config is not None else task_defaults(task).guards
    if not settings or any("hard" not in s.consistencies for s in settings):
        raise ValueError("quality control reads the hard consistency: give settings that score it")
    chosen = [item for item in bank if item.name == model]
    others = [item for item in bank if item.name != model]
    report = run(chosen, target, settings, store, backend=backend, progress=progress)
    failures = list(report.failures)
    if others:  # clean predictions only: what the agreement and the guards read
        clean = run(others, target, (), store, backend=backend, progress=progress)
        report.models.update(clean.models)
        failures += clean.failures
    models = {name: report.models[name] for name in names}
    keys = report.images[target.name]
    guards = store_guards(store, RunReport(models=models, images={target.name: keys}), target.name, names, config)
    left_out = {}
    for name in names:
        if name != model and guards[name].n_images < len(keys):
            left_out[name] = f"no clean prediction of {len(keys) - guards[name].n_images} image(s) (it failed)"
        elif name != model and guards[name].flags:
            left_out[name] = "flagged by the guards: " + "; ".join(flag.reason for flag in guards[name].flags)
    compared = [name for name in names if name != model and name not in left_out]
    model_key = models[model]
    results = _score(store, model_key, {n: models[n] for n in compared}, keys, settings, config)
    images = tuple(image for image, _ in results)
    objects = tuple(found for _, found in results)
    _keep(store, model_key, [models[n] for n in compared], keys, settings, images, objects)
    return QualityControl(model, model_key, target.name, tuple(settings), tuple(compared), left_out,
                          guards[model] if guards[model].n_images else None, images, objects, tuple(failures))


def _score(store: ResultStore, model_key: str, others: Mapping[str, str], keys: Mapping[str, str],
           settings: Sequence[Setting], config: GuardConfig) -> list[tuple[ImageQuality, ImageObjects]]:
    """Score every image the chosen model predicted, from the stored values."""
    consistency: dict[str, list[float]] = {}
    wanted = {(s.keys()["hard"], s.seed) for s in settings}
    for score in store.scores([model_key], list(keys.values())):
        if (score.estimator_key, score.seed) in wanted:
            consistency.setdefault(score.image_key, []).append(score.value)
    stability = [store.objects(model_key, s.objects_key(), s.seed, list(keys.values())) for s in settings]
    results = []
    for name, key in keys.items():
        kept = store.clean_prediction(model_key, key)
        if kept is None or any(key not in found for found in stability):
            continue  # the chosen model failed on this image: reported in the failures
        others_kept = [pair for pair in (store.clean_prediction(k, key) for k in others.values()) if pair is not None]
        evidence = image_evidence(*kept, others_kept, config)
        survived = np.mean([found[key].value for found in stability], axis=0)
        if not all(np.array_equal(found[key].ids, evidence.ids) for found in stability):
            raise ValueError(f"the stored object stability of {name} does not match its stored clean labels; "
                             "delete the store's rows of this model and run again")
        per_object = object_scores(survived, evidence.object_agreement)
        values = np.array(consistency.get(key, [np.nan]), dtype=float)
        c = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        results.append((_image_row(name, key, c, evidence, per_object, config),
                        _object_rows(name, kept[1], evidence, per_object, survived)))
    return results


def _image_row(name: str, key: str, consistency: float, evidence: ImageEvidence, per_object: np.ndarray,
               config: GuardConfig) -> ImageQuality:
    score = float(image_scores([consistency], [evidence.agreement], [bool(evidence.flags)])[0])
    return ImageQuality(name, key, score, consistency, evidence.agreement, evidence.consensus_iou,
                        evidence.statistics.foreground_fraction, evidence.consensus_fraction,
                        evidence.statistics.n_objects, evidence.consensus_objects,
                        int(np.count_nonzero(per_object < DOUBTFUL)), tuple(flag.reason for flag in evidence.flags))


def _object_rows(name: str, labels: np.ndarray, evidence: ImageEvidence, per_object: np.ndarray,
                 stability: np.ndarray) -> ImageObjects:
    properties = object_properties(labels)
    return ImageObjects(name, properties.ids, properties.area, properties.centroid_y, properties.centroid_x, per_object,
                        stability, evidence.object_agreement)


def _quality_key(settings: Sequence[Setting], others: Sequence[str]) -> str:
    """Everything the scores depend on besides the model and the image: the settings and the models compared with."""
    return f"{QUALITY_KEY}|{'+'.join(s.objects_key() for s in settings)}|compared={digest(*sorted(others))}"


def _keep(store: ResultStore, model_key: str, others: Sequence[str], keys: Mapping[str, str],
          settings: Sequence[Setting], images: Sequence[ImageQuality], objects: Sequence[ImageObjects]) -> None:
    """Write the scores to the store: per-image in ``estimates``, per-object in ``objects``."""
    key, seed = _quality_key(settings, others), settings[0].seed
    scored = {image.image_key: image.score for image in images}
    per_image = tuple(scored.get(k, float("nan")) for k in keys.values())
    finite = [v for v in per_image if np.isfinite(v)]
    estimate = Estimate(model_key, digest("images", *keys.values()), key, float(np.mean(finite)) if finite else float("nan"),
                        per_image, float("nan"))
    rows = [ObjectValues(model_key, image.image_key, key, seed, found.ids, found.score)
            for image, found in zip(images, objects)]
    store.write(estimates=[estimate], objects=rows)


def perturbed_foregrounds(item: BankEntry | SegmentationModel, target: RunTarget, names: Sequence[str],
                          store: ResultStore, model_key: str, setting: Setting) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The clean and the (first) perturbed foreground of a few images, for showing where they differ.

    The run keeps only the clean prediction and each object's stability; a report predicts the few
    images it shows again, seeded from their names as the run was, so the perturbed prediction is the
    one the stability was measured on.

    Parameters
    ----------
    item : BankEntry or SegmentationModel
        The chosen model (loaded here when an entry).
    target : RunTarget
    names : sequence of str
        The images to predict.
    store : ResultStore
        Holds their clean predictions (so only the perturbed pass runs).
    model_key : str
    setting : Setting

    Returns
    -------
    dict of str -> ((H, W) bool, (H, W) bool)
        Image name -> (clean foreground, perturbed foreground).
    """
    model = item if isinstance(item, SegmentationModel) else load_model(item)
    index = {name: i for i, name in enumerate(target.names)}
    keys = dict(zip(target.names, target.keys()))
    stored = {name: store.clean_prediction(model_key, keys[name]) for name in names}
    wanted = [name for name in names if stored[name] is not None]
    clean = [stored[name] for name in wanted]
    pairs = model.predict_pairs([target.images[index[name]] for name in wanted], setting.perturbation, seed=setting.seed,
                                n_pert=1, image_ids=[image_id(name) for name in wanted], names=wanted,
                                clean=[Prediction(labels=labels) for _, labels in clean])
    return {name: (kept[0], _kept(model, pair.perturbed[0])[0]) for name, kept, pair in zip(wanted, clean, pairs)}

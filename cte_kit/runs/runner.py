"""The one loop over models and images: every sweep of the kit runs through :func:`run`.

A run scores a bank on one or more targets under one or more :class:`Setting` (a perturbation,
the consistencies scored under it, seed, draws, boundary) and writes every value to a
:class:`~cte_kit.runs.store.ResultStore` as it goes. Work is cut into **units**: one model and a
fixed chunk of a target's images (chunks follow the images' keys, so a resumed run cuts the
same chunks and batches as an uninterrupted one and computes the same bits). A unit computes
each image's clean prediction once and reuses it for every setting; it is skipped when the store
already holds all its rows, and written in one transaction when it is done. A backend
(:mod:`cte_kit.runs.backends`: in this process, or Dask workers) computes units; only this
client writes. A model that fails is recorded with its traceback (per image when one image is the
cause) and the others go on. Labels never enter a run: true performance is the evaluation
floor's, from the stored clean predictions.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..estimators.base import Estimator, EstimatorResult, SourceData
from ..estimators.cte import RankAggregate
from ..estimators.guards import GuardConfig, ModelGuards, compute_guards
from ..models.bank import BankEntry
from ..models.base import ModelTraits, SegmentationModel
from .backends import SerialBackend
from .store import Estimate, Failure, ResultStore, array_digest, describe, digest, file_digest, image_key, kit_version
from .units import FORWARD_KEY, EstimateUnit, Setting, Unit, parse_estimator_key, stored_result
from ..types import InputTypeError

__all__ = ["CHUNK", "EstimateReport", "RunReport", "RunTarget", "estimate", "model_identity", "plan", "rows", "run",
           "store_guards"]

#: Images per unit of work: the granularity of resuming and of spreading work over Dask workers.
CHUNK = 16


def model_identity(item: BankEntry | SegmentationModel) -> tuple[str, str]:
    """``(model key, description JSON)`` of a bank entry or a loaded model.

    The key hashes what changes the model's outputs: for a bank entry its kind, settings and the
    contents of its weights (file or folder; the library's name for a pretrained model); for a
    model object its adapter class and settings and, for torch networks, the weights themselves;
    both with the kit version, whose defaults fill every setting left out.
    """
    if isinstance(item, BankEntry):
        payload = {"kind": item.kind, "settings": dict(item.settings), "pretrained": item.pretrained,
                   "weights": file_digest(item.path) if item.path is not None else None}
        if item.trust_code:  # trusted, a package may run other weights than without consent
            payload["trust_code"] = True
    elif isinstance(item, SegmentationModel):
        settings, weights = {}, []
        for spec in dataclasses.fields(item):
            value = getattr(item, spec.name)
            if spec.name in ("name", "layer_map"):
                continue
            if hasattr(value, "state_dict"):  # a torch network: its weights, in a fixed order
                weights.extend(f"{k}:{v.detach().cpu().numpy().tobytes().hex()}" for k, v in value.state_dict().items())
            else:
                settings[spec.name] = repr(value)
        payload = {"kind": type(item).__name__, "settings": settings, "weights": digest(*weights) if weights else None}
    else:
        raise InputTypeError(f"a bank holds BankEntry or SegmentationModel objects, not {type(item).__name__}")
    payload["kit"] = kit_version()
    description = describe({"name": item.name, **payload})
    return f"{item.name}@{digest(describe(payload))}", description


@dataclass(frozen=True)
class RunTarget:
    """A target's images (no labels: a run never sees them).

    Parameters
    ----------
    name : str
    images : sequence of (H, W) or (H, W, C) arrays
    names : sequence of str
        One unique name per image: its key (with its pixels) and what seeds its perturbations.
    """

    name: str
    images: tuple
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.images) != len(self.names):
            raise ValueError(f"target {self.name!r}: {len(self.images)} images but {len(self.names)} names")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"target {self.name!r}: image names must be unique (they key the results)")
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    def keys(self) -> tuple[str, ...]:
        return tuple(image_key(name, image) for name, image in zip(self.names, self.images))


@dataclass
class RunReport:
    """What a run did and where its results are.

    Attributes
    ----------
    models : dict of str -> str
        Model name -> model key, in bank order.
    images : dict of str -> dict of str -> str
        Target name -> {image name -> image key}, in target order.
    settings : tuple of Setting
    n_written, n_skipped : int
        Score rows computed now, and rows that were already in the store.
    failures : list of Failure
        This run's failures (the store keeps every run's).
    """

    models: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    settings: tuple = ()
    n_written: int = 0
    n_skipped: int = 0
    failures: list = field(default_factory=list)

    @property
    def failed_models(self) -> list[str]:
        return list(dict.fromkeys(f.model for f in self.failures))

    def missing(self, store: ResultStore, target: str) -> dict[str, int]:
        """Per model, the number of (image, estimator) rows of ``target`` the store lacks (0 = complete)."""
        image_keys = set(self.images[target].values())
        wanted = {(s.seed, key) for s in self.settings for key in s.keys().values()}
        missing = {}
        for name, model_key in self.models.items():
            have = {(score.seed, score.estimator_key, score.image_key) for score in store.scores([model_key], image_keys)}
            missing[name] = sum((seed, key, image) not in have for seed, key in wanted for image in image_keys)
        return missing


def _chunks(keys: Sequence[str], size: int) -> list[list[int]]:
    # chunks follow the sorted keys, not the listing order: a resumed or reordered run cuts the same chunks
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return [order[start:start + size] for start in range(0, len(order), size)]


def _identities(bank: Sequence[BankEntry | SegmentationModel]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """``({model name: model key}, {model key: (name, description)})`` in bank order; refuses duplicate names."""
    names = [item.name for item in bank]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate model names in the bank: {duplicates}")
    models, descriptions = {}, {}
    for item in bank:
        key, description = model_identity(item)
        models[item.name] = key
        descriptions[key] = (item.name, description)
    return models, descriptions


def plan(bank: Sequence[BankEntry | SegmentationModel], targets: Sequence[RunTarget], settings: Sequence[Setting],
         store: ResultStore, chunk: int = CHUNK) -> tuple[RunReport, list[Unit], dict]:
    """The units a run still has to compute, the report it starts from and the models' descriptions."""
    models, descriptions = _identities(bank)
    report = RunReport(models=models, settings=tuple(settings))
    units = []
    for target in targets:
        keys = target.keys()
        report.images[target.name] = dict(zip(target.names, keys))
        for item in bank:
            model_key = report.models[item.name]
            done = {seed: store.done(model_key, [k for s in settings if s.seed == seed for k in s.keys().values()], seed)
                    for seed in {s.seed for s in settings}}
            objects = {seed: store.done(model_key, [s.objects_key() for s in settings if s.seed == seed], seed, "objects")
                       for seed in {s.seed for s in settings}}
            predicted = store.predicted(model_key)
            for indices in _chunks(keys, chunk):
                chunk_keys = [keys[i] for i in indices]
                todo = []
                for setting in settings:
                    have = done[setting.seed]
                    missing = [c for c, k in setting.keys().items() if any(ik not in have[k] for ik in chunk_keys)]
                    report.n_skipped += sum(ik in have[k] for k in setting.keys().values() for ik in chunk_keys)
                    if missing or any(ik not in objects[setting.seed][setting.objects_key()] for ik in chunk_keys):
                        # the whole chunk again, every consistency of the setting: the same batches as the first time
                        todo.append(setting)
                needs_predictions = any(ik not in predicted for ik in chunk_keys)
                if todo or needs_predictions:
                    units.append(Unit(item, model_key, tuple(target.images[i] for i in indices),
                                      tuple(target.names[i] for i in indices), tuple(chunk_keys), tuple(todo),
                                      needs_predictions))
    return report, units, descriptions


def run(bank: Sequence[BankEntry | SegmentationModel], targets: RunTarget | Sequence[RunTarget],
        settings: Setting | Sequence[Setting], store: ResultStore, backend=None, chunk: int = CHUNK,
        progress: bool = True) -> RunReport:
    """Score a bank on targets under settings, writing to ``store`` as units complete.

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
        Entries are loaded by the backend (once per process), models used as given.
    targets : RunTarget or sequence of RunTarget
    settings : Setting or sequence of Setting
        None (an empty sequence): only the clean predictions are computed and stored (what the guards,
        the bank's agreement and the performance table read).
    store : ResultStore
        Rows already there (same model key, image key, estimator key and seed) are not recomputed.
    backend : SerialBackend or DaskBackend, optional
        Default: :class:`~cte_kit.runs.backends.SerialBackend` (this process).
    chunk : int
        Images per unit.
    progress : bool

    Returns
    -------
    RunReport
    """
    targets = [targets] if isinstance(targets, RunTarget) else list(targets)
    settings = [settings] if isinstance(settings, Setting) else list(settings)
    report, units, descriptions = plan(bank, targets, settings, store, chunk)
    _execute(units, store, backend, descriptions, targets, report, progress, "models x image chunks")
    return report


def _execute(units: Sequence[Unit | EstimateUnit], store: ResultStore, backend, descriptions: Mapping,
             targets: Sequence[RunTarget], report: RunReport | EstimateReport, progress: bool, description: str) -> None:
    """The loop: compute units on the backend and write each one's results in one transaction as it completes.

    A unit is compressed and written by one writer thread while the next unit computes (zlib and
    SQLite release the GIL), one unit at a time in the order they complete; the loop waits for a
    write before it hands over the next, so a crash loses at most the unit being written and the
    one being computed, never half of one.
    """
    backend = backend if backend is not None else SerialBackend()
    images = {key: (name, *np.shape(image)[:2]) for target in targets
              for name, image, key in zip(target.names, target.images, target.keys())}
    bar = tqdm(total=len(units), desc=description, disable=not progress or not units)
    writing = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cte_kit-store") as writer:
        for unit, result in backend.map(units):
            if writing is not None:
                report.n_written += writing.result()
            writing = writer.submit(
                store.write, models={unit.model_key: descriptions[unit.model_key]},
                images={k: images[k] for k in unit.image_keys}, scores=result.scores,
                predictions={(unit.model_key, k): v for k, v in result.predictions.items()}, failures=result.failures,
                estimates=result.estimates, traits={unit.model_key: result.traits} if result.traits else {},
                objects=result.objects)
            report.failures.extend(result.failures)
            bar.update(1)
            del result  # the writer holds the unit's arrays until they are written; the next unit computes without them
        if writing is not None:
            report.n_written += writing.result()
    bar.close()


def store_guards(store: ResultStore, report: RunReport, target: str, models: Sequence[str] | None = None,
                 config: GuardConfig = GuardConfig()) -> dict[str, ModelGuards]:
    """The label-free guards (:func:`cte_kit.estimators.guards.compute_guards`) from the stored clean predictions."""
    names = list(models) if models is not None else list(report.models)
    keys = report.images[target]
    return compute_guards(names, list(keys),
                          lambda model, image: store.clean_prediction(report.models[model], keys[image]), config)


def rows(store: ResultStore, models: Mapping[str, str], images: Mapping[str, str],
         settings: Sequence[Setting] | None = None) -> list[dict]:
    """Stored scores as flat rows: ``model``, ``image``, ``perturbation``, ``consistency``, ``seed``,
    ``n_pert``, ``cte`` (names, not keys).

    Parameters
    ----------
    store : ResultStore
    models, images : mapping of name -> key
        Which models and images (a :class:`RunReport`'s ``models`` and ``images[target]``); rows
        come out in these orders.
    settings : sequence of Setting, optional
        Only their (estimator key, seed) rows; default: every row of these models and images.
    """
    by_model = {key: name for name, key in models.items()}
    by_image = {key: name for name, key in images.items()}
    wanted = {(key, s.seed) for s in settings for key in s.keys().values()} if settings is not None else None
    found = []
    for score in store.scores(list(by_model), list(by_image)):
        if wanted is not None and (score.estimator_key, score.seed) not in wanted:
            continue
        fields = parse_estimator_key(score.estimator_key)
        found.append({"model": by_model[score.model_key], "image": by_image[score.image_key],
                      "perturbation": fields["perturbation"], "consistency": fields["consistency"],
                      "seed": score.seed, "n_pert": fields["n_pert"], "cte": score.value,
                      "model_key": score.model_key, "image_key": score.image_key})
    model_order = {name: i for i, name in enumerate(models)}
    image_order = {name: i for i, name in enumerate(images)}
    found.sort(key=lambda r: (r["perturbation"], r["consistency"], r["seed"], r["n_pert"], model_order[r["model"]],
                              image_order[r["image"]]))
    return found


@dataclass
class EstimateReport:
    """What :func:`estimate` found on one target.

    Attributes
    ----------
    models : dict of str -> str
        Model name -> model key, in bank order.
    images : dict of str -> str
        Image name -> image key, in target order.
    results : dict of str -> dict of str -> Estimate
        Estimator key -> {model name: Estimate}; a model that failed (see ``failures``) is absent.
    forward : dict of str -> float
        Seconds of each model's clean forward pass over the target (the unit of every cost).
    n_written : int
        Rows computed now.
    failures : list of Failure
    """

    models: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    forward: dict = field(default_factory=dict)
    n_written: int = 0
    failures: list = field(default_factory=list)


def _with_components(estimators: Sequence[Estimator]) -> list[Estimator]:
    """The estimators and, before each rank aggregate, its components (once each)."""
    found: dict[str, Estimator] = {}

    def add(estimator: Estimator) -> None:
        if isinstance(estimator, RankAggregate):
            for component in estimator.components:
                add(component)
        found.setdefault(estimator.key, estimator)

    for estimator in estimators:
        add(estimator)
    return list(found.values())


def _inputs_key(estimator: Estimator, images: str, labels: str | None, source: SourceData | None) -> str:
    """What an estimator's result depends on besides the model: the images, and the labels and source it reads."""
    parts = [images]
    if "labels" in estimator.needs:
        parts.append(labels or "no labels")
    if "source" in estimator.needs:
        parts.append(array_digest(*source.images, *source.labels) if source is not None else "no source")
    return digest(*parts)


def estimate(bank: Sequence[BankEntry | SegmentationModel], target: RunTarget, estimators: Sequence[Estimator],
             store: ResultStore, labels: Sequence[np.ndarray] | None = None,
             sources: Mapping[str, SourceData | None] | None = None, backend=None,
             progress: bool = True) -> EstimateReport:
    """Score a bank on one target with any estimators (:mod:`cte_kit.estimators`), writing to ``store``.

    Model-scope estimators run in units (one model, the whole target) on the backend, which
    predicts each image clean once for all of them; bank-scope estimators (bank agreement, rank
    aggregates) are computed here from the stored clean masks and the components' results. A
    result already stored under the same model key, inputs key and estimator key is not recomputed.

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
    target : RunTarget
    estimators : sequence of Estimator
        The components of a rank aggregate are computed (and reported) too.
    store : ResultStore
    labels : sequence of (H, W) int arrays, optional
        The target's labels, one per image: handed only to estimators that declare they need them.
    sources : mapping of model name -> SourceData, optional
        Each model's source images and labels: handed only to estimators that need them.
    backend : SerialBackend or DaskBackend, optional
    progress : bool

    Returns
    -------
    EstimateReport
    """
    if labels is not None and len(labels) != len(target.images):
        raise ValueError(f"target {target.name!r}: {len(target.images)} images but {len(labels)} label images")
    everything = _with_components(list(estimators))
    models, descriptions = _identities(bank)
    report = EstimateReport(models=models, images=dict(zip(target.names, target.keys())))
    images_key = digest("images", *report.images.values())
    labels_key = array_digest(*labels) if labels is not None else None
    sources = dict(sources or {})
    per_model = [e for e in everything if e.scope == "model"]
    keys = {name: {e.key: _inputs_key(e, images_key, labels_key, sources.get(name)) for e in per_model}
            for name in models}
    stored = store.estimates(list(models.values()))
    units = []
    for item in bank:
        model_key, inputs = models[item.name], keys[item.name]
        todo = [e for e in per_model if (model_key, inputs[e.key], e.key) not in stored]
        if todo or (model_key, images_key, FORWARD_KEY) not in stored:
            source = sources.get(item.name) if any("source" in e.needs for e in todo) else None
            given = tuple(labels) if labels is not None and any("labels" in e.needs for e in todo) else None
            units.append(EstimateUnit(item, model_key, target.images, target.names, tuple(report.images.values()),
                                      tuple(todo), tuple(inputs[e.key] for e in todo), images_key, given, source))
    _execute(units, store, backend, descriptions, [target], report, progress, f"{target.name}: models")

    stored = store.estimates(list(models.values()))
    traits = store.traits(list(models.values()))
    # a model is scored when its clean pass over the target is stored (it loaded and predicted)
    scored = {name: key for name, key in models.items() if (key, images_key, FORWARD_KEY) in stored and key in traits}
    report.forward = {name: stored[key, images_key, FORWARD_KEY].score for name, key in scored.items()}
    for estimator in everything:
        found = report.results.setdefault(estimator.key, {})
        if estimator.scope == "model":
            for name, key in scored.items():
                if (key, keys[name][estimator.key], estimator.key) in stored:
                    found[name] = stored[key, keys[name][estimator.key], estimator.key]
            continue
        found.update(_bank_estimate(estimator, scored, {n: ModelTraits(n, **traits[k]) for n, k in scored.items()},
                                    images_key, store, stored, report))
    return report


def _bank_estimate(estimator: Estimator, models: Mapping[str, str], traits: Mapping[str, ModelTraits], images_key: str,
                   store: ResultStore, stored: Mapping[tuple[str, str, str], Estimate],
                   report: EstimateReport) -> dict[str, Estimate]:
    """A bank-scope estimator's results, from the store or computed now from stored masks and components."""
    reasons = {name: estimator.not_applicable(traits[name]) for name in models}
    members = [name for name in models if reasons[name] is None]
    if isinstance(estimator, RankAggregate):
        parts = [report.results[c.key] for c in estimator.components]
        for name in members:
            if any(name not in part or part[name].note for part in parts):
                reasons[name] = f"{name}: a component estimator did not score the model"
        members = [name for name in members if reasons[name] is None]
    bank_key = digest(images_key, *sorted(models[name] for name in members))

    def not_applicable(name: str) -> Estimate:
        return Estimate(models[name], bank_key, estimator.key, float("nan"), (), float("nan"), reasons[name])

    if members and all((models[name], bank_key, estimator.key) in stored for name in members):
        found = {name: stored[models[name], bank_key, estimator.key] for name in members}
        return {**found, **{name: not_applicable(name) for name in models if name not in found}}
    new: dict[str, Estimate] = {}
    if isinstance(estimator, RankAggregate) and members:
        combined = estimator.combine([[_result(c.key, name, report.results[c.key][name]) for name in members]
                                      for c in estimator.components])
        for name, result in zip(members, combined):
            cost = sum(report.results[c.key][name].cost for c in estimator.components)
            new[name] = stored_result(result, models[name], bank_key, cost)
    elif members:
        kept = [[store.clean_prediction(models[name], key) for key in report.images.values()] for name in members]
        start = time.perf_counter()
        try:
            results = estimator.score_kept(members, kept)
        except (ValueError, NotImplementedError) as error:
            reasons.update({name: str(error) for name in members})
            results = []
        except Exception as error:
            report.failures.extend(Failure.from_error(error, models[name], name, estimator.key) for name in members)
            results = []
        seconds = (time.perf_counter() - start) / len(members)
        for name, result in zip(members, results):
            forward = max(report.forward[name], 1e-9)
            cost = (seconds + (report.forward[name] if estimator.uses_predictions else 0.0)) / forward
            new[name] = stored_result(result, models[name], bank_key, cost)
    new.update({name: not_applicable(name) for name in models if name not in new and reasons[name] is not None})
    report.n_written += store.write(estimates=new.values())
    return new


def _result(key: str, model: str, stored: Estimate) -> EstimatorResult:
    return EstimatorResult(key, model, np.array(stored.per_image, dtype=float), stored.score)

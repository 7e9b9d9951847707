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
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..estimators.guards import GuardConfig, ModelGuards, compute_guards
from ..models.bank import BankEntry
from ..models.base import SegmentationModel
from .backends import SerialBackend
from .store import ResultStore, describe, digest, file_digest, image_key, kit_version
from .units import Setting, Unit, parse_estimator_key

__all__ = ["CHUNK", "RunReport", "RunTarget", "model_identity", "plan", "rows", "run", "store_guards"]

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
        raise TypeError(f"a bank holds BankEntry or SegmentationModel objects, not {type(item).__name__}")
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


def plan(bank: Sequence[BankEntry | SegmentationModel], targets: Sequence[RunTarget], settings: Sequence[Setting],
         store: ResultStore, chunk: int = CHUNK) -> tuple[RunReport, list[Unit], dict]:
    """The units a run still has to compute, the report it starts from and the models' descriptions."""
    if not settings:
        raise ValueError("give at least one setting (perturbation)")
    names = [item.name for item in bank]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate model names in the bank: {duplicates}")
    report = RunReport(settings=tuple(settings))
    descriptions = {}
    for item in bank:
        key, description = model_identity(item)
        report.models[item.name] = key
        descriptions[key] = (item.name, description)
    units = []
    for target in targets:
        keys = target.keys()
        report.images[target.name] = dict(zip(target.names, keys))
        for item in bank:
            model_key = report.models[item.name]
            done = {seed: store.done(model_key, [k for s in settings if s.seed == seed for k in s.keys().values()], seed)
                    for seed in {s.seed for s in settings}}
            predicted = store.predicted(model_key)
            for indices in _chunks(keys, chunk):
                chunk_keys = [keys[i] for i in indices]
                todo = []
                for setting in settings:
                    have = done[setting.seed]
                    missing = [c for c, k in setting.keys().items() if any(ik not in have[k] for ik in chunk_keys)]
                    report.n_skipped += sum(ik in have[k] for k in setting.keys().values() for ik in chunk_keys)
                    if missing:
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
    backend = backend if backend is not None else SerialBackend()
    images = {key: (name, *np.shape(image)[:2]) for target in targets
              for name, image, key in zip(target.names, target.images, target.keys())}
    bar = tqdm(total=len(units), desc="models x image chunks", disable=not progress or not units)
    for unit, result in backend.map(units):
        report.n_written += store.write(models={unit.model_key: descriptions[unit.model_key]},
                                        images={k: images[k] for k in unit.image_keys}, scores=result.scores,
                                        predictions={(unit.model_key, k): v for k, v in result.predictions.items()},
                                        failures=result.failures)
        report.failures.extend(result.failures)
        bar.update(1)
    bar.close()
    return report


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

"""A sweep described by data: the YAML that ``cte-kit sweep`` reads.

.. code-block:: yaml

    bank: bank.yaml                 # a bank YAML (relative paths: from this file's folder)
    task: mitochondria              # optional: nuclei | mitochondria | cells (default: the bank's, else nuclei)
    out: sweep.sqlite               # the result store (default: sweep.sqlite beside this file)
    targets:
      - name: fluo                  # a folder of images, with optional labels
        images: data/fluo/images
        labels: data/fluo/labels
        max_images: 100             # optional: the first N images (natural order)
      - dataset: dsb2018            # or a registry dataset (cte-kit datasets), fetched if absent
        split: test
        max_images: 50
    perturbations:                  # labels, or a kind with its strengths (default: the task's)
      - gamma:0.7
      - kind: dropout
        strengths: [0.05, 0.1, 0.2]
    consistencies: [hard, instance] # default: the task's
    seed: 0
    n_pert: 1
    boundary: 1

Labels are loaded here, for the evaluation floor only: a run never receives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from ..estimators.tasks import TaskChoice, resolve_task
from ..models.bank import BankEntry, bank_task, read_bank
from ..perturb import parse_perturbation
from ..runs.runner import RunTarget
from ..runs.units import Setting
from .strength import perturbation_for

__all__ = ["SweepConfig", "TargetSpec", "read_sweep_config"]


@dataclass(frozen=True)
class TargetSpec:
    """Where a target's images (and labels) come from: a folder or a registry dataset."""

    name: str
    images: str | None = None
    labels: str | None = None
    dataset: str | None = None
    split: str | None = None
    max_images: int | None = None

    def load(self, progress: bool = True) -> tuple[RunTarget, list[np.ndarray] | None]:
        """The images as a :class:`~cte_kit.runs.runner.RunTarget`, and the labels (None without)."""
        if self.dataset is not None:
            from ..data.registry import load_dataset

            data = load_dataset(self.dataset, self.split, limit=self.max_images, progress=progress)
            images, labels, names = data.images, data.labels, data.names
        else:
            from ..data.folder import load_folder

            data = load_folder(self.images, self.labels, progress=progress)
            images, labels, names = data.images, data.labels, data.names
            if self.max_images is not None:
                images, names = images[: self.max_images], names[: self.max_images]
                labels = labels[: self.max_images] if labels is not None else None
        return RunTarget(self.name, tuple(images), tuple(names)), (list(labels) if labels is not None else None)


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep config: the bank, the targets, the settings, the store and the task (with the sentence
    saying where it was declared)."""

    bank: tuple[BankEntry, ...]
    targets: tuple[TargetSpec, ...]
    settings: tuple[Setting, ...]
    out: Path
    task: TaskChoice


_KEYS = {"bank", "task", "out", "targets", "perturbations", "consistencies", "seed", "n_pert", "boundary"}
_TARGET_KEYS = {"name", "images", "labels", "dataset", "split", "max_images"}


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _target(raw: Any, index: int, base: Path, where: str) -> TargetSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: targets[{index}] must be a mapping with `images` (a folder) or `dataset`")
    unknown = sorted(set(raw) - _TARGET_KEYS)
    if unknown:
        raise ValueError(f"{where}: targets[{index}] has unknown key(s) {unknown}; known: {sorted(_TARGET_KEYS)}")
    if ("images" in raw) == ("dataset" in raw):
        raise ValueError(f"{where}: targets[{index}] needs exactly one of `images` (a folder) or `dataset` (a registry name)")
    name = str(raw.get("name") or raw.get("dataset") or Path(str(raw["images"])).parent.name or f"target{index}")
    max_images = raw.get("max_images")
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"{where}: targets[{index}].max_images must be >= 1")
    return TargetSpec(name, _resolve(base, raw.get("images")), _resolve(base, raw.get("labels")), raw.get("dataset"),
                      raw.get("split"), None if max_images is None else int(max_images))


def _settings(raw: Any, consistencies: Sequence[str], seed: int, n_pert: int, boundary: int, where: str) -> list[Setting]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: `perturbations` must be a non-empty list of labels (gamma:0.7) or "
                         "{kind, strengths} mappings")
    perturbations = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            perturbations.append(parse_perturbation(item))
        elif isinstance(item, Mapping) and set(item) == {"kind", "strengths"} and isinstance(item["strengths"], list):
            perturbations.extend(perturbation_for(str(item["kind"]), float(s)) for s in item["strengths"])
        else:
            raise ValueError(f"{where}: perturbations[{index}] must be a label such as gamma:0.7 or a mapping "
                             "{kind: dropout, strengths: [0.1, 0.2]}")
    labels = [p.label for p in perturbations]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"{where}: perturbation(s) {repeated} given twice")
    return [Setting(p, tuple(consistencies), seed, n_pert, boundary) for p in perturbations]


def read_sweep_config(path: str | Path, task: str | None = None) -> SweepConfig:
    """Read and check a sweep config (see the module's documentation for the format).

    Parameters
    ----------
    path : str or Path
    task : str, optional
        Declared by the caller (``--task``): it overrides the config's and the bank's ``task:``.
        The task sets the perturbations and consistencies the config leaves out.

    Raises
    ------
    FileNotFoundError
        The config or its bank file does not exist.
    ValueError
        Invalid YAML, a missing or unknown key, a target without images, a bad perturbation.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"sweep config {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"sweep config {file} is not valid YAML: {error}") from None
    where = str(file)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping with bank, targets and perturbations")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    missing = [key for key in ("bank", "targets") if key not in raw]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    base = file.parent.resolve()
    bank_file = _resolve(base, str(raw["bank"]))
    bank = read_bank(bank_file)
    if raw.get("task") is not None and not isinstance(raw["task"], str):
        raise ValueError(f"{where}: `task` must be a name such as nuclei, mitochondria or cells")
    choice = resolve_task(("--task", task), (where, raw.get("task")), (bank_file, bank_task(bank_file)))
    if not isinstance(raw["targets"], list) or not raw["targets"]:
        raise ValueError(f"{where}: `targets` must be a non-empty list")
    targets = [_target(item, i, base, where) for i, item in enumerate(raw["targets"])]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: target names must be unique, got {names}")
    consistencies = raw.get("consistencies", list(choice.task.consistencies))
    consistencies = [consistencies] if isinstance(consistencies, str) else list(consistencies)
    seed, n_pert, boundary = int(raw.get("seed", 0)), int(raw.get("n_pert", 1)), int(raw.get("boundary", 1))
    if "perturbations" in raw:
        settings = _settings(raw["perturbations"], consistencies, seed, n_pert, boundary, where)
    else:
        settings = [Setting(parse_perturbation(label), tuple(kinds), seed, n_pert, boundary)
                    for label, kinds in choice.task.settings(consistencies).items()]
    out = Path(_resolve(base, str(raw.get("out", "sweep.sqlite"))))
    return SweepConfig(tuple(bank), tuple(targets), tuple(settings), out, choice)

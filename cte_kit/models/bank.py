"""Model banks described by data: a YAML file lists the models, their kind and where they live.

.. code-block:: yaml

    task: nuclei                   # optional: nuclei | mitochondria | cells (the defaults the bank is ranked with)
    models:
      - name: unet_small_nuclei
        kind: unet                 # unet | stardist | cellpose | bioimageio
        path: models/small.pt      # relative paths are relative to this file
        percentiles: [1, 99.8]     # optional per-model settings
        threshold: 0.5
        source: data/small       # optional: the model's training data, a folder with images/ and labels/
      - name: versatile
        kind: stardist
        pretrained: 2D_versatile_fluo

Every adapter module named in :data:`ADAPTERS` exposes ``from_bank_entry(entry)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .base import SegmentationModel

__all__ = ["ADAPTERS", "COMMON_SETTINGS", "BankEntry", "bank_task", "read_bank", "write_bank", "load_model", "load_bank"]

#: Adapter module for each ``kind``; imported only when a model of that kind is loaded.
ADAPTERS = {
    "unet": "cte_kit.models.unet",
    "stardist": "cte_kit.models.stardist",
    "cellpose": "cte_kit.models.cellpose",
    "bioimageio": "cte_kit.models.bioimageio",
}

#: Settings every adapter understands (see :class:`~cte_kit.models.base.SegmentationModel`).
COMMON_SETTINGS = ("percentiles", "threshold", "channels", "rgb", "batch_size")


@dataclass(frozen=True)
class BankEntry:
    """One model of a bank.

    Attributes
    ----------
    name : str
    kind : str
        Key of :data:`ADAPTERS`.
    path : str or None
        Checkpoint, model folder, ``rdf.yaml`` or zip (absolute, or resolved against the bank file).
    pretrained : str or None
        A name the model's library resolves itself (``2D_versatile_fluo``, ``cyto3``, a zoo id).
    settings : mapping
        Every other key of the entry.
    source : str or None
        Folder of the model's source (training) data with ``images/`` and ``labels/`` (absolute,
        or resolved against the bank file); only estimators that need source data read it.
    """

    name: str
    kind: str
    path: str | None = None
    pretrained: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def common_settings(self) -> dict[str, Any]:
        """The entry's settings that :class:`SegmentationModel` itself takes."""
        values = {key: self.settings[key] for key in COMMON_SETTINGS if key in self.settings}
        if values.get("percentiles") is not None:
            values["percentiles"] = tuple(float(p) for p in values["percentiles"])
        return values

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.path is not None:
            entry["path"] = self.path
        if self.pretrained is not None:
            entry["pretrained"] = self.pretrained
        if self.source is not None:
            entry["source"] = self.source
        entry.update(self.settings)
        return entry


def _entry_from_mapping(raw: Any, position: int, base: Path, source: str) -> BankEntry:
    where = f"{source}: models[{position}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping with name, kind and path or pretrained")
    missing = [key for key in ("name", "kind") if key not in raw]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    kind = str(raw["kind"]).lower()
    if kind not in ADAPTERS:
        raise ValueError(f"{where} ({raw['name']!r}) has unknown kind {kind!r}; known: {sorted(ADAPTERS)}")
    path, pretrained = raw.get("path"), raw.get("pretrained")
    if (path is None) == (pretrained is None):
        raise ValueError(f"{where} ({raw['name']!r}) needs exactly one of `path` or `pretrained`")
    if path is not None:
        path = str(path if Path(path).is_absolute() else (base / path).resolve())
    source = raw.get("source")
    if source is not None:
        source = str(source if Path(source).is_absolute() else (base / source).resolve())
    settings = {k: v for k, v in raw.items() if k not in ("name", "kind", "path", "pretrained", "source")}
    return BankEntry(str(raw["name"]), kind, path, None if pretrained is None else str(pretrained), settings, source)


def read_bank(source: str | Path | Mapping) -> list[BankEntry]:
    """Read a bank from a YAML file (or an already parsed mapping).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, no ``models`` list, an entry without name/kind/location, unknown kind,
        duplicate names.
    """
    data, base, label = _document(source)
    if not isinstance(data.get("models"), list) or not data["models"]:
        raise ValueError(f"{label}: expected a non-empty list under the key `models:`")
    entries = [_entry_from_mapping(raw, i, base, label) for i, raw in enumerate(data["models"])]
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{label}: duplicate model names {duplicates}")
    return entries


def _document(source: str | Path | Mapping) -> tuple[Mapping, Path, str]:
    """The parsed bank, the folder its relative paths start from, and how to name it in messages."""
    if isinstance(source, Mapping):
        return source, Path.cwd(), "bank"
    file = Path(source)
    if not file.is_file():
        raise FileNotFoundError(f"bank file {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"bank file {file} is not valid YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{file}: expected a mapping with a list under the key `models:`")
    return data, file.parent.resolve(), str(file)


def bank_task(source: str | Path | Mapping) -> str | None:
    """The task a bank declares (``task:``), or None; the estimators' floor knows what the name means
    (:func:`cte_kit.estimators.tasks.resolve_task`)."""
    data, _, label = _document(source)
    task = data.get("task")
    if task is not None and not isinstance(task, str):
        raise ValueError(f"{label}: `task:` must be a name such as nuclei, mitochondria or cells, got {task!r}")
    return task


def write_bank(entries, path: str | Path, task: str | None = None) -> Path:
    """Write entries as a bank YAML file (paths as given), with the task it is ranked for when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = ({"task": task} if task is not None else {}) | {"models": [entry.to_dict() for entry in entries]}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def load_model(entry: BankEntry) -> SegmentationModel:
    """Instantiate the adapter for one bank entry."""
    module = importlib.import_module(ADAPTERS[entry.kind])
    return module.from_bank_entry(entry)


def load_bank(source: str | Path | Mapping) -> list[SegmentationModel]:
    """Read a bank and load every model (eagerly; see :func:`read_bank` to load lazily)."""
    return [load_model(entry) for entry in read_bank(source)]

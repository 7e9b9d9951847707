"""Public datasets of the CTE paper: registry, checked downloads, and loading as 2D images + labels.

The datasets are described by ``data_registry.yaml`` (URLs, checksums, licences, the reader that
turns each archive into 2D images). This module reads it, downloads through pooch (progress bar,
checksum verified before a file enters the cache, zips unpacked) and loads a split with
:func:`load_dataset`.

Environment variables
---------------------
``CTE_KIT_DATA_DIR``
    Cache folder; dataset ``NAME`` lives in ``$CTE_KIT_DATA_DIR/NAME/`` (default: the OS user cache,
    ``pooch.os_cache("cte_kit")``, e.g. ``~/.cache/cte_kit`` on Linux).
``CTE_KIT_MIRROR``
    Base URL of a mirror. Every file ``FNAME`` of dataset ``NAME`` is then fetched from
    ``$CTE_KIT_MIRROR/NAME/FNAME`` instead of its original host, and checked against the same
    checksum. A workshop host runs ``cte-kit fetch --all``, then :func:`export_mirror` into a folder,
    and serves that folder, e.g. ``python -m http.server 8000 --directory FOLDER``; participants set
    ``CTE_KIT_MIRROR=http://HOST:8000``.
``CTE_KIT_REGISTRY``
    Path of an alternative registry YAML (default: the copy shipped in ``cte_kit/assets``).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import zipfile
from dataclasses import MISSING, dataclass, fields
from importlib import resources
from itertools import chain, islice
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pooch
import requests
import yaml
from tqdm.auto import tqdm

from ..types import CTEKitWarning
from .readers import READERS, select_samples, to_patches

__all__ = [
    "DATA_DIR_ENV",
    "MIRROR_ENV",
    "REGISTRY_ENV",
    "DataFile",
    "DatasetEntry",
    "Dataset2D",
    "DownloadError",
    "HashMismatchError",
    "read_registry",
    "list_datasets",
    "format_table",
    "data_dir",
    "fetch",
    "fetch_all",
    "export_mirror",
    "load_dataset",
]

DATA_DIR_ENV = "CTE_KIT_DATA_DIR"
MIRROR_ENV = "CTE_KIT_MIRROR"
REGISTRY_ENV = "CTE_KIT_REGISTRY"

_TASKS = ("semantic", "instance")
_HASH = re.compile(r"^(sha256:[0-9a-f]{64}|sha1:[0-9a-f]{40}|md5:[0-9a-f]{32})$")


class DownloadError(RuntimeError):
    """A dataset file could not be downloaded (no network, host or mirror down, HTTP error)."""


class HashMismatchError(DownloadError):
    """A downloaded file does not have its registered checksum; it was deleted, not cached.

    Attributes
    ----------
    fname, url, expected, actual : str
    """

    def __init__(self, message: str, fname: str, url: str, expected: str, actual: str):
        super().__init__(message)
        self.fname, self.url, self.expected, self.actual = fname, url, expected, actual


@dataclass(frozen=True)
class DataFile:
    """One downloadable file of a dataset (see the header of ``data_registry.yaml``)."""

    fname: str
    url: str
    hash: str | None
    size: int | None
    unpack: bool
    source: str
    note: str = ""

    @property
    def unpack_dir(self) -> str:
        """Folder, next to the archive, that pooch unpacks it into."""
        return self.fname.removesuffix(".zip")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of the registry; the fields are the YAML keys."""

    name: str
    paper_name: str
    title: str
    task: str
    structure: str
    modality: str
    landing_page: str
    licence: str | None
    citation: str
    pixel_size: str | None
    files: tuple[DataFile, ...]
    reader: str
    reader_args: Mapping[str, Any]
    splits: Mapping[str, Mapping[str, Any]]
    default_split: str
    tile: int | None
    notes: str

    @property
    def size(self) -> int | None:
        """Total download size in bytes, ``None`` if any file's size is unknown."""
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)

    @property
    def hash_status(self) -> str:
        """``"sha256"`` (every file verified), ``"none"`` (no checksum could be sourced) or ``"partial"``."""
        known = [f.hash is not None for f in self.files]
        return "sha256" if all(known) else "none" if not any(known) else "partial"


@dataclass(frozen=True)
class Dataset2D:
    """A split of a registry dataset as 2D images and labels.

    Attributes
    ----------
    images : list of ndarray, shape (H, W) or (H, W, 3), the files' dtype
    labels : list of ndarray, shape (H, W)
        uint8 0/1 for ``task == "semantic"``, object ids (uint16 or wider) for ``"instance"``.
    names : list of str
        ``<sample>[_z<slice>][_y<row>_x<col>]``, one per image.
    task : {"semantic", "instance"}
    dataset, split : str
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    task: str
    dataset: str
    split: str


# ----------------------------------------------------------------------------- registry


def _check_keys(raw: Mapping, cls, where: str) -> None:
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    if unknown := set(raw) - names:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if missing := required - set(raw):
        raise ValueError(f"{where}: missing key(s) {', '.join(sorted(missing))}")


def _parse_file(raw: Mapping, where: str) -> DataFile:
    _check_keys(raw, DataFile, where)
    data_file = DataFile(**raw)
    if data_file.hash is None and not data_file.note:
        raise ValueError(f"{where}: hash is null, so `note` must say why no checksum could be sourced")
    if data_file.hash is not None and not _HASH.match(data_file.hash):
        raise ValueError(f"{where}: hash must look like 'sha256:<64 hex digits>', got {data_file.hash!r}")
    if data_file.unpack and not data_file.fname.endswith(".zip"):
        raise ValueError(f"{where}: only .zip files can be unpacked, got {data_file.fname}")
    return data_file


def _parse_entry(raw: Mapping, where: str) -> DatasetEntry:
    _check_keys(raw, DatasetEntry, where)
    where = f"{where} ({raw['name']})"
    files = tuple(_parse_file(f, f"{where}, file {i}") for i, f in enumerate(raw["files"]))
    entry = DatasetEntry(**{**raw, "files": files})
    if entry.task not in _TASKS:
        raise ValueError(f"{where}: task must be one of {_TASKS}, got {entry.task!r}")
    if entry.reader not in READERS:
        raise ValueError(f"{where}: unknown reader {entry.reader!r}; known: {', '.join(READERS)}")
    if entry.default_split not in entry.splits:
        raise ValueError(f"{where}: default_split {entry.default_split!r} is not among splits {list(entry.splits)}")
    if len({f.fname for f in files}) != len(files):
        raise ValueError(f"{where}: two files share a fname")
    return entry


def read_registry(path=None) -> dict[str, DatasetEntry]:
    """Read and validate a registry YAML.

    Parameters
    ----------
    path : str or Path, optional
        Default: ``$CTE_KIT_REGISTRY``, else the registry shipped with the package.

    Returns
    -------
    dict of str to DatasetEntry
        In file order.

    Raises
    ------
    ValueError
        Unknown or missing keys, a malformed checksum, a null checksum without a note, an unknown
        reader or task, duplicate names.
    """
    path = path or os.environ.get(REGISTRY_ENV)
    source = Path(path) if path else resources.files("cte_kit") / "assets" / "data_registry.yaml"
    raw = yaml.safe_load(source.read_text())
    entries = [_parse_entry(item, f"{source}: dataset {i}") for i, item in enumerate(raw["datasets"])]
    registry = {entry.name: entry for entry in entries}
    if len(registry) != len(entries):
        raise ValueError(f"{source}: dataset names must be unique")
    return registry


def list_datasets() -> list[DatasetEntry]:
    """The datasets of the active registry (see :func:`read_registry`), in file order."""
    return list(read_registry().values())


def _entry(name: str) -> DatasetEntry:
    registry = read_registry()
    if name not in registry:
        raise ValueError(f"unknown dataset '{name}'; known: {', '.join(registry)} (see `cte-kit datasets`)")
    return registry[name]


_MODALITY_WIDTH = 26


def format_table(entries) -> str:
    """Plain-text table of datasets for ``cte-kit datasets``.

    Columns: name, task, structure, modality (a long one without its details in brackets, so that
    the table fits 100 columns; the entry's ``modality`` has them), download size in MB (``?`` when not
    published), licence (``?`` when not verified) and checksum status (``sha256``, ``partial`` or
    ``none``: downloads without a published checksum are not verified).
    """
    rows = [("name", "task", "structure", "modality", "size MB", "licence", "checksum")]
    for e in entries:
        size = "?" if e.size is None else f"{e.size / 1e6:.1f}"
        modality = e.modality if len(e.modality) <= _MODALITY_WIDTH else e.modality.split(" (")[0]
        rows.append((e.name, e.task, e.structure, modality, size, e.licence or "?", e.hash_status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    mirror = os.environ.get(MIRROR_ENV) or "none (original hosts)"
    lines.append(f"\n{len(rows) - 1} datasets.\nCache: {data_dir()}\nMirror ({MIRROR_ENV}): {mirror}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- downloads


def data_dir() -> Path:
    """The cache folder: ``$CTE_KIT_DATA_DIR``, else ``pooch.os_cache("cte_kit")``."""
    return Path(os.environ.get(DATA_DIR_ENV) or pooch.os_cache("cte_kit"))


def _url(entry: DatasetEntry, data_file: DataFile) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{entry.name}/{data_file.fname}" if mirror else data_file.url


def _network_message(entry: DatasetEntry, data_file: DataFile, url: str, error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        reason = f"the server answered HTTP {error.response.status_code}"
    elif isinstance(error, requests.Timeout):
        reason = "the connection timed out"
    else:
        reason = "no connection could be made"
    message = f"could not download '{data_file.fname}' of dataset '{entry.name}' from {url}: {reason}."
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return (f"{message} {MIRROR_ENV}={mirror} is set: check that the mirror is running and holds "
                f"{entry.name}/{data_file.fname}, or unset {MIRROR_ENV} to use the original host.")
    return (f"{message} Check the network connection. Without internet access (or behind a firewall), set "
            f"{MIRROR_ENV} to a server that holds <mirror>/{entry.name}/{data_file.fname}, e.g. a workshop "
            f"host that ran `cte-kit fetch --all` and export_mirror().")


def _mismatch(entry: DatasetEntry, data_file: DataFile, url: str, error: ValueError) -> HashMismatchError:
    # pooch's message ("... expected <hash> but got <hash>. Deleted download ...") is the only place the
    # actual hash of the deleted file survives.
    found = re.search(r"but got ([0-9a-fA-F]+)", str(error))
    algorithm = data_file.hash.split(":")[0]
    actual = f"{algorithm}:{found.group(1)}" if found else "unknown"
    message = (
        f"checksum mismatch for '{data_file.fname}' of dataset '{entry.name}' downloaded from {url}:\n"
        f"  expected {data_file.hash}\n  actual   {actual}\n"
        "The download was deleted, nothing was cached. A download cut short (or an error page served "
        "instead of the file) causes this: run the fetch again. If it persists, the host changed the "
        f"file: check {entry.landing_page} and report it. A mirror ({MIRROR_ENV}) must serve "
        "byte-identical files."
    )
    if data_file.note:
        message += f"\nNote on this file: {data_file.note}"
    return HashMismatchError(message, data_file.fname, url, data_file.hash, actual)


def _fetch_file(store: pooch.Pooch, entry: DatasetEntry, data_file: DataFile, progressbar: bool) -> Path:
    archive = Path(store.abspath) / data_file.fname
    fresh = not archive.exists()
    url = store.get_url(data_file.fname)
    # A new Unzip per call: pooch's processor rewrites its extract_dir attribute when it runs.
    processor = pooch.Unzip(extract_dir=data_file.unpack_dir) if data_file.unpack else None
    try:
        store.fetch(data_file.fname, processor=processor, progressbar=progressbar)
    except requests.RequestException as error:
        raise DownloadError(_network_message(entry, data_file, url, error)) from error
    except ValueError as error:
        if data_file.hash is None or "hash" not in str(error):
            raise
        raise _mismatch(entry, data_file, url, error) from error
    except zipfile.BadZipFile as error:
        # Only reachable for files without a checksum: a truncated download looks like a bad zip.
        archive.unlink(missing_ok=True)
        raise DownloadError(f"'{data_file.fname}' of dataset '{entry.name}' from {url} is not a valid zip "
                            "archive (truncated download?); it was deleted: run the fetch again.") from error
    if fresh and data_file.hash is None:
        digest = pooch.file_hash(str(archive))
        warnings.warn(f"'{data_file.fname}' of dataset '{entry.name}' has no published checksum, so the "
                      f"download is unverified (its sha256 is {digest}). {data_file.note}", CTEKitWarning,
                      stacklevel=2)
    return archive.parent / data_file.unpack_dir if data_file.unpack else archive


def fetch(name: str, progressbar: bool = True) -> list[Path]:
    """Download (once) and unpack every file of a dataset into the cache.

    Files already in the cache with the right checksum are not downloaded again. A file is moved into
    the cache only after its checksum matched, so an interrupted or corrupt download never stays.

    Parameters
    ----------
    name : str
        Registry name (see ``cte-kit datasets``).
    progressbar : bool
        Show a download progress bar.

    Returns
    -------
    list of Path
        One per registry file: the folder it was unpacked into, or the file itself.

    Raises
    ------
    HashMismatchError
        A download does not match its registered checksum (the message names file, expected and
        actual checksum).
    DownloadError
        No connection, HTTP error, or an unverifiable archive that is not a valid zip.
    ValueError
        Unknown dataset name.
    """
    entry = _entry(name)
    store = pooch.create(
        path=data_dir() / entry.name,
        base_url="",
        registry={f.fname: f.hash for f in entry.files},
        urls={f.fname: _url(entry, f) for f in entry.files},
    )
    return [_fetch_file(store, entry, data_file, progressbar) for data_file in entry.files]


def fetch_all(progressbar: bool = True) -> list[Path]:
    """Fetch every registry dataset (e.g. before a workshop); failures do not stop the others.

    Returns
    -------
    list of Path
        As :func:`fetch`, for all datasets.

    Raises
    ------
    DownloadError
        After trying them all, if any dataset failed; the message lists each failure.
    """
    paths, failures = [], []
    for entry in list_datasets():
        try:
            paths.extend(fetch(entry.name, progressbar=progressbar))
        except DownloadError as error:
            failures.append(f"- {entry.name}: {error}")
    if failures:
        raise DownloadError(f"{len(failures)} dataset(s) could not be fetched:\n" + "\n".join(failures))
    return paths


def export_mirror(dest) -> list[Path]:
    """Lay out the already-fetched files as a mirror: ``dest/<dataset>/<fname>``.

    Serve ``dest`` over HTTP and point ``CTE_KIT_MIRROR`` at it. Files are hard-linked where
    possible (no extra disk space), else copied. Datasets not fetched yet are skipped with a warning.
    (The cache itself has the same layout, plus the unpacked folders, and can be served directly.)

    Returns
    -------
    list of Path
        The files now in ``dest``.
    """
    dest, exported, absent = Path(dest), [], []
    if dest.resolve() == data_dir().resolve():
        raise ValueError(f"{dest} is the cache itself: serve it directly, or export to another folder")
    for entry in list_datasets():
        for data_file in entry.files:
            source = data_dir() / entry.name / data_file.fname
            target = dest / entry.name / data_file.fname
            if not source.exists():
                absent.append(f"{entry.name}/{data_file.fname}")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or links not supported
                shutil.copy2(source, target)
            exported.append(target)
    if absent:
        warnings.warn(f"Not fetched yet, so not in the mirror: {', '.join(absent)}. Run `cte-kit fetch NAME` "
                      "first.", CTEKitWarning, stacklevel=2)
    return exported


# ----------------------------------------------------------------------------- loading


def load_dataset(name: str, split: str | None = None, limit: int | None = None, progress: bool = True) -> Dataset2D:
    """Fetch a dataset and load one split as 2D images with labels.

    2D images are kept whole; 3D data (``tile`` in the registry) is cut into z-slices and
    non-overlapping 256x256 patches. Only images and patches with foreground labels are kept, as in
    the paper (see :mod:`cte_kit.data.readers`).

    Parameters
    ----------
    name : str
        Registry name.
    split : str, optional
        One of the entry's splits; default: its ``default_split``.
    limit : int, optional
        Stop after this many images (for very large datasets such as MitoEM).
    progress : bool
        Show download and loading progress bars.

    Returns
    -------
    Dataset2D

    Raises
    ------
    ValueError
        Unknown dataset or split, or no image with labels in the split.
    ArchiveLayoutError
        The unpacked files are not where the registry expects them (the message names the path).
    """
    entry = _entry(name)
    split = split or entry.default_split
    if split not in entry.splits:
        raise ValueError(f"dataset '{name}' has no split '{split}'; it has: {', '.join(entry.splits)}")
    fetch(name, progressbar=progress)
    root = data_dir() / entry.name
    args = {**entry.reader_args, **entry.splits[split]}
    selection = args.pop("select", {})
    samples = select_samples(READERS[entry.reader](root, **args), root, **selection)
    bar = tqdm(samples, desc=f"{name}/{split}", unit="sample", disable=not progress)
    patches = list(islice(chain.from_iterable(to_patches(s, entry.tile, entry.task) for s in bar), limit))
    bar.close()
    if not patches:
        raise ValueError(f"dataset '{name}', split '{split}': no image with labelled foreground was found")
    names, images, labels = (list(column) for column in zip(*patches))
    return Dataset2D(images, labels, names, entry.task, entry.name, split)

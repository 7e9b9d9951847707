"""The result store: every score a run computes, keyed by everything that changes it.

One SQLite file (write-ahead log, one transaction per unit of work, so a crash loses at most the
units in flight - the one being written and the one the runner computes meanwhile - and never leaves
half of one behind) holds:

* ``scores`` - one row per (model key, image key, estimator key, seed): the per-image value
  ``CTE_i`` (NaN where the clean and perturbed foregrounds are both empty: *empty*, which is not
  the same as *missing*, a row that was never written);
* ``objects`` - per-object values of one model on one image under one estimator key and seed: the
  object ids of the stored clean prediction and one value each (how each object survives a
  perturbation, :meth:`Setting.objects_key <cte_kit.runs.units.Setting.objects_key>`, and the
  quality-control score of :mod:`cte_kit.runs.quality`);
* ``predictions`` - each model's clean prediction of each image (foreground mask and instance
  labels, compressed), which the guards and the performance table read instead of predicting again;
* ``performance`` - true performance per (model key, image key, labels hash), filled by the
  evaluation floor when labels are given, so labels added later cost no CTE recomputation;
* ``estimates`` - one row per (model key, inputs key, estimator key) of the other estimators
  (:mod:`cte_kit.estimators`): the model's score, its per-image values and its cost in clean forward
  passes, or the reason it does not apply; the inputs key hashes the images, and the labels, source
  data or bank members where the estimator reads them;
* ``failures`` - what failed, where, with its whole traceback;
* ``models`` and ``images`` - the human names and settings behind the keys (and what a loaded
  model can give: features, instances), and ``meta`` - the
  file kind, schema version and the kit version that wrote it.

A **model key** hashes the bank entry's kind, settings and weights (the files' contents) with the
kit version, so editing a threshold or retraining a model recomputes that model and no other. An
**image key** is the image's name and a hash of its pixels. An **estimator key** names every
parameter that changes a value (perturbation, consistency, number of draws, boundary width).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import sqlite3
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..data.outputs import atomic_path

__all__ = ["KIND", "SCHEMA_VERSION", "PERFORMANCE_COLUMNS", "ResultStore", "StoreError", "Score", "Estimate", "Failure",
           "ObjectValues", "array_digest", "write_csv", "write_parquet", "describe", "digest", "file_digest", "image_key", "kit_version"]

#: What the ``meta`` table says this file is; another value is a file of another program.
KIND = "cte_kit results"
#: Bumped when a table changes; a file with a newer schema is refused, never rewritten. Schema 2 added the
#: ``objects`` table; a schema-1 file gets it when it is opened (its other tables are unchanged).
SCHEMA_VERSION = 2
#: Columns of the performance table besides its keys (:data:`cte_kit.evaluation.performance.PERFORMANCE_METRICS`).
PERFORMANCE_COLUMNS = ("f1", "iou", "map", "ap50")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (model_key TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
    traits TEXT);
CREATE TABLE IF NOT EXISTS images (image_key TEXT PRIMARY KEY, name TEXT NOT NULL, height INTEGER, width INTEGER);
CREATE TABLE IF NOT EXISTS scores (
    model_key TEXT NOT NULL, image_key TEXT NOT NULL, estimator_key TEXT NOT NULL, seed INTEGER NOT NULL,
    value REAL, PRIMARY KEY (model_key, image_key, estimator_key, seed));
CREATE TABLE IF NOT EXISTS objects (
    model_key TEXT NOT NULL, image_key TEXT NOT NULL, estimator_key TEXT NOT NULL, seed INTEGER NOT NULL,
    ids BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (model_key, image_key, estimator_key, seed));
CREATE TABLE IF NOT EXISTS predictions (
    model_key TEXT NOT NULL, image_key TEXT NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    foreground BLOB NOT NULL, labels BLOB NOT NULL, PRIMARY KEY (model_key, image_key));
CREATE TABLE IF NOT EXISTS performance (
    model_key TEXT NOT NULL, image_key TEXT NOT NULL, labels_key TEXT NOT NULL,
    f1 REAL, iou REAL, map REAL, ap50 REAL, PRIMARY KEY (model_key, image_key, labels_key));
CREATE TABLE IF NOT EXISTS estimates (
    model_key TEXT NOT NULL, inputs_key TEXT NOT NULL, estimator_key TEXT NOT NULL, score REAL,
    per_image TEXT NOT NULL, cost REAL, note TEXT NOT NULL, PRIMARY KEY (model_key, inputs_key, estimator_key));
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model_key TEXT NOT NULL, model TEXT NOT NULL, image_key TEXT,
    image TEXT, setting TEXT NOT NULL, error TEXT NOT NULL, traceback TEXT NOT NULL, time REAL NOT NULL);
"""


class StoreError(ValueError):
    """The file is not a cte_kit result store this version can read (another kind, a newer schema, corrupt),
    or another process holds it (``busy``)."""

    def __init__(self, message: str, busy: bool = False):
        super().__init__(message)
        self.busy = busy


@dataclass(frozen=True)
class Score:
    """One stored value: ``CTE_i`` of one model on one image under one estimator and seed (NaN = empty)."""

    model_key: str
    image_key: str
    estimator_key: str
    seed: int
    value: float


@dataclass(frozen=True)
class ObjectValues:
    """One value per object of a model's clean prediction of one image, under one estimator key and seed.

    Attributes
    ----------
    model_key, image_key, estimator_key : str
    seed : int
    ids : (n,) int64 ndarray
        Object ids of the stored clean prediction (:meth:`ResultStore.clean_prediction`), increasing.
    value : (n,) float64 ndarray
        One value per object (NaN: undefined).
    """

    model_key: str
    image_key: str
    estimator_key: str
    seed: int
    ids: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class Estimate:
    """One estimator's result for one model on one set of inputs.

    Attributes
    ----------
    model_key, inputs_key, estimator_key : str
    score : float
        The model's score (NaN: undefined, or not applicable).
    per_image : tuple of float
        Per-image values in the target's image order (empty when not applicable).
    cost : float
        Wall time in clean forward passes of the same images (NaN when not applicable).
    note : str
        Why the estimator does not apply to this model ('' when it does).
    """

    model_key: str
    inputs_key: str
    estimator_key: str
    score: float
    per_image: tuple
    cost: float
    note: str = ""


@dataclass(frozen=True)
class Failure:
    """A unit of work that raised: which model (and image, when one image was the cause), under which
    setting, the error's last line and its whole traceback."""

    model_key: str
    model: str
    image_key: str | None
    image: str | None
    setting: str
    error: str
    traceback: str

    @classmethod
    def from_error(cls, error: BaseException, model_key: str, model: str, setting: str, image_key: str | None = None,
                   image: str | None = None) -> "Failure":
        """The failure an exception describes, with its last line and its whole traceback."""
        return cls(model_key, model, image_key, image, setting,
                   "".join(traceback.format_exception_only(type(error), error)).strip(),
                   "".join(traceback.format_exception(type(error), error, error.__traceback__)))


def kit_version() -> str:
    """The version of the kit writing a store (part of every model key)."""
    from .. import __version__

    return __version__


def digest(*parts: bytes | str) -> str:
    """A 16-hex-digit SHA-256 digest of the parts, each length-prefixed so that no two lists collide."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()[:16]


def image_key(name: str, image: np.ndarray) -> str:
    """``name#<hash of dtype, shape and pixels>``: a renamed file or an edited image is a new image.

    Parameters
    ----------
    name : str
        The image's name (file stem); also what seeds its perturbations.
    image : ndarray
        The raw image as loaded.
    """
    return f"{name}#{array_digest(image)}"


def array_digest(*arrays: np.ndarray) -> str:
    """A :func:`digest` of arrays' dtypes, shapes and contents, in order."""
    contiguous = [np.ascontiguousarray(array) for array in arrays]
    return digest(*(part for array in contiguous for part in (str(array.dtype), str(array.shape), array.tobytes())))


def _check_prediction(foreground: np.ndarray, labels: np.ndarray, image: str) -> tuple[int, int]:
    foreground, labels = np.asarray(foreground), np.asarray(labels)
    if foreground.ndim != 2 or labels.shape != foreground.shape:
        raise ValueError(f"the clean prediction of {image} needs a (H, W) foreground and labels of the same shape, got "
                         f"{foreground.shape} and {labels.shape}")
    return foreground.shape


class _Compressed:
    """A file-like sink that compresses what is written as it comes, so that a large image's labels are never
    held twice (once as an .npy buffer, once compressed)."""

    def __init__(self):
        self._compressor, self._parts = zlib.compressobj(3), []

    def write(self, data) -> int:
        self._parts.append(self._compressor.compress(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts) + self._compressor.flush()


def _pack(foreground: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    labels = np.asarray(labels)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    # The smallest type that holds the ids (read back as int32): a quarter or half of the bytes to
    # compress and to decompress. zlib level 3 takes half the time of level 6 for 10-20 % more bytes.
    kind = np.uint8 if 0 <= low and high < 2**8 else np.uint16 if 0 <= low and high < 2**16 else np.int32
    sink = _Compressed()
    # the .npy file np.save writes, its data band by band: no whole copy of the labels, cast or as bytes
    np.lib.format.write_array_header_1_0(sink, {"descr": np.lib.format.dtype_to_descr(np.dtype(kind)),
                                                "fortran_order": False, "shape": labels.shape})
    rows = max(1, (1 << 22) // max(1, labels.shape[1]))  # (H, W): _check_prediction came first
    for start in range(0, labels.shape[0], rows):
        sink.write(np.ascontiguousarray(labels[start:start + rows], dtype=kind).data)
    return zlib.compress(np.packbits(foreground.astype(bool, copy=False)), 3), sink.getvalue()


def _unpack(height: int, width: int, foreground: bytes, labels: bytes) -> tuple[np.ndarray, np.ndarray]:
    bits = np.frombuffer(zlib.decompress(foreground), dtype=np.uint8)
    mask = np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)
    return mask, np.load(io.BytesIO(zlib.decompress(labels)), allow_pickle=False).astype(np.int32, copy=False)


def _pack_objects(ids: np.ndarray, value: np.ndarray) -> tuple[bytes, bytes]:
    ids, value = np.asarray(ids, dtype="<i8"), np.asarray(value, dtype="<f8")
    if ids.ndim != 1 or value.shape != ids.shape:
        raise ValueError(f"object values need one value per object id, got {ids.shape} ids and {value.shape} values")
    return zlib.compress(ids.tobytes(), 6), zlib.compress(value.tobytes(), 6)


def _unpack_objects(ids: bytes, value: bytes) -> tuple[np.ndarray, np.ndarray]:
    ids, value = np.frombuffer(zlib.decompress(ids), "<i8"), np.frombuffer(zlib.decompress(value), "<f8")
    if ids.shape != value.shape:
        raise ValueError(f"{ids.size} object ids but {value.size} values")
    return ids.astype(np.int64), value.astype(np.float64)


def _nan_to_null(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _null_to_nan(value) -> float:
    return math.nan if value is None else float(value)


#: Seconds a connection waits for another process's lock (a writer, a store being created) before giving up.
BUSY_TIMEOUT = 60.0


def _check_file(file: Path) -> None:
    """Refuse, before SQLite touches it, a path that cannot be a writable result store."""
    if file.is_dir():
        raise StoreError(f"{file} is a folder, not a result store; give the name of a file, e.g. {file / 'results.sqlite'}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create the folder of the result store {file}: {error}") from None
    if file.exists() and file.stat().st_size > 0:
        with file.open("rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                raise StoreError(f"{file} is not a cte_kit result store (not an SQLite file); choose another --out or "
                                 "move it away")
    # SQLite keeps its write-ahead log beside the file: the folder must be writable as well
    if not os.access(file.parent, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
        raise StoreError(f"{file} cannot be written (a read-only file or folder): a run writes its results as it "
                         "goes; copy the store to a writable folder, or choose another --out")


class _Connection:
    """The store's SQLite connection, whose errors of the file (corrupt, locked, read-only, full disk) are
    :class:`StoreError` naming the file; a misuse of SQLite stays a bug. Reads are fetched whole, so
    that a corrupt page met while iterating is reported the same way."""

    def __init__(self, path: str, connection: sqlite3.Connection):
        self.path, self._connection = path, connection

    def _error(self, error: sqlite3.Error) -> Exception:
        if not (type(error) is sqlite3.DatabaseError or isinstance(error, sqlite3.OperationalError)):
            return error
        message = str(error)
        busy = "locked" in message or "busy" in message
        if busy:
            advice = f"another process holds it (waited {BUSY_TIMEOUT:g} s); wait for it or choose another --out"
        elif "readonly" in message or "read-only" in message:
            advice = "it cannot be written (a read-only file or folder); copy it to a writable folder or choose another --out"
        elif "full" in message:
            advice = "the disk is full; free some space and run again (what was written is kept)"
        else:
            advice = "the file is corrupt or not a cte_kit result store; move it away or choose another --out"
        return StoreError(f"result store {self.path}: {message}: {advice}", busy=busy)

    def execute(self, sql: str, parameters: Sequence = ()) -> "_Rows":
        try:
            return _Rows(self._connection.execute(sql, parameters).fetchall())
        except sqlite3.Error as error:
            raise self._error(error) from None

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> None:
        try:
            self._connection.executemany(sql, rows)
        except sqlite3.Error as error:
            raise self._error(error) from None

    def rollback(self) -> None:
        """Roll back an open transaction (nothing when none is open)."""
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def close(self) -> None:
        self._connection.close()


class _Rows(list):
    """Fetched rows, read as from a cursor."""

    def fetchone(self):
        return self[0] if self else None

    def fetchall(self):
        return list(self)


class ResultStore:
    """A result store in one SQLite file (or in memory, ``":memory:"``, for notebooks).

    Parameters
    ----------
    path : str or Path
        Created with its parent folders if absent; checked (kind, schema) if present.

    Raises
    ------
    StoreError
        The file is not a SQLite database, is another program's database, or was written by a
        newer schema. The file is left untouched.

    Notes
    -----
    Only one process writes (the client of a run; Dask workers return rows to it), so the store
    needs no locking beyond SQLite's own. Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        memory = self.path == ":memory:"
        if not memory:
            _check_file(Path(path))
        # the runner writes from one writer thread while it computes the next unit; never two threads at once
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=False)
        self._db = _Connection(self.path, connection)
        try:
            self._initialise(memory)
        except BaseException:
            connection.close()
            raise

    def _initialise(self, memory: bool) -> None:
        # One exclusive transaction creates the tables and meta rows of a new file, or checks an
        # existing one: a process that opens the file meanwhile waits, then sees a whole store or none.
        # An interrupted creation (a full disk) leaves no table behind, and the next open creates it.
        self._db.execute("BEGIN EXCLUSIVE")
        try:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables:
                self._check(tables)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if not tables:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)",
                                     [("kind", KIND), ("schema", str(SCHEMA_VERSION)), ("kit", kit_version())])
            else:  # an older schema now has every table of this one
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema' AND CAST(value AS INTEGER) < ?",
                                 (str(SCHEMA_VERSION), SCHEMA_VERSION))
            self._db.execute("COMMIT")
        finally:
            self._db.rollback()
        if not memory:
            self._write_ahead_log()
            self._db.execute("PRAGMA synchronous=NORMAL")

    def _write_ahead_log(self) -> None:
        # The switch to WAL escalates a shared lock to the exclusive one. When another process is
        # already waiting for that lock (its BEGIN EXCLUSIVE above), SQLite answers "locked" at once
        # rather than let both wait on each other; that process is done in milliseconds, so try again
        # until the busy timeout has passed, as any other wait for the file does.
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except StoreError as error:
                if not error.busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _check(self, tables: set[str]) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if meta.get("kind") != KIND:
            raise StoreError(f"{self.path} is an SQLite file of another kind (not '{KIND}'); choose another --out")
        if int(meta.get("schema", 0)) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer cte_kit (schema {meta['schema']}, kit "
                             f"{meta.get('kit')}; this is schema {SCHEMA_VERSION}, kit {kit_version()}): upgrade "
                             "cte_kit to read it")

    # -- context ------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, str]:
        """``kind``, ``schema`` and ``kit`` (the version that created the file)."""
        return dict(self._db.execute("SELECT key, value FROM meta"))

    # -- writing ------------------------------------------------------------------------------
    def write(self, models: Mapping[str, tuple[str, str]] = {}, images: Mapping[str, tuple[str, int, int]] = {},
              scores: Iterable[Score] = (), predictions: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {},
              failures: Iterable[Failure] = (), estimates: Iterable[Estimate] = (),
              traits: Mapping[str, Mapping] = {}, objects: Iterable[ObjectValues] = ()) -> int:
        """Upsert one unit of work in one transaction; returns the number of score and estimate rows written.

        Parameters
        ----------
        models : mapping of model key -> (name, description JSON)
        images : mapping of image key -> (name, height, width)
        scores : iterable of Score
        predictions : mapping of (model key, image key) -> ((H, W) bool foreground, (H, W) int labels)
        failures : iterable of Failure
        estimates : iterable of Estimate
        traits : mapping of model key -> {trait: value}
            What a loaded model can give (``grey_box``, ``output``), for estimators' applicability.
        objects : iterable of ObjectValues
            Per-object values (not counted in the returned number).
        """
        estimate_rows = [(e.model_key, e.inputs_key, e.estimator_key, _nan_to_null(e.score),
                          json.dumps([_nan_to_null(v) for v in e.per_image]), _nan_to_null(e.cost), e.note)
                         for e in estimates]
        rows = [(s.model_key, s.image_key, s.estimator_key, int(s.seed), _nan_to_null(s.value)) for s in scores]
        with self._transaction() as db:
            db.executemany("INSERT INTO models (model_key, name, description) VALUES (?, ?, ?) ON CONFLICT (model_key) "
                           "DO UPDATE SET name = excluded.name, description = excluded.description",
                           [(key, name, description) for key, (name, description) in models.items()])
            db.executemany("UPDATE models SET traits = ? WHERE model_key = ?",
                           [(describe(dict(values)), key) for key, values in traits.items()])
            db.executemany("INSERT OR REPLACE INTO estimates VALUES (?, ?, ?, ?, ?, ?, ?)", estimate_rows)
            db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)",
                           [(key, name, int(h), int(w)) for key, (name, h, w) in images.items()])
            db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                           [(o.model_key, o.image_key, o.estimator_key, int(o.seed), *_pack_objects(o.ids, o.value))
                            for o in objects])
            db.executemany("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?)",
                           [(m, i, *_check_prediction(foreground, labels, i), *_pack(foreground, labels))
                            for (m, i), (foreground, labels) in predictions.items()])
            db.executemany("INSERT INTO failures (model_key, model, image_key, image, setting, error, traceback, time) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(f.model_key, f.model, f.image_key, f.image, f.setting, f.error, f.traceback, time.time())
                            for f in failures])
        return len(rows) + len(estimate_rows)

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        finally:
            self._db.rollback()  # after an error, or a COMMIT that failed (a full disk): nothing half-written

    def clear_failures(self, model_key: str) -> None:
        """Forget the recorded failures of a model (before it is retried)."""
        with self._transaction() as db:
            db.execute("DELETE FROM failures WHERE model_key = ?", (model_key,))

    def put_performance(self, rows: Iterable[tuple[str, str, str, Mapping[str, float]]]) -> None:
        """Upsert (model key, image key, labels key, {metric: value}) rows of true performance."""
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO performance VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(m, i, l, *(_nan_to_null(values.get(c, math.nan)) for c in PERFORMANCE_COLUMNS))
                            for m, i, l, values in rows])

    # -- reading ------------------------------------------------------------------------------
    def done(self, model_key: str, estimator_keys: Sequence[str], seed: int, table: str = "scores") -> dict[str, set[str]]:
        """The image keys that have a row, for each estimator key, of one model and seed (in ``scores`` or ``objects``)."""
        if table not in ("scores", "objects"):
            raise ValueError(f"done() reads the scores or objects table, not {table!r}")
        found: dict[str, set[str]] = {key: set() for key in estimator_keys}
        for image, estimator in self._db.execute(
                f"SELECT image_key, estimator_key FROM {table} WHERE model_key = ? AND seed = ?", (model_key, int(seed))):
            if estimator in found:
                found[estimator].add(image)
        return found

    def predicted(self, model_key: str) -> set[str]:
        """Image keys whose clean prediction by this model is stored."""
        return {row[0] for row in self._db.execute("SELECT image_key FROM predictions WHERE model_key = ?", (model_key,))}

    def scores(self, model_keys: Sequence[str] | None = None, image_keys: Sequence[str] | None = None) -> list[Score]:
        """Stored scores, optionally of some models and images only (ordered by model, estimator, seed, image)."""
        images = set(image_keys) if image_keys is not None else None
        columns = "SELECT model_key, image_key, estimator_key, seed, value FROM scores"
        if model_keys is None:
            batches = [self._db.execute(f"{columns} ORDER BY model_key, estimator_key, seed, image_key")]
        else:
            # one primary-key lookup per model: reading the whole table per model grows with the store
            batches = [self._db.execute(f"{columns} WHERE model_key = ? ORDER BY estimator_key, seed, image_key", (key,))
                       for key in sorted(set(model_keys))]
        return [Score(m, i, e, int(s), _null_to_nan(v)) for batch in batches for m, i, e, s, v in batch
                if images is None or i in images]

    def objects(self, model_key: str, estimator_key: str, seed: int,
                image_keys: Sequence[str] | None = None) -> dict[str, ObjectValues]:
        """``{image key: ObjectValues}`` of one model under one estimator key and seed.

        Raises
        ------
        StoreError
            A stored blob is corrupt.
        """
        wanted = set(image_keys) if image_keys is not None else None
        found = {}
        for image, ids, value in self._db.execute(
                "SELECT image_key, ids, value FROM objects WHERE model_key = ? AND estimator_key = ? AND seed = ?",
                (model_key, estimator_key, int(seed))):
            if wanted is not None and image not in wanted:
                continue
            try:
                found[image] = ObjectValues(model_key, image, estimator_key, int(seed), *_unpack_objects(ids, value))
            except Exception as error:
                raise StoreError(f"the stored object values of {image} by model {model_key} in {self.path} are "
                                 f"corrupt ({error}); delete the store or run on another --out") from None
        return found

    def estimates(self, model_keys: Sequence[str]) -> dict[tuple[str, str, str], Estimate]:
        """``{(model key, inputs key, estimator key): Estimate}`` of these models."""
        found = {}
        for key in dict.fromkeys(model_keys):
            for m, i, e, score, per_image, cost, note in self._db.execute(
                    "SELECT * FROM estimates WHERE model_key = ?", (key,)):
                found[m, i, e] = Estimate(m, i, e, _null_to_nan(score), tuple(map(_null_to_nan, json.loads(per_image))),
                                          _null_to_nan(cost), note)
        return found

    def traits(self, model_keys: Sequence[str]) -> dict[str, dict]:
        """What each loaded model could give (``grey_box``, ``output``), for the models that were ever loaded."""
        found = {}
        for key in dict.fromkeys(model_keys):
            row = self._db.execute("SELECT traits FROM models WHERE model_key = ?", (key,)).fetchone()
            if row is not None and row[0] is not None:
                found[key] = json.loads(row[0])
        return found

    def clean_prediction(self, model_key: str, image_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A stored clean prediction: ``((H, W) bool foreground, (H, W) int32 labels)``, or None.

        Raises
        ------
        StoreError
            The stored blob is corrupt.
        """
        row = self._db.execute("SELECT height, width, foreground, labels FROM predictions WHERE model_key = ? AND "
                               "image_key = ?", (model_key, image_key)).fetchone()
        if row is None:
            return None
        try:
            return _unpack(*row)
        except Exception as error:
            raise StoreError(f"the stored prediction of {image_key} by model {model_key} in {self.path} is corrupt "
                             f"({error}); delete the store or run on another --out") from None

    def performance(self, labels_keys: Mapping[str, str]) -> dict[tuple[str, str], dict[str, float]]:
        """``{(model key, image key): {metric: value}}`` computed from the given labels only.

        Parameters
        ----------
        labels_keys : mapping of image key -> labels key
            The labels of the run being reported (:func:`cte_kit.evaluation.performance.fill_performance`
            returns them). Values computed from other labels of the same image (an earlier run's)
            are not returned: performance is never taken from labels the caller did not give.
        """
        found = {}
        for image, labels in labels_keys.items():
            for m, *values in self._db.execute(
                    f"SELECT model_key, {', '.join(PERFORMANCE_COLUMNS)} FROM performance WHERE image_key = ? AND "
                    "labels_key = ?", (image, labels)):
                found[m, image] = dict(zip(PERFORMANCE_COLUMNS, map(_null_to_nan, values)))
        return found

    def has_performance(self, model_key: str, image_key: str, labels_key: str) -> bool:
        return self._db.execute("SELECT 1 FROM performance WHERE model_key = ? AND image_key = ? AND labels_key = ?",
                                (model_key, image_key, labels_key)).fetchone() is not None

    def keys_by_name(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Every key stored under each model name and each image name: ``(models, images)``.

        A model whose threshold or weights changed, or an image whose pixels changed, has a new key
        under the same name, and its old rows stay in the store: a name alone does not say which
        rows are meant. Readers report a run from its own keys (:class:`cte_kit.runs.runner.RunReport`);
        this is how a reader without one checks that the store holds a single key per name.
        """
        models: dict[str, list[str]] = {}
        images: dict[str, list[str]] = {}
        for name, key in self._db.execute("SELECT name, model_key FROM models ORDER BY name, model_key"):
            models.setdefault(name, []).append(key)
        for name, key in self._db.execute("SELECT name, image_key FROM images ORDER BY name, image_key"):
            images.setdefault(name, []).append(key)
        return models, images

    def labels_keys(self, image_keys: Sequence[str]) -> dict[str, list[str]]:
        """The labels keys that performance was computed from, for each of these images that has any."""
        found: dict[str, list[str]] = {}
        for image in dict.fromkeys(image_keys):
            keys = [row[0] for row in self._db.execute(
                "SELECT DISTINCT labels_key FROM performance WHERE image_key = ? ORDER BY labels_key", (image,))]
            if keys:
                found[image] = keys
        return found

    def failures(self, model_keys: Sequence[str] | None = None) -> list[Failure]:
        """Recorded failures, oldest first."""
        rows = self._db.execute("SELECT model_key, model, image_key, image, setting, error, traceback FROM failures "
                                "ORDER BY id")
        keys = set(model_keys) if model_keys is not None else None
        return [Failure(*row) for row in rows if keys is None or row[0] in keys]

    def count(self, table: str) -> int:
        """Rows in one table (``scores``, ``estimates``, ``predictions``, ``performance``, ``failures``, ``models``,
        ``images``, ``objects``)."""
        if table not in ("scores", "estimates", "predictions", "performance", "failures", "models", "images", "objects"):
            raise ValueError(f"unknown table {table!r}")
        return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # -- export -------------------------------------------------------------------------------
    def table(self, model_keys: Iterable[str] | None = None, image_keys: Iterable[str] | None = None,
              estimators: Iterable[tuple[str, int]] | None = None) -> dict[str, list]:
        """The scores joined with model and image names, column by column (for CSV, Parquet, pandas).

        Parameters
        ----------
        model_keys, image_keys : iterable of str, optional
            Only the rows of these models and images (a run's keys,
            :class:`cte_kit.runs.runner.RunReport`); default: every row of the store.
        estimators : iterable of (estimator key, seed), optional
            Only the rows of these settings.
        """
        columns = ("model", "model_key", "image", "image_key", "estimator_key", "seed", "value")
        models = set(model_keys) if model_keys is not None else None
        images = set(image_keys) if image_keys is not None else None
        settings = {(key, int(seed)) for key, seed in estimators} if estimators is not None else None
        rows = [r for r in self._db.execute(
            "SELECT m.name, s.model_key, i.name, s.image_key, s.estimator_key, s.seed, s.value FROM scores s "
            "LEFT JOIN models m USING (model_key) LEFT JOIN images i USING (image_key) "
            "ORDER BY m.name, s.estimator_key, s.seed, i.name")
            if (models is None or r[1] in models) and (images is None or r[3] in images)
            and (settings is None or (r[4], r[5]) in settings)]
        return {column: [_null_to_nan(r[k]) if column == "value" else r[k] for r in rows]
                for k, column in enumerate(columns)}

    def to_csv(self, path: str | Path, **selection) -> Path:
        """Write the scores table (:meth:`table`, with its ``selection``) as CSV; NaN (empty foreground) as an
        empty field."""
        return write_csv(self.table(**selection), path)

    def to_parquet(self, path: str | Path, **selection) -> Path:
        """Write the scores table (:meth:`table`, with its ``selection``) as Parquet (needs ``pyarrow``)."""
        return write_parquet(self.table(**selection), path)


def write_csv(columns: Mapping[str, Sequence], path: str | Path) -> Path:
    """Write columns (name -> values, of equal length) as CSV with a header; NaN as an empty field."""
    path = Path(path)
    with atomic_path(path) as partial, partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in zip(*columns.values()):
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return path


def write_parquet(columns: Mapping[str, Sequence], path: str | Path) -> Path:
    """Write columns (name -> values) as Parquet (needs ``pyarrow``)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet export needs pyarrow: pip install pyarrow (or export CSV)") from None
    path = Path(path)
    with atomic_path(path) as partial:
        pq.write_table(pa.table({name: list(values) for name, values in columns.items()}), partial)
    return path


def describe(payload: Mapping) -> str:
    """Canonical JSON of a description (sorted keys), as stored and hashed."""
    return json.dumps(payload, sort_keys=True, default=str)


def file_digest(path: str | Path) -> str:
    """Digest of a weights file, or of every file under a model folder (names and contents)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return digest("missing", str(path))
    hasher = hashlib.sha256()
    for file in files:
        if path.is_dir():  # a single file is its contents; a folder also its layout
            hasher.update(str(file.relative_to(path)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()[:16]


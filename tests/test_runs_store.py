"""The result store: keys, upserts, transactions, clear errors, export."""

import csv
import math
import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest

from cte_kit.runs.store import (KIND, SCHEMA_VERSION, Failure, ResultStore, Score, StoreError, file_digest,
                                image_key)


def _labels():
    labels = np.zeros((5, 7), np.int32)
    labels[1:3, 1:4] = 3
    labels[3:5, 5:7] = 9
    return labels


def test_rows_round_trip_and_empty_is_not_missing(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        written = store.write(scores=[Score("m@1", "a#1", "gamma:0.7|hard|n_pert=1", 0, 0.75),
                                      Score("m@1", "b#2", "gamma:0.7|hard|n_pert=1", 0, math.nan)])
        assert written == 2
        rows = {s.image_key: s.value for s in store.scores()}
        assert rows["a#1"] == 0.75 and math.isnan(rows["b#2"])  # NaN = empty foreground, stored as a row
        assert store.done("m@1", ["gamma:0.7|hard|n_pert=1", "other"], 0) == {
            "gamma:0.7|hard|n_pert=1": {"a#1", "b#2"}, "other": set()}
        assert store.done("m@1", ["gamma:0.7|hard|n_pert=1"], seed=1) == {"gamma:0.7|hard|n_pert=1": set()}
        # an upsert by key replaces, never duplicates
        store.write(scores=[Score("m@1", "a#1", "gamma:0.7|hard|n_pert=1", 0, 0.5)])
        assert store.count("scores") == 2
        assert {s.image_key: s.value for s in store.scores()}["a#1"] == 0.5
        assert store.meta == {"kind": KIND, "schema": str(SCHEMA_VERSION), "kit": store.meta["kit"]}


def test_a_unit_is_written_whole_or_not_at_all(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(ValueError):
            # the second prediction is not a mask: the scores of the same unit are rolled back with it
            store.write(scores=[Score("m@1", "a#1", "k", 0, 0.5)],
                        predictions={("m@1", "a#1"): (np.ones((2, 2), bool), np.zeros((2, 2), np.int32)),
                                     ("m@1", "b#1"): (np.ones(3, bool), np.zeros((2, 2), np.int32))})
        assert store.count("scores") == 0 and store.count("predictions") == 0


def test_clean_predictions_round_trip(tmp_path):
    labels = _labels()
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write(predictions={("m@1", "a#1"): (labels > 0, labels)})
        foreground, back = store.clean_prediction("m@1", "a#1")
        assert foreground.dtype == bool and np.array_equal(foreground, labels > 0)
        assert back.dtype == np.int32 and np.array_equal(back, labels)
        assert store.clean_prediction("m@1", "missing#0") is None
        assert store.predicted("m@1") == {"a#1"}
        # ids of every size (stored in the smallest type that holds them) come back as they went in, as int32
        for key, offset in (("b#1", 250), ("c#1", 65_000), ("d#1", 2**31 - 20), ("e#1", -5)):
            store.write(predictions={("m@1", key): (labels > 0, np.where(labels > 0, labels + offset, 0))})
            assert np.array_equal(store.clean_prediction("m@1", key)[1], np.where(labels > 0, labels + offset, 0))
            assert store.clean_prediction("m@1", key)[1].dtype == np.int32


def test_large_labels_are_stored_band_by_band_as_the_npy_file_numpy_writes(tmp_path):
    import io
    import zlib

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3000, (2300, 2000)).astype(np.int32)  # more rows than one band of 4 Mpx
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write(predictions={("m@1", "big#1"): (labels > 0, labels)})
        (stored,) = store._db.execute("SELECT labels FROM predictions").fetchone()
        assert np.array_equal(store.clean_prediction("m@1", "big#1")[1], labels)
    expected = io.BytesIO()
    np.save(expected, labels.astype(np.uint16), allow_pickle=False)
    assert zlib.decompress(stored) == expected.getvalue()


def test_a_corrupt_prediction_is_a_clear_error(tmp_path):
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        store.write(predictions={("m@1", "a#1"): (_labels() > 0, _labels())})
    with sqlite3.connect(path) as db:
        db.execute("UPDATE predictions SET labels = ?", (b"not zlib",))
    with ResultStore(path) as store, pytest.raises(StoreError, match="corrupt"):
        store.clean_prediction("m@1", "a#1")


@pytest.mark.parametrize("kind", ["text", "foreign sqlite", "newer schema"])
def test_other_files_are_refused_and_left_untouched(tmp_path, kind):
    path = tmp_path / "results.sqlite"
    if kind == "text":
        path.write_text("model,image,cte\nm,a,0.5\n")
    elif kind == "foreign sqlite":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE patients (id INTEGER)")
    else:
        ResultStore(path).close()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a cte_kit result store|another kind|newer cte_kit"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_failures_keep_the_whole_traceback(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write(failures=[Failure("m@1", "m", "a#1", "a", "gamma:0.7", "ValueError: bad",
                                      "Traceback (most recent call last):\n  File ...\nValueError: bad\n")])
        (failure,) = store.failures()
        assert failure.image == "a" and failure.traceback.startswith("Traceback") and failure.error == "ValueError: bad"
        store.clear_failures("m@1")
        assert store.failures() == []


def test_performance_is_keyed_by_labels(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.put_performance([("m@1", "a#1", "L1", {"f1": 0.5, "iou": 0.3, "map": math.nan, "ap50": 1.0})])
        store.put_performance([("m@1", "a#1", "L2", {"f1": 0.9, "iou": 0.8, "map": 0.7, "ap50": 1.0})])
        assert store.has_performance("m@1", "a#1", "L1") and not store.has_performance("m@1", "a#1", "L3")
        assert store.performance({"a#1": "L1"})["m@1", "a#1"]["f1"] == 0.5
        assert math.isnan(store.performance({"a#1": "L1"})["m@1", "a#1"]["map"])
        assert store.performance({"a#1": "L2"})["m@1", "a#1"]["f1"] == 0.9
        assert store.performance({"a#1": "L3"}) == {}  # never the values of other labels
        assert store.labels_keys(["a#1", "b#1"]) == {"a#1": ["L1", "L2"]}


def test_keys_follow_names_pixels_and_file_contents(tmp_path):
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert image_key("a", image) == image_key("a", image.copy())
    assert image_key("a", image) != image_key("b", image)
    edited = image.copy()
    edited[0, 0] = 7
    assert image_key("a", edited) != image_key("a", image)
    assert image_key("a", image.astype(np.float32)) != image_key("a", image)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"12345")
    first = file_digest(weights)
    weights.write_bytes(b"12346")
    assert file_digest(weights) != first


def test_every_key_of_each_name(tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store:
        store.write(models={"m@old": ("m", "{}")}, images={"a#old": ("a", 2, 2)})
        store.write(models={"m@new": ("m", "{}"), "n@1": ("n", "{}")}, images={"a#new": ("a", 2, 2)})
        assert store.keys_by_name() == ({"m": ["m@new", "m@old"], "n": ["n@1"]}, {"a": ["a#new", "a#old"]})


def _filled(path):
    store = ResultStore(path)
    store.write(models={"m@1": ("m", "{}")}, images={"a#1": ("a", 2, 2), "b#1": ("b", 2, 2)},
                scores=[Score("m@1", "a#1", "gamma:0.7|hard|n_pert=1", 0, 0.25),
                        Score("m@1", "b#1", "gamma:0.7|hard|n_pert=1", 0, math.nan)])
    return store


def test_csv_export(tmp_path):
    with _filled(tmp_path / "s.sqlite") as store:
        store.to_csv(tmp_path / "s.csv")
    with open(tmp_path / "s.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["image"], r["estimator_key"], r["value"]) for r in rows] == [
        ("m", "a", "gamma:0.7|hard|n_pert=1", "0.25"), ("m", "b", "gamma:0.7|hard|n_pert=1", "")]


def test_an_export_holds_the_rows_it_is_given_keys_of(tmp_path):
    with _filled(tmp_path / "s.sqlite") as store:
        store.write(models={"m@2": ("m", "{}")}, scores=[Score("m@2", "a#1", "gamma:0.7|hard|n_pert=1", 0, 0.5)])
        assert len(store.table()["value"]) == 3
        assert store.table(model_keys=["m@2"])["value"] == [0.5]
        assert store.table(image_keys=["b#1"])["model_key"] == ["m@1"]
        assert store.table(estimators=[("gamma:0.7|hard|n_pert=1", 1)])["value"] == []


def test_parquet_export(tmp_path):
    with _filled(tmp_path / "s.sqlite") as store:
        store.to_parquet(tmp_path / "s.parquet")
    table = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert table["image"] == ["a", "b"] and table["value"][0] == 0.25 and math.isnan(table["value"][1])
    assert table["seed"] == [0, 0] and table["model_key"] == ["m@1", "m@1"]


def _open_at_the_barrier(barrier, paths, errors, stagger):
    import time

    for index, path in enumerate(paths):
        barrier.wait()
        time.sleep(stagger * (index % 20) * 0.0005)  # the second process arrives 0-10 ms after the first
        try:
            ResultStore(path).close()
        except Exception as error:  # noqa: BLE001 - the test counts every kind of failure
            errors.put(f"{path.name}: {error}")


def test_two_processes_creating_one_store_both_get_it(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(2), context.Queue()
    paths = [tmp_path / f"s{i}.sqlite" for i in range(120)]  # the WAL switch raced about once in 600 creations
    workers = [context.Process(target=_open_at_the_barrier, args=(barrier, paths, errors, stagger)) for stagger in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == [] and all(worker.exitcode == 0 for worker in workers)
    for path in paths:
        with ResultStore(path) as store:
            assert store.meta["kind"] == KIND


def test_an_interrupted_creation_leaves_a_file_that_is_created_again(tmp_path, monkeypatch):
    import cte_kit.runs.store as module

    path = tmp_path / "s.sqlite"

    def full_disk():
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(module, "kit_version", full_disk)  # the last thing a creation writes
    with pytest.raises(Exception):
        ResultStore(path)
    monkeypatch.undo()
    with ResultStore(path) as store:
        assert store.meta["kind"] == KIND and store.count("scores") == 0


def test_a_folder_a_corrupt_page_and_a_locked_store_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="is a folder, not a result store"):
        ResultStore(tmp_path)
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        store.write(scores=[Score(f"m@{i}", "a#1", "gamma:0.7|hard|n_pert=1", 0, 0.5) for i in range(2000)])
    data = bytearray(path.read_bytes())
    data[len(data) // 4 : 3 * len(data) // 4] = b"\xa5" * (3 * len(data) // 4 - len(data) // 4)  # pages of the scores
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="s.sqlite: .*malformed.*corrupt"):
        with ResultStore(path) as store:
            store.scores()
    # another process in the middle of a write: the store waits for it, then says who holds it
    import cte_kit.runs.store as module

    other = sqlite3.connect(tmp_path / "t.sqlite", isolation_level=None)
    ResultStore(tmp_path / "t.sqlite").close()
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "BUSY_TIMEOUT", 0.2)
            with pytest.raises(StoreError, match="t.sqlite: database is locked: another process holds it"):
                ResultStore(tmp_path / "t.sqlite")
    finally:
        other.close()

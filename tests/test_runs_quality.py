"""Quality control on the runner and its store: known answers per object and per image, what is stored and reused."""

from dataclasses import dataclass

import numpy as np
import pytest
from skimage import measure

from cte_kit.models.base import SegmentationModel
from cte_kit.runs.quality import DOUBTFUL, perturbed_foregrounds, quality, quality_settings
from cte_kit.runs.runner import RunTarget, run
from cte_kit.runs.store import SCHEMA_VERSION, ResultStore
from cte_kit.runs.units import Setting
from cte_kit.types import Prediction

#: Brightness -0.3 on the raw image: a 1.0 object stays above the 0.5 threshold, a 0.6 one falls below it.
DIMMER = Setting("brightness:-0.3", ("hard",))


@dataclass
class Threshold(SegmentationModel):
    """Foreground where the raw image exceeds 0.5 (no normalisation); objects are its 4-connected components."""

    percentiles: tuple | None = None

    def _predict_normalised(self, batch):
        found = []
        for image in batch:
            foreground = image > 0.5
            found.append(Prediction(foreground.astype(np.float32), measure.label(foreground, connectivity=1).astype(np.int32)))
        return found


def _images():
    """Image ``three``: a bright isolated square (stable), a dim one (vanishes when dimmed) and a bright bar with
    a dim middle (splits into two pieces of 13 of its 30 columns); image ``one``: the bright square alone."""
    three = np.zeros((40, 60), np.float32)
    three[5:15, 5:15] = 1.0
    three[5:15, 25:35] = 0.6
    three[20:30, 5:35] = 1.0
    three[20:30, 18:22] = 0.6
    one = np.zeros((40, 60), np.float32)
    one[5:15, 5:15] = 1.0
    return RunTarget("t", (three, one), ("three", "one"))


def _objects(qc, image):
    found = next(o for o in qc.objects if o.image == image)
    return {(int(y), int(x)): (s, st, a) for y, x, s, st, a in
            zip(found.centroid_y, found.centroid_x, found.score, found.stability, found.agreement)}


def test_known_answers_for_one_model():
    target = _images()
    with ResultStore(":memory:") as store:
        qc = quality([Threshold("m")], target, "m", store, settings=[DIMMER], progress=False)
    objects = _objects(qc, "three")
    stable, vanishes, split = objects[(9, 9)], objects[(9, 29)], objects[(24, 19)]
    assert stable[0] == 1.0 and vanishes[0] == 0.0
    assert split[0] == pytest.approx(13 / 30) and 0 < split[0] < 1
    assert np.isnan(stable[2])  # no other model: the score is the stability alone
    assert [image.image for image in qc.ranked()] == ["three", "one"]
    three = next(image for image in qc.images if image.image == "three")
    # hard consistency: of 500 clean pixels, 100 (dim square) + 40 (dim middle) are lost
    assert three.consistency == pytest.approx(360 / 500) and three.score == pytest.approx(360 / 500)
    assert three.n_objects == 3 and three.n_doubtful == 2 and qc.ranked()[-1].score == 1.0
    assert np.isnan(three.agreement) and qc.compared_with == ()


def test_the_bank_agreement_enters_every_object():
    target = _images()
    bank = [Threshold("m"), Threshold("copy", batch_size=2), Threshold("other", batch_size=3)]
    with ResultStore(":memory:") as store:
        qc = quality(bank, target, "m", store, settings=[DIMMER], progress=False)
    objects = _objects(qc, "three")
    assert {key: value[2] for key, value in objects.items()} == {(9, 9): 1.0, (9, 29): 1.0, (24, 19): 1.0}
    assert objects[(9, 9)][0] == 1.0 and objects[(9, 29)][0] == 0.0 and 0 < objects[(24, 19)][0] < 1
    assert qc.compared_with == ("copy", "other")
    assert all(image.agreement == 1.0 for image in qc.images)


def test_a_disagreeing_bank_lowers_the_scores():
    target = _images()
    # the others see every object, but only half of each: agreement 0.5 everywhere
    half = [Threshold("m"), HalfThreshold("h1"), HalfThreshold("h2", batch_size=2)]
    with ResultStore(":memory:") as store:
        qc = quality(half, target, "m", store, settings=[DIMMER], progress=False)
    stable = _objects(qc, "one")[(9, 9)]
    assert stable == (pytest.approx(0.5), 1.0, pytest.approx(0.5))


@dataclass
class HalfThreshold(Threshold):
    """Threshold with the right half of every object cut off (another model that disagrees on the outlines)."""

    def _predict_normalised(self, batch):
        found = []
        for image in batch:
            foreground = image > 0.5
            labels = measure.label(foreground, connectivity=1)
            for region in measure.regionprops(labels):
                top, left, bottom, right = region.bbox
                labels[top:bottom, left + (right - left) // 2:right] = 0
            found.append(Prediction((labels > 0).astype(np.float32), labels.astype(np.int32)))
        return found


def test_a_ranking_run_is_reused_and_the_scores_are_kept(tmp_path):
    target = _images()
    bank = [Threshold("m"), Threshold("copy", batch_size=2), Threshold("other", batch_size=3)]
    with ResultStore(tmp_path / "s.sqlite") as store:
        ranked = run(bank, target, [DIMMER], store, progress=False)  # what `cte-kit rank` writes
        assert ranked.n_written == 3 * 2 and store.count("objects") == 3 * 2
        first = quality(bank, target, "m", store, settings=[DIMMER], progress=False)
        scores_before = store.count("scores")
        second = quality(bank, target, "m", store, settings=[DIMMER], progress=False)
        assert store.count("scores") == scores_before == 6
        assert [i.score for i in first.images] == [i.score for i in second.images]
        key = next(e for e in store.estimates([first.model_key]).values() if e.estimator_key.startswith("quality"))
        assert key.per_image == tuple(i.score for i in first.images)
        stored = store.objects(first.model_key, key.estimator_key, 0)
        np.testing.assert_array_equal(stored[first.images[0].image_key].value, first.objects[0].score)


def test_others_get_a_clean_pass_only():
    target = _images()
    with ResultStore(":memory:") as store:
        qc = quality([Threshold("m"), Threshold("a", batch_size=2), Threshold("b", batch_size=3)], target, "m", store,
                     settings=[DIMMER], progress=False)
        assert store.count("scores") == 2 and store.count("predictions") == 3 * 2
        assert {e.estimator_key.split("|")[0] for e in store.estimates([qc.model_key]).values()} == {"quality"}


def test_bad_input_is_refused():
    with ResultStore(":memory:") as store:
        with pytest.raises(ValueError, match="no model 'x'"):
            quality([Threshold("m")], _images(), "x", store, progress=False)
        with pytest.raises(ValueError, match="hard consistency"):
            quality([Threshold("m")], _images(), "m", store, settings=[Setting("gamma:0.7", ("soft",))], progress=False)


def test_the_default_settings_follow_the_kits_defaults():
    from cte_kit.estimators.cte import default_settings

    assert [s.perturbation.label for s in quality_settings()] == list(default_settings(["hard"]))
    for task in ("nuclei", "mitochondria", "cells"):
        assert [s.perturbation.label for s in quality_settings(task=task)] == list(default_settings(["hard"], task))


def test_the_perturbed_foreground_is_the_one_the_stability_was_measured_on():
    target = _images()
    with ResultStore(":memory:") as store:
        qc = quality([Threshold("m")], target, "m", store, settings=[DIMMER], progress=False)
        found = perturbed_foregrounds(Threshold("m"), target, ["three"], store, qc.model_key, DIMMER)
    clean, perturbed = found["three"]
    assert clean.sum() == 500 and perturbed.sum() == 360 and not (perturbed & ~clean).any()


def test_objects_table_round_trip_and_an_older_store_gains_it(tmp_path):
    from cte_kit.runs.store import ObjectValues

    path = tmp_path / "old.sqlite"
    with ResultStore(path) as store:
        store.write(objects=[ObjectValues("m", "i", "k", 0, np.array([3, 70000]), np.array([0.25, np.nan]))])
        found = store.objects("m", "k", 0)["i"]
        np.testing.assert_array_equal(found.ids, [3, 70000])
        np.testing.assert_array_equal(found.value, [0.25, np.nan])
        store._db.execute("DROP TABLE objects")
        store._db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with ResultStore(path) as store:
        assert store.meta["schema"] == str(SCHEMA_VERSION) and store.count("objects") == 0


def test_a_unit_without_object_rows_is_computed_again():
    target = _images()
    with ResultStore(":memory:") as store:
        run([Threshold("m")], target, [DIMMER], store, progress=False)
        store._db.execute("DELETE FROM objects")
        again = run([Threshold("m")], target, [DIMMER], store, progress=False)
        assert again.n_written == 2 and store.count("objects") == 2


def test_doubtful_is_the_documented_threshold():
    assert DOUBTFUL == 0.5

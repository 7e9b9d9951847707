"""The one runner: what it computes, what it skips, what it records, on every backend."""

from dataclasses import dataclass

import numpy as np
import pytest

from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.models.bank import BankEntry
from cte_kit.models.unet import UNetModel
from cte_kit.perturb import FeatureDropout, InputPerturbation
from cte_kit.runs.backends import SerialBackend
from cte_kit.estimators import parse_estimator
from cte_kit.runs.runner import RunTarget, estimate, model_identity, rows, run
from cte_kit.runs.store import ResultStore
from cte_kit.runs.units import FORWARD_KEY, Setting, estimator_key, parse_estimator_key
from cte_kit.scoring.consistency import hard_consistency, soft_consistency
from cte_kit.teaching.demo import demo_checkpoint
from cte_kit.types import image_id

SETTINGS = (Setting("gamma:0.7", ("hard", "soft")), Setting("dropout:0.2", ("hard",)))


@pytest.fixture(scope="module")
def data():
    return generate(DEMO_TARGET, 5, shape=(64, 64), seed=5)


@pytest.fixture(scope="module")
def target(data):
    return RunTarget("t", data.images, data.names)


def _entry(name, **settings):
    return BankEntry(name, "unet", str(demo_checkpoint(name)), settings=settings)


def _values(store, report, target="t"):
    return {(r["model"], r["image"], r["perturbation"], r["consistency"]): r["cte"]
            for r in rows(store, report.models, report.images[target], report.settings)}


def _scores(report):
    return {(key, model): (e.score, e.per_image) for key, found in report.results.items() for model, e in found.items()}


def test_estimator_keys_name_every_parameter():
    assert estimator_key("gamma:0.7", "hard", 1, 3) == "gamma:0.7|hard|n_pert=1"  # boundary: instance only
    key = estimator_key("dropout:0.2", "instance", 2, 3)
    assert key == "dropout:0.2|instance|n_pert=2|boundary=3"
    assert parse_estimator_key(key) == {"perturbation": "dropout:0.2", "consistency": "instance", "n_pert": 2,
                                        "boundary": 3}
    with pytest.raises(ValueError, match="unknown consistency"):
        Setting("gamma:0.7", ("fuzzy",))


def test_model_keys_follow_settings_and_weights(tmp_path):
    assert model_identity(_entry("near_target"))[0] == model_identity(_entry("near_target"))[0]
    assert model_identity(_entry("near_target", threshold=0.4))[0] != model_identity(_entry("near_target"))[0]
    copy = tmp_path / "w.pt"
    copy.write_bytes(demo_checkpoint("near_target").read_bytes())
    same = BankEntry("near_target", "unet", str(copy))
    assert model_identity(same)[0] == model_identity(_entry("near_target"))[0]
    copy.write_bytes(demo_checkpoint("sharp_clean").read_bytes())  # retrained in place: new weights, new key
    assert model_identity(same)[0] != model_identity(_entry("near_target"))[0]
    model = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    other = UNetModel.from_checkpoint(demo_checkpoint("near_target"), threshold=0.3)
    assert model_identity(model)[0] != model_identity(other)[0]


def test_values_are_the_consistency_of_the_models_own_pairs(data, target):
    model = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    with ResultStore(":memory:") as store:
        report = run([model], target, SETTINGS, store, progress=False)
        values = _values(store, report)
    assert report.n_written == 5 * 3 and not report.failures
    ids = [image_id(name) for name in data.names]
    gamma = model.predict_pairs(data.images, InputPerturbation("gamma", 0.7), image_ids=ids)
    dropout = model.predict_pairs(data.images, FeatureDropout(0.2), image_ids=ids)
    for name, g, d in zip(data.names, gamma, dropout):
        assert values["near_target", name, "gamma:0.7", "hard"] == pytest.approx(
            hard_consistency(g.clean.labels > 0, g.perturbed[0].labels > 0), abs=1e-9)
        assert values["near_target", name, "gamma:0.7", "soft"] == pytest.approx(
            soft_consistency(g.clean.probability, g.perturbed[0].probability, model.threshold), abs=1e-6)
        assert values["near_target", name, "dropout:0.2", "hard"] == pytest.approx(
            hard_consistency(d.clean.labels > 0, d.perturbed[0].labels > 0), abs=1e-9)


def test_each_image_is_predicted_clean_once_for_every_setting(target):
    model = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    calls = []
    original = model.predict_pairs

    def watched(images, perturbation, **options):
        calls.append((perturbation.label, options.get("clean") is None))
        return original(images, perturbation, **options)

    model.predict_pairs = watched
    with ResultStore(":memory:") as store:
        run([model], target, SETTINGS, store, progress=False)
    # one chunk: the first setting predicts clean, the second reuses it
    assert calls == [("gamma:0.7", True), ("dropout:0.2", False)]


def test_each_image_is_normalised_once_for_every_setting(target):
    model = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    prepared = []
    original = model.prepare
    model.prepare = lambda image, name="image": prepared.append(name) or original(image, name)
    with ResultStore(":memory:") as store:
        run([model], target, SETTINGS, store, progress=False)
        alone = rows(store, *_keys(model, target), SETTINGS)
    assert sorted(prepared) == sorted(target.names)
    # the same values as each setting run on its own
    for setting in SETTINGS:
        with ResultStore(":memory:") as store:
            run([UNetModel.from_checkpoint(demo_checkpoint("near_target"))], target, [setting], store, progress=False)
            for row in rows(store, *_keys(model, target), [setting]):
                match = [r for r in alone if (r["image"], r["consistency"], r["perturbation"]) ==
                         (row["image"], row["consistency"], row["perturbation"])]
                assert match[0]["cte"] == pytest.approx(row["cte"], nan_ok=True)


def _keys(model, target):
    return {model.name: model_identity(model)[0]}, dict(zip(target.names, target.keys()))


def test_a_threshold_change_recomputes_that_model_only(tmp_path, target):
    store = ResultStore(tmp_path / "s.sqlite")
    first = run([_entry("near_target"), _entry("sharp_clean")], target, SETTINGS[:1], store, progress=False)
    before = _values(store, first)
    again = run([_entry("near_target"), _entry("sharp_clean", threshold=0.3)], target, SETTINGS[:1], store,
                progress=False)
    assert again.n_written == 5 * 2 and again.n_skipped == 5 * 2  # sharp_clean's rows only
    after = _values(store, again)
    assert {k: v for k, v in after.items() if k[0] == "near_target"} == {
        k: v for k, v in before.items() if k[0] == "near_target"}
    store.close()


def test_adding_an_image_changes_no_other_image(tmp_path):
    data = generate(DEMO_TARGET, 4, shape=(64, 64), seed=2)
    bank = [_entry("near_target")]
    with ResultStore(tmp_path / "three.sqlite") as three, ResultStore(tmp_path / "four.sqlite") as four:
        small = run(bank, RunTarget("t", data.images[1:], data.names[1:]), SETTINGS, three, progress=False)
        # the new image comes first: every other image moves one position down
        large = run(bank, RunTarget("t", data.images, data.names), SETTINGS, four, progress=False)
        before, after = _values(three, small), _values(four, large)
    assert len(after) == len(before) + 3
    assert {key: after[key] for key in before} == before


def test_an_interrupted_run_resumes_to_the_same_table(tmp_path, target):
    bank = [_entry("near_target"), _entry("very_noisy")]

    class Crash(SerialBackend):
        def map(self, units):
            for count, item in enumerate(super().map(units)):
                if count == 2:
                    raise KeyboardInterrupt  # a user's Ctrl-C after two units were written
                yield item

    with ResultStore(tmp_path / "whole.sqlite") as whole:
        reference = _values(whole, run(bank, target, SETTINGS, whole, chunk=2, progress=False))
    with ResultStore(tmp_path / "cut.sqlite") as cut:
        with pytest.raises(KeyboardInterrupt):
            run(bank, target, SETTINGS, cut, backend=Crash(), chunk=2, progress=False)
        assert cut.count("scores") == 2 * 2 * 3  # two units: 2 images x 3 (setting, consistency) each
        resumed = run(bank, target, SETTINGS, cut, chunk=2, progress=False)
        assert resumed.n_skipped == 12 and resumed.n_written == len(reference) - 12
        assert _values(cut, resumed) == reference  # the same bits, no row lost or duplicated
        assert cut.count("scores") == len(reference)


@dataclass
class FailsOnOneImage(UNetModel):
    """A U-Net that raises on images whose top-left pixel is exactly 0 (the test zeroes one image)."""

    def _predict_normalised(self, batch):
        if any(float(image.flat[0]) == float(image.min()) == 0.0 and image.max() == 0 for image in batch):
            raise RuntimeError("cannot segment an empty image")
        return super()._predict_normalised(batch)


def test_a_model_failing_on_one_image_is_recorded_and_the_rest_completes(tmp_path, data):
    images = list(data.images)
    images[2] = np.zeros_like(images[2])
    target = RunTarget("t", images, data.names)
    network = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    failing = FailsOnOneImage(name="fragile", network=network.network, config=network.config, percentiles=None)
    with ResultStore(tmp_path / "s.sqlite") as store:
        report = run([failing, _entry("sharp_clean"), BankEntry("broken", "unet", str(tmp_path / "missing.pt"))],
                     target, SETTINGS[:1], store, progress=False)
        failures = {(f.model, f.image): f for f in store.failures()}
        assert set(failures) == {("fragile", data.names[2]), ("broken", None)}
        assert "cannot segment an empty image" in failures["fragile", data.names[2]].error
        assert "_predict_normalised" in failures["fragile", data.names[2]].traceback  # the whole trace
        assert report.failed_models == ["fragile", "broken"]
        missing = report.missing(store, "t")
        assert missing == {"fragile": 2, "sharp_clean": 0, "broken": 10}  # 1 image x 2, 5 images x 2
        assert len(_values(store, report)) == 4 * 2 + 5 * 2


def test_a_local_dask_cluster_gives_the_serial_table(tmp_path, target):
    from cte_kit.runs.backends import DaskBackend

    import torch

    bank = [_entry("near_target"), _entry("sharp_clean"), _entry("very_noisy")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Dask worker computes: the same float sums, so the same bits
    chosen = [parse_estimator("entropy"), parse_estimator("agreement")]
    try:
        with ResultStore(tmp_path / "serial.sqlite") as serial:
            expected = _values(serial, run(bank, target, SETTINGS, serial, chunk=2, progress=False))
            expected_estimates = _scores(estimate(bank, target, chosen, serial, progress=False))
    finally:
        torch.set_num_threads(threads)
    with DaskBackend(workers=2) as backend, ResultStore(tmp_path / "dask.sqlite") as store:
        assert backend.dashboard_link.startswith("http")
        # the nanny's default trim threshold slows forward passes in workers; the backend removes it
        trims = backend.client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert list(trims.values()) == [None, None]
        report = run(bank, target, SETTINGS, store, backend=backend, chunk=2, progress=False)
        assert _values(store, report) == expected
        assert _scores(estimate(bank, target, chosen, store, backend=backend, progress=False)) == expected_estimates
        assert store.count("predictions") == 3 * 5


def test_estimate_hands_labels_only_where_needed_resumes_and_recomputes_on_new_labels(tmp_path, data, target,
                                                                                      monkeypatch):
    import cte_kit.runs.units as units
    from scipy.stats import rankdata

    calls = []
    original = units.run_estimator

    def spy(estimator, models, *args, labels=None, **kwargs):
        calls.append((estimator.name, labels is not None))
        return original(estimator, models, *args, labels=labels, **kwargs)

    monkeypatch.setattr(units, "run_estimator", spy)
    bank = [_entry("near_target"), _entry("sharp_clean"), _entry("very_noisy"),
            BankEntry("broken", "unet", str(tmp_path / "missing.pt"))]
    chosen = [parse_estimator("entropy"), parse_estimator("leep"), parse_estimator("cte+agreement")]
    labels = list(data.labels)
    with ResultStore(tmp_path / "s.sqlite") as store:
        report = estimate(bank, target, chosen, store, labels=labels, progress=False)
        assert sorted(set(calls)) == [("cte", False), ("entropy", False), ("leep", True)]
        assert [(f.model, f.setting) for f in report.failures] == [("broken", "load")]
        working = ["near_target", "sharp_clean", "very_noisy"]
        assert list(report.forward) == working and all(seconds > 0 for seconds in report.forward.values())
        for estimator in [*chosen, *chosen[2].components]:
            found = report.results[estimator.key]
            assert list(found) == working and all(not e.note and len(e.per_image) == 5 for e in found.values())
        # the Borda count of the two components' scores, by hand with scipy's ranks
        cte, agreement = ([report.results[c.key][n].score for n in working] for c in chosen[2].components)
        borda = ((3 - rankdata(-np.array(cte))) / 2 + (3 - rankdata(-np.array(agreement))) / 2) / 2
        assert [report.results[chosen[2].key][n].score for n in working] == pytest.approx(borda)
        assert report.results[chosen[1].key]["near_target"].cost > 0

        calls.clear()
        again = estimate(bank, target, chosen, store, labels=labels, progress=False)
        assert calls == [] and again.n_written == 0 and again.results == report.results

        relabelled = [np.where(l > 0, l + 1, 0) for l in labels]  # other labels: the label-based estimate only
        fresh = estimate(bank, target, chosen, store, labels=relabelled, progress=False)
        assert calls == [("leep", True)] * 3 and fresh.n_written == 3 * 2  # LEEP and the clean pass it reads
        assert store.count("estimates") == 3 * (2 + 3 + 1) + 3  # + the relabelled LEEP rows
        assert {key for (_, _, key) in store.estimates([model_identity(bank[0])[0]])} >= {FORWARD_KEY, chosen[1].key}


def test_cte_in_a_comparison_equals_the_run_of_the_same_setting(target):
    """compare() and rank score one image under one setting alike: the same seeds (from names), the same values."""
    bank = [_entry("near_target"), _entry("sharp_clean")]
    with ResultStore(":memory:") as store:
        report = run(bank, target, [Setting("dropout:0.2", ("hard", "soft"))], store, progress=False)
        expected = {(r["model"], r["image"], r["consistency"]): r["cte"]
                    for r in rows(store, report.models, report.images["t"], report.settings)}
        chosen = [parse_estimator("cte:hard:dropout:0.2"), parse_estimator("cte:soft:dropout:0.2")]
        found = estimate(bank, target, chosen, store, progress=False).results
    got = {(model, name, estimator.consistency): value for estimator in chosen
           for model, result in found[estimator.key].items() for name, value in zip(target.names, result.per_image)}
    assert got == pytest.approx(expected, abs=1e-6)

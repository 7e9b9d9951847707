"""A bank on one target through the runner; labels added later; performance from stored predictions."""

import math

import numpy as np
import pytest

from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.evaluation.performance import performance
from cte_kit.evaluation.sweep import read_results, run_sweep, sweep_guards
from cte_kit.models.bank import BankEntry
from cte_kit.models.unet import UNetModel
from cte_kit.perturb import parse_perturbation
from cte_kit.teaching.demo import demo_checkpoint

PERTURBATIONS = [parse_perturbation("gamma:0.7")]


@pytest.fixture(scope="module")
def data():
    return generate(DEMO_TARGET, 4, shape=(64, 64), seed=8)


def _bank():
    return [BankEntry(name, "unet", str(demo_checkpoint(name))) for name in ("near_target", "sharp_clean")]


def test_labels_added_later_fill_performance_without_recomputing(tmp_path, data):
    out = tmp_path / "r.sqlite"
    first = run_sweep(_bank(), data.images, data.names, out, PERTURBATIONS, ["hard", "instance"], progress=False)
    assert first.n_new_rows == 2 * 4 * 2
    assert all(math.isnan(row["f1"]) for row in read_results(out, first))
    later = run_sweep(_bank(), data.images, data.names, out, PERTURBATIONS, ["hard", "instance"], labels=data.labels,
                      progress=False)
    assert later.n_new_rows == 0 and later.n_skipped_rows == 16  # no CTE computed again
    rows = read_results(out, later)
    model = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    # the independent path: predict again and score the predictions against the labels
    expected = performance(data.labels, model.predict(data.images), model.threshold)
    for index, name in enumerate(data.names):
        row = next(r for r in rows if r["model"] == "near_target" and r["image"] == name and r["consistency"] == "hard")
        for metric in ("f1", "iou", "map", "ap50"):
            assert row[metric] == pytest.approx(expected[metric][index], abs=1e-12), (name, metric)


def test_guards_read_the_stored_predictions(tmp_path, data):
    out = tmp_path / "r.sqlite"
    run_sweep(_bank(), data.images, data.names, out, PERTURBATIONS, ["hard"], progress=False)
    guards = sweep_guards(out, ["near_target", "sharp_clean"], data.names)
    assert set(guards) == {"near_target", "sharp_clean"}
    assert 0 < guards["near_target"].foreground_fraction < 1
    with pytest.raises(ValueError, match="holds no predictions"):
        sweep_guards(out, ["never_run"], data.names)


def test_a_failing_model_makes_its_rows_incomplete(tmp_path, data):
    bank = _bank() + [BankEntry("broken", "unet", str(tmp_path / "missing.pt"))]
    with pytest.warns(UserWarning, match="broken"):
        result = run_sweep(bank, data.images, data.names, tmp_path / "r.sqlite", PERTURBATIONS, ["hard"],
                           progress=False)
    assert result.incomplete == {"broken": 4}
    (failure,) = result.failures
    assert failure.model == "broken" and "Traceback" in failure.traceback
    assert read_results(tmp_path / "nothing.sqlite") == []
    assert np.isfinite([r["cte"] for r in read_results(tmp_path / "r.sqlite", result)]).any()


def test_a_name_pointed_at_other_weights_reads_the_run_of_its_own_keys(tmp_path, data):
    out = tmp_path / "r.sqlite"
    first = run_sweep(_bank(), data.images, data.names, out, PERTURBATIONS, ["hard"], labels=data.labels,
                      progress=False)
    before = repr(read_results(first)), repr(sweep_guards(first))  # repr: NaN equals NaN
    # the name near_target now stands for the weights of very_noisy, in a later run on the same store
    other = [BankEntry("near_target", "unet", str(demo_checkpoint("very_noisy"))), _bank()[1]]
    later = run_sweep(other, data.images, data.names, out, PERTURBATIONS, ["hard"], progress=False)
    assert later.models["near_target"] != first.models["near_target"]
    assert repr(read_results(first)) == before[0] and repr(sweep_guards(first)) == before[1]
    assert repr(read_results(out, first)) == before[0] and repr(sweep_guards(out, result=first)) == before[1]
    # the later run has no labels: no true performance, although the store holds some for these images
    assert all(math.isnan(row["f1"]) for row in read_results(later))
    assert sweep_guards(later)["near_target"].foreground_fraction != sweep_guards(first)["near_target"].foreground_fraction
    # a store of two runs does not say which one a name means
    with pytest.raises(ValueError, match="several runs.*'near_target' \\(2 keys\\)"):
        read_results(out)
    with pytest.raises(ValueError, match="several runs"):
        sweep_guards(out)

"""The bank-wide sweep: seeds from image keys, kept clean predictions."""

import numpy as np
import pytest

from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.teaching.demo import demo_checkpoint
from cte_kit.types import image_id
from cte_kit.models.unet import UNetModel
from cte_kit.perturb import parse_perturbation
from cte_kit.runs.sweep import load_clean_prediction, predictions_folder, read_results, run_sweep


@pytest.fixture(scope="module")
def model():
    return UNetModel.from_checkpoint(demo_checkpoint("near_target"))


def _scores(path):
    return {(r["image"], r["perturbation"]): r["cte"] for r in read_results(path)}


def test_adding_an_image_changes_no_other_image(tmp_path, model):
    data = generate(DEMO_TARGET, 4, shape=(64, 64), seed=2)
    settings = [parse_perturbation("dropout:0.3"), parse_perturbation("noise:0.1")]
    run_sweep([model], data.images[1:], data.names[1:], tmp_path / "three.csv", settings, ["soft"], progress=False)
    # the new image comes first, so every other image moves one position down
    run_sweep([model], data.images, data.names, tmp_path / "four.csv", settings, ["soft"], progress=False)
    three, four = _scores(tmp_path / "three.csv"), _scores(tmp_path / "four.csv")
    assert len(four) == len(three) + 2
    assert {key: four[key] for key in three} == three


def test_image_id_depends_on_the_name_only():
    assert image_id("cell_01") == image_id("cell_01") != image_id("cell_02")
    assert 0 <= image_id("x") < 2**32


def test_clean_predictions_are_kept_and_read_back(tmp_path, model):
    data = generate(DEMO_TARGET, 2, shape=(64, 64), seed=4)
    out = tmp_path / "rows.csv"
    run_sweep([model], data.images, data.names, out, [parse_perturbation("gamma:0.7")], ["hard"], progress=False)
    clean = model.predict(data.images)
    for name, prediction in zip(data.names, clean):
        foreground, labels = load_clean_prediction(out, model.name, name)
        assert np.array_equal(foreground, prediction.probability > model.threshold)
        assert np.array_equal(labels, prediction.labels)
    assert load_clean_prediction(out, model.name, "missing") is None
    # a crash can leave a corrupt file behind: a clear error, not garbage
    path = next(predictions_folder(out).rglob("*.npz"))
    path.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="corrupt"):
        load_clean_prediction(out, model.name, path.stem)
    # predictions missing from an earlier run are made on the next one, without new rows
    path.unlink()
    result = run_sweep([model], data.images, data.names, out, [parse_perturbation("gamma:0.7")], ["hard"],
                       progress=False)
    assert result.n_new_rows == 0 and load_clean_prediction(out, model.name, path.stem) is not None

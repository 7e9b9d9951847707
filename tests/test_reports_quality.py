"""What quality control writes: a self-contained report made offline, napari files that match the labels."""

import csv
import re
import socket

import numpy as np
import pytest
import tifffile

from cte_kit.reports.quality import score_image, write_napari, write_report, write_tables
from cte_kit.runs.quality import quality
from cte_kit.runs.store import ResultStore
from test_runs_quality import DIMMER, Threshold, _images


def make_report(folder, worst=2):
    """A quality-control report of the scripted model on its two images, written into ``folder``."""
    target = _images()
    with ResultStore(folder / "results.sqlite") as store:
        qc = quality([Threshold("m"), Threshold("a", batch_size=2)], target, "m", store, settings=[DIMMER],
                     progress=False)
        perturbed = {"three": (np.zeros((40, 60), bool), np.ones((40, 60), bool))}
        write_tables(qc, folder)
        write_napari(qc, store, folder)
        return qc, write_report(qc, store, dict(zip(target.names, target.images)), folder, perturbed, worst=worst)


@pytest.fixture(scope="module")
def offline_report(tmp_path_factory):
    """The report and its files, written with every network connection refused."""
    def refuse(*args, **kwargs):
        raise OSError("network access while writing the offline report")

    folder = tmp_path_factory.mktemp("qc")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        qc, path = make_report(folder)
    return qc, path


def test_the_report_is_self_contained_and_made_offline(offline_report):
    qc, path = offline_report
    text = path.read_text()
    sources = re.findall(r"<img[^>]*src='([^']*)'", text)
    assert len(sources) == 1 + 2  # the histograms and the two least reliable images
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "<script" not in text and "<link" not in text and "@import" not in text and "url(" not in text
    assert re.search(r"(src|href)=['\"]?https?:", text) is None
    assert "What they do not mean" in text and "three" in text


def test_napari_files_match_the_labels(offline_report):
    qc, path = offline_report
    folder = path.parent
    for image, objects in zip(qc.images, qc.objects):
        labels = tifffile.imread(folder / "napari" / f"{image.image}_labels.tif")
        with open(folder / "napari" / f"{image.image}_objects.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        # napari matches a row of a Labels layer's features to a label by its `index` column
        assert [int(r["index"]) for r in rows] == sorted(np.unique(labels[labels > 0]).tolist())
        scores = tifffile.imread(folder / "napari" / f"{image.image}_score.tif")
        for row in rows:
            assert np.allclose(scores[labels == int(row["index"])], float(row["score"]))
        assert np.isnan(scores[labels == 0]).all()
    with open(folder / "objects.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == sum(o.ids.size for o in qc.objects)


def test_score_image():
    labels = np.array([[0, 2, 2], [5, 5, 0]])
    found = score_image(labels, [2, 5], [0.25, 1.0])
    np.testing.assert_array_equal(found, [[np.nan, 0.25, 0.25], [1.0, 1.0, np.nan]])
    assert np.isnan(score_image(labels, [2], [0.5])[1, 0])  # an object without a score stays NaN
    with pytest.raises(ValueError, match="object ids"):
        score_image(labels, [2, 5], [0.5])

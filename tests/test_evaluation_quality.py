"""Judging quality control with labels: the kit's AUROC against scikit-learn, object matching, the judgement."""

import numpy as np
import pytest

from cte_kit.evaluation.quality import auroc, judge_quality, object_matches


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_scikit_learn_with_ties(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    positive = rng.random(60) > 0.4
    score = np.round(rng.random(60) + 0.3 * positive, 1)  # rounded: many ties
    assert auroc(positive, score) == pytest.approx(metrics.roc_auc_score(positive, score))


def test_auroc_leaves_nan_scores_out_and_needs_both_classes():
    metrics = pytest.importorskip("sklearn.metrics")
    positive = np.array([True, False, True, False, True])
    score = np.array([0.9, 0.2, np.nan, 0.4, 0.3])
    keep = ~np.isnan(score)
    assert auroc(positive, score) == pytest.approx(metrics.roc_auc_score(positive[keep], score[keep]))
    assert np.isnan(auroc([True, True], [0.1, 0.2]))
    assert auroc([True, False], [0.9, 0.1]) == 1.0 and auroc([True, False], [0.1, 0.9]) == 0.0
    with pytest.raises(ValueError, match="one label per score"):
        auroc([True], [0.1, 0.2])


def test_object_matches_at_iou_one_half():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4], truth[6:10, 6:10] = 1, 2
    labels = np.zeros_like(truth)
    labels[0:4, 0:4] = 5          # exact
    labels[6:10, 6:8] = 9         # half of object 2: IoU 0.5, matched
    labels[6:10, 0:2] = 7         # nothing there
    ids, matched = object_matches(truth, labels)
    np.testing.assert_array_equal(ids, [5, 7, 9])
    np.testing.assert_array_equal(matched, [True, False, True])


def test_judgement_reads_the_stored_predictions():
    from test_runs_quality import DIMMER, Threshold, _images

    from cte_kit.runs.quality import quality
    from cte_kit.runs.store import ResultStore

    target = _images()
    truth = {name: __import__("skimage.measure", fromlist=["label"]).label(image > 0.5, connectivity=1)
             for name, image in zip(target.names, target.images)}
    truth["three"][5:15, 25:35] = 0  # the dim square is not a true object
    with ResultStore(":memory:") as store:
        qc = quality([Threshold("m")], target, "m", store, settings=[DIMMER], progress=False)
        judged = judge_quality(qc, store, truth)
    assert judged.n_objects == 4 and judged.n_matched == 3
    # the one wrong object (the dim square) has the lowest score: perfect separation
    assert judged.auroc == 1.0 and judged.auroc_stability == 1.0 and np.isnan(judged.auroc_agreement)
    assert judged.images["image"] == ["three", "one"] and judged.images["f1"][1] == 1.0
    assert np.isnan(judged.spearman_f1)  # two images: no correlation

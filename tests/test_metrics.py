"""Ground-truth performance metrics (cte_kit.scoring.metrics) against hand counts, stardist and skimage."""

import numpy as np
from scipy.spatial import distance
import pytest
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.metrics import adapted_rand_error as skimage_adapted_rand_error

from cte_kit.scoring.metrics import (DEFAULT_IOU_THRESHOLDS, AveragePrecision, InstanceMatch, adapted_rand_error, average_precision, contingency, f1_score, iou_score, match_instances, relabel)

stardist_matching = pytest.importorskip("stardist.matching")

MATCH_FIELDS = ("tp", "fp", "fn", "precision", "recall", "f1", "accuracy", "n_true", "n_pred")


def blob_labels(shape, seed, sigma=2.0, level=0.65):
    """Random blobs: connected components of smoothed noise."""
    smooth = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return label(smooth > np.quantile(smooth, level))


def scramble_ids(labels, seed, offset=70000):
    """Non-sequential, large ids (0 stays background)."""
    ids = np.random.default_rng(seed).permutation(labels.max()) * 3 + offset
    return np.concatenate(([0], ids))[labels].astype(np.uint32)


def prediction_like(truth, seed):
    """A plausible prediction: truth shifted, a few objects dropped, some noise objects."""
    rng = np.random.default_rng(seed)
    shifted = np.roll(truth, (1, 1), axis=(0, 1))
    shifted[np.isin(shifted, rng.choice(truth.max() + 1, size=max(1, truth.max() // 5)))] = 0
    extra = blob_labels(truth.shape, seed + 100, level=0.9)
    return np.where((shifted == 0) & (extra > 0), extra + shifted.max(), shifted)


# -- semantic ---------------------------------------------------------------------------------
def test_f1_and_iou_hand_counts():
    prediction = np.array([[0.9, 0.9, 0.1], [0.6, 0.5, 0.0], [0.0, 0.0, 0.7]])
    truth = np.array([[1, 1, 0], [0, 2, 2], [0, 0, 2]])
    # P = {(0,0), (0,1), (1,0), (2,2)}, T = {(0,0), (0,1), (1,1), (1,2), (2,2)}, |P & T| = 3
    assert f1_score(truth, prediction) == pytest.approx(2 * 3 / (4 + 5))
    assert iou_score(truth, prediction) == pytest.approx(3 / 6)
    assert f1_score(truth, prediction, threshold=0.45) == pytest.approx(2 * 4 / (5 + 5))
    assert f1_score(truth, truth > 0) == iou_score(truth, truth > 0) == 1.0


def test_f1_and_iou_match_scipy_dice_and_jaccard():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, size=(32, 40))
    prediction = rng.random((32, 40))
    predicted, true = (prediction > 0.6).ravel(), (truth > 0).ravel()
    assert f1_score(truth, prediction, 0.6) == pytest.approx(1 - distance.dice(true, predicted))
    assert iou_score(truth, prediction, 0.6) == pytest.approx(1 - distance.jaccard(true, predicted))


def test_arguments_the_wrong_way_round_are_refused():
    # truth first, as scikit-learn and StarDist: a probability map in the truth's place is an error, not a score
    probability, truth = np.full((3, 3), 0.7), np.ones((3, 3), int)
    with pytest.raises(ValueError, match="non-integer"):
        f1_score(probability, truth)
    with pytest.raises(ValueError, match="non-integer"):
        iou_score(probability, truth)


def test_empty_truth_scores_zero_as_the_official_code():
    empty = np.zeros((3, 3), int)
    assert f1_score(empty, np.zeros((3, 3))) == 0.0
    assert iou_score(empty, np.ones((3, 3))) == 0.0
    assert f1_score(np.ones((3, 3), int), np.zeros((3, 3))) == 0.0


def test_semantic_input_errors():
    with pytest.raises(ValueError, match="shape"):
        f1_score(np.zeros((3, 4), int), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        f1_score(np.zeros((3, 3), int), np.full((3, 3), np.nan))


# -- instance matching ------------------------------------------------------------------------
def test_threshold_is_inclusive_and_default_thresholds_are_exact_decimals():
    truth = np.zeros((12, 12), np.int32)
    truth[1:11, 1:11] = 1
    prediction = np.zeros_like(truth)
    prediction[1:11, 1:8] = 5  # inside the truth: IoU = 70 / 100 exactly
    match = match_instances(truth, prediction, 0.7)
    assert isinstance(match, InstanceMatch)
    assert (match.tp, match.fp, match.fn, match.accuracy) == (1, 0, 0, 1.0)
    assert match.mean_matched_iou == pytest.approx(0.7)
    assert match_instances(truth, prediction, 0.71).tp == 0
    np.testing.assert_array_equal(DEFAULT_IOU_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    ap = average_precision(truth, prediction)
    assert isinstance(ap, AveragePrecision)
    np.testing.assert_array_equal(ap.precision, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert ap.mean == 0.5


def test_hand_counted_matching():
    # Truth: A (4 px), B (4 px), C (2 px). Prediction: A exactly, B half (2 px), D spurious.
    truth = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2], [0, 0, 0, 0, 0], [3, 3, 0, 0, 0]])
    prediction = np.array([[7, 7, 0, 9, 0], [7, 7, 0, 9, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 4]])
    match = match_instances(truth, prediction, 0.5)
    # IoU(A) = 1, IoU(B) = 2/4 = 0.5 (matched: inclusive), C and D unmatched.
    assert (match.tp, match.fp, match.fn, match.n_true, match.n_pred) == (2, 1, 1, 3, 3)
    assert match.precision == pytest.approx(2 / 3) and match.recall == pytest.approx(2 / 3)
    assert match.accuracy == pytest.approx(2 / 4) and match.f1 == pytest.approx(4 / 6)
    assert match.mean_matched_iou == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_matching_agrees_with_stardist(seed, threshold):
    truth = blob_labels((48, 56), seed)
    prediction = prediction_like(truth, seed)
    ours = match_instances(scramble_ids(truth, seed), scramble_ids(prediction, seed + 1), threshold)
    theirs = stardist_matching.matching(truth, prediction, thresh=threshold)
    for field in MATCH_FIELDS:
        assert getattr(ours, field) == pytest.approx(getattr(theirs, field), abs=1e-12), field
    assert ours.mean_matched_iou == pytest.approx(theirs.mean_matched_score, abs=1e-6)


def test_average_precision_agrees_with_stardist():
    truth = blob_labels((64, 64), 11)
    prediction = prediction_like(truth, 12)
    ap = average_precision(truth, prediction)
    expected = [stardist_matching.matching(truth, prediction, thresh=float(t)).accuracy for t in DEFAULT_IOU_THRESHOLDS]
    np.testing.assert_allclose(ap.precision, expected, atol=1e-12)
    assert ap.mean == pytest.approx(np.mean(expected))
    assert 0 < ap.mean < 1


@pytest.mark.parametrize(
    "truth_empty, prediction_empty", [(True, True), (True, False), (False, True)], ids=["both", "truth", "prediction"]
)
def test_empty_images_follow_stardist(truth_empty, prediction_empty):
    objects = blob_labels((32, 32), 3)
    truth = np.zeros_like(objects) if truth_empty else objects
    prediction = np.zeros_like(objects) if prediction_empty else objects
    ours = match_instances(truth, prediction)
    theirs = stardist_matching.matching(truth, prediction)
    for field in MATCH_FIELDS:
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.accuracy == 0.0  # even for two empty images, as stardist
    assert average_precision(truth, prediction).mean == 0.0


def test_instance_input_errors():
    with pytest.raises(ValueError, match="shape"):
        match_instances(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="non-integer"):
        average_precision(np.zeros((4, 4), int), np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="2D"):
        match_instances(np.zeros((2, 5, 5), int), np.zeros((2, 5, 5), int))
    with pytest.raises(ValueError, match="thresholds"):
        average_precision(np.zeros((4, 4), int), np.zeros((4, 4), int), thresholds=[])


# -- adapted Rand error -----------------------------------------------------------------------
@pytest.mark.parametrize("ignore_labels", [(0,), None, (0, 3)])
@pytest.mark.parametrize("seed", range(3))
def test_adapted_rand_error_matches_skimage(seed, ignore_labels):
    truth = blob_labels((40, 48), seed)
    prediction = prediction_like(truth, seed)
    ours = adapted_rand_error(truth, prediction, ignore_labels=ignore_labels)
    theirs = skimage_adapted_rand_error(truth, prediction, ignore_labels=ignore_labels if ignore_labels else ())
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_adapted_rand_error_with_large_ids():
    truth = blob_labels((40, 48), 9)
    prediction = prediction_like(truth, 9)
    expected = skimage_adapted_rand_error(truth, prediction)
    large_truth = np.where(truth > 0, truth.astype(np.uint64) + np.uint64(2**62), 0)
    np.testing.assert_allclose(adapted_rand_error(large_truth, scramble_ids(prediction, 4)), expected, atol=1e-12)


def test_adapted_rand_error_zero_denominator_is_nan():
    error, precision, recall = adapted_rand_error(np.zeros((3, 3), int), np.ones((3, 3), int))
    assert np.isnan(error) and np.isnan(precision) and np.isnan(recall)


# -- helpers ----------------------------------------------------------------------------------
def test_relabel_keeps_zero_and_order():
    for labels in (np.array([[0, 70000, 5], [5, 0, 70000]]), np.array([[2**62, 7], [7, 2**62]], np.uint64)):
        codes, ids = relabel(labels)
        np.testing.assert_array_equal(ids[codes], labels)
        assert ids[0] == 0 and np.all(np.diff(ids.astype(float)) > 0)


def test_contingency_hand_counts_and_keep_mask():
    u = np.array([[0, 1, 1], [2, 2, 0]])
    v = np.array([[0, 3, 0], [3, 3, 0]])
    table = contingency(u, v)
    cells = {(r, c): n for r, c, n in zip(table.rows, table.cols, table.counts)}
    assert cells == {(0, 0): 2, (1, 3): 1, (1, 0): 1, (2, 3): 2}
    np.testing.assert_array_equal(table.row_sums(), [2, 2, 2])
    kept = contingency(u, v, keep=np.array([[False, True, True], [True, False, False]]))
    assert dict(zip(zip(kept.rows, kept.cols), kept.counts)) == {(1, 3): 1, (1, 0): 1, (2, 3): 1}


@pytest.mark.parametrize("sparse", [False, True])
def test_contingency_counted_in_chunks_is_the_table_of_the_whole_image(monkeypatch, sparse):
    from cte_kit.scoring import metrics

    rng = np.random.default_rng(3)
    u = label(ndi.binary_opening(rng.random((120, 90)) < 0.6)).astype(np.int32)
    v = label(ndi.binary_opening(rng.random((120, 90)) < 0.6)).astype(np.uint16)
    if sparse:  # ids far beyond the pixel count: the table compacts them to their ranks
        u = np.where(u > 0, u.astype(np.int64) * 10**7 + 3, 0)
    keep = rng.random(u.shape) < 0.8
    whole = [contingency(u, v), contingency(u, v, keep)]
    monkeypatch.setattr(metrics, "CONTINGENCY_CHUNK", 1000)  # eleven chunks, cut across rows
    for (table, reference), mask in zip(zip([contingency(u, v), contingency(u, v, keep)], whole), (None, keep)):
        assert table.shape == reference.shape and (table.compacted is not None) == sparse
        for field in ("rows", "cols", "counts"):
            np.testing.assert_array_equal(getattr(table, field), getattr(reference, field))
        # and against an independent count of the (u, v) pairs
        pairs, counts = np.unique(np.stack([u[mask].ravel() if mask is not None else u.ravel(),
                                            v[mask].ravel() if mask is not None else v.ravel()]), axis=1,
                                  return_counts=True)
        row_ids, col_ids = table.ids
        assert {(int(a), int(b)): int(n) for a, b, n in zip(row_ids[table.rows], col_ids[table.cols], table.counts)} == \
            {(int(a), int(b)): int(n) for (a, b), n in zip(pairs.T, counts)}

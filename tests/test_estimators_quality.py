"""The quality-control scores as the module documents them: products, bounds, per-image flags."""

import numpy as np
import pytest

from cte_kit.estimators.guards import GuardConfig, image_flags, image_statistics
from cte_kit.estimators.quality import image_evidence, image_scores, object_scores


def test_object_score_is_stability_times_agreement():
    np.testing.assert_allclose(object_scores([1.0, 0.0, 0.5, 0.8], [1.0, 1.0, 0.5, np.nan]), [1.0, 0.0, 0.25, 0.8])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        object_scores([1.2], [0.5])
    with pytest.raises(ValueError, match="every object needs a stability"):
        object_scores([np.nan], [0.5])


def test_image_score_counts_undefined_parts_as_one_and_flags_as_zero():
    found = image_scores([0.8, np.nan, 0.9, 0.5], [0.5, 0.6, np.nan, 1.0], [False, False, False, True])
    np.testing.assert_allclose(found, [0.4, 0.6, 0.9, 0.0])
    with pytest.raises(ValueError, match="one of each per image"):
        image_scores([0.5], [0.5, 0.5], [False])


def _square(shape=(32, 32), where=(slice(4, 12), slice(4, 12)), label=1):
    labels = np.zeros(shape, np.int32)
    labels[where] = label
    return labels > 0, labels


def test_evidence_against_the_other_models():
    foreground, labels = _square()
    same = _square()
    elsewhere = _square(where=(slice(20, 28), slice(20, 28)))
    evidence = image_evidence(foreground, labels, [same, same, elsewhere])
    assert evidence.n_others == 3 and evidence.consensus_objects == 1
    # mean object F1 over the others: 1, 1, 0; the others' majority vote is the same square
    assert evidence.agreement == pytest.approx(2 / 3) and evidence.consensus_f1 == 1.0 and evidence.consensus_iou == 1.0
    np.testing.assert_allclose(evidence.object_agreement, [2 / 3])
    alone = image_evidence(foreground, labels, [])
    assert alone.n_others == 0 and np.isnan(alone.agreement) and np.isnan(alone.object_agreement).all()
    with pytest.raises(ValueError, match="shapes"):
        image_evidence(foreground, labels, [_square(shape=(16, 16))])


def test_image_flags_use_the_guards_thresholds():
    flood = np.ones((20, 20), bool)
    assert [f.code for f in image_flags(image_statistics(flood, flood.astype(int)))] == ["floods"]
    empty = np.zeros((20, 20), bool)
    codes = [f.code for f in image_flags(image_statistics(empty, empty.astype(int)), 0.2, 5, n_voters=3)]
    assert codes == ["empty"]
    assert image_flags(image_statistics(empty, empty.astype(int)), 0.2, 5, n_voters=2) == ()  # no consensus
    many = np.zeros((20, 20), int)
    many[::2, ::2] = np.arange(1, 101).reshape(10, 10)
    codes = [f.code for f in image_flags(image_statistics(many > 0, many), 0.25, 10, n_voters=4, config=GuardConfig())]
    assert "over-splits" in codes

"""Label-free estimators: hand-computed values, known orderings, and no labels ever reach them."""

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.measure import label

from cte_kit.estimators import EstimatorInput, run_estimator
from cte_kit.estimators.label_free import (BankAgreement, Confidence, Entropy, MaNo, NuNo, TTADisagreement,
                                           dispersion_score, effective_invariance, mano_score, max_confidence,
                                           nuclear_norm_score, pixel_entropy, tta_disagreement)
from cte_kit.estimators.guards import foreground_agreement, object_agreement
from cte_kit.types import Prediction
from cte_kit.models.base import SegmentationModel


@dataclass
class SharpModel(SegmentationModel):
    """A black box: foreground probability ``sigmoid(sharpness * (image - 0.5))``, plus a bias to the right."""

    sharpness: float = 1.0
    skew: float = 0.0

    def _predict_normalised(self, batch):
        out = []
        for image in batch:
            ramp = self.skew * np.linspace(-1, 1, image.shape[1])[None]
            p = 1 / (1 + np.exp(-self.sharpness * (image - 0.5 + ramp)))
            out.append(Prediction(probability=p.astype(np.float32), labels=label(p > 0.5).astype(np.int32)))
        return out


def _images(n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    blobs = [gaussian_filter(rng.random((size, size)), 2.0) for _ in range(n)]
    return [((b - b.min()) / (b.max() - b.min())).astype(np.float32) for b in blobs]


def test_entropy_and_confidence_by_hand():
    p = np.array([[0.5, 1.0], [0.0, 0.5]])
    assert pixel_entropy(p) == pytest.approx(np.log(2) / 2)
    assert max_confidence(np.array([[0.9, 0.2]])) == pytest.approx(0.85)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        pixel_entropy(np.array([1.5]))


def test_effective_invariance_over_all_pixels_by_hand():
    clean, perturbed = np.array([[0.9, 0.2, 0.1]]), np.array([[0.6, 0.7, 0.3]])
    expected = (np.sqrt(0.9 * 0.6) + 0.0 + np.sqrt(0.9 * 0.7)) / 3  # the background pixel counts too
    assert effective_invariance(clean, perturbed) == pytest.approx(expected)


def test_tta_disagreement_by_hand():
    assert tta_disagreement(np.array([[[0.0, 1.0]], [[1.0, 1.0]]])) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="n_views >= 2"):
        tta_disagreement(np.zeros((1, 2, 2)))


def test_nuclear_norm_against_numpy_and_extremes():
    rng = np.random.default_rng(1)
    matrix = rng.dirichlet([1, 1], size=50)
    assert nuclear_norm_score(matrix) == pytest.approx(np.linalg.norm(matrix, "nuc") / np.sqrt(50 * 2))
    assert nuclear_norm_score(np.eye(2)[[0, 1] * 10]) == pytest.approx(1.0)
    assert nuclear_norm_score(np.full((20, 2), 0.5)) == pytest.approx(0.5)


def test_mano_softmax_branch_and_taylor_branch():
    confident = np.array([[0.0, 50.0], [50.0, 0.0]] * 5)  # KL from uniform >> 5: softmax, one-hot rows
    assert mano_score(confident) == pytest.approx(2 ** (-1 / 4))
    flat = np.zeros((10, 2))  # Taylor branch: uniform rows -> ||.||_4 = (N C 0.5^4)^(1/4) / (N C)^(1/4)
    assert mano_score(flat) == pytest.approx(0.5)
    assert mano_score(np.array([[-1.0, 1.0]] * 10)) > mano_score(flat)


def test_dispersion_by_hand():
    assert dispersion_score(np.array([[0.0], [2.0]]), np.array([0, 1])) == pytest.approx(np.log(2), abs=1e-9)
    assert np.isnan(dispersion_score(np.ones((3, 2)), np.zeros(3, int)))


def test_leave_one_out_consensus_against_a_loop():
    from cte_kit.estimators.guards import leave_one_out_consensus

    rng = np.random.default_rng(3)
    for n_models in (3, 4, 5):
        masks = rng.random((n_models, 6, 7)) > 0.5
        consensus = leave_one_out_consensus(masks)
        for i in range(n_models):
            others = np.delete(masks, i, axis=0)
            np.testing.assert_array_equal(consensus[i], others.sum(axis=0) > (n_models - 1) / 2)


def test_agreements_by_hand():
    truth = np.zeros((8, 8), bool)
    truth[1:3, 1:3] = True
    truth[5:7, 5:7] = True
    mask = np.zeros_like(truth)
    mask[1:3, 1:3] = True
    assert foreground_agreement(truth, mask) == pytest.approx(0.5)
    assert foreground_agreement(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert object_agreement(truth, mask.astype(np.int32)) == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


def test_confidence_orders_models_by_sharpness():
    models = [SharpModel(name=f"s{k}", percentiles=None, sharpness=k) for k in (1.0, 4.0, 16.0)]
    images = _images()
    for estimator in (Entropy(), Confidence(), NuNo(n_pixels=200), MaNo(n_pixels=200)):
        scores = [r.score for r in run_estimator(estimator, models, images, ["a", "b", "c"])]
        assert np.all(np.diff(scores) > 0), (estimator.name, scores)


def test_tta_prefers_the_model_without_orientation_bias():
    models = [SharpModel(name=f"k{k}", percentiles=None, sharpness=8.0, skew=k) for k in (0.0, 0.2, 0.6)]
    scores = [r.score for r in run_estimator(TTADisagreement(), models, _images(2), ["a", "b"])]
    assert scores[0] > scores[1] > scores[2]


def test_bank_agreement_ranks_the_outlier_last():
    models = [SharpModel(name=f"k{k}", percentiles=None, sharpness=8.0, skew=k) for k in (0.0, 0.02, -0.02, 0.5)]
    images = _images(2)
    for level in ("semantic", "instance"):
        scores = [r.score for r in run_estimator(BankAgreement(level), models, images, ["a", "b"])]
        assert np.argmin(scores) == 3, (level, scores)
    with pytest.raises(ValueError, match="at least 3 models"):
        run_estimator(BankAgreement(), models[:2], images, ["a", "b"])


def test_runner_never_hands_labels_to_a_label_free_estimator(monkeypatch):
    """Every label-free estimator of the registry, run by compare(), gets inputs without labels."""
    import cte_kit.estimators.base as base
    from cte_kit.estimators import ESTIMATORS
    from cte_kit.evaluation.comparison import compare
    from cte_kit.evaluation.comparison import Target

    received = []
    original = base.EstimatorInput

    def spy(*args, **kwargs):
        item = original(*args, **kwargs)
        received.append(item)
        return item

    monkeypatch.setattr(base, "EstimatorInput", spy)
    models = [SharpModel(name=f"k{k}", percentiles=None, sharpness=8.0, skew=k) for k in (0.0, 0.1, 0.3)]
    images = _images(2, size=16)
    labels = [(image > 0.5).astype(np.int32) for image in images]
    label_free = {name: e for name, e in ESTIMATORS.items() if e.label_free}
    comparison = compare(models, [Target("t", images, labels, ["a", "b"])], label_free, n_boot=0, progress=False)
    assert received and all(item.labels is None and item.source is None for item in received)
    assert {row["estimator"] for row in comparison.rows} == set(label_free)
    # black-box models: feature-based estimators are n/a with a reason, not a crash
    dispersion = next(row for row in comparison.rows if row["estimator"] == "dispersion")
    assert dispersion["n_models"] == 0 and "black box" in dispersion["not_applicable"]
    assert isinstance(received[0], EstimatorInput)

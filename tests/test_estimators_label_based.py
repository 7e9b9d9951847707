"""Label-based estimators: OT against POT's exact solver, MST against scipy, hand cases, known orderings."""

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree as scipy_mst
from scipy.spatial.distance import cdist

from cte_kit.estimators import EstimatorInput, MissingInputError, SourceData, run_estimator
from cte_kit.estimators.label_based import (CCFV, LEEP, OTCE, LogME, Topology, ccfv_score, conditional_entropy,
                                            cross_label_edge_ratio, frechet_distance, leep_score, logme_score,
                                            minimum_spanning_tree, otce_score, topology_fusion, transport_plan)
from cte_kit.estimators.sampling import features_at, sample_pixels


def test_transport_plan_matches_pots_exact_solver_on_a_tiny_problem():
    import ot

    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    cost = cdist(xs, xt, "sqeuclidean")
    exact = ot.emd(np.full(6, 1 / 6), np.full(5, 1 / 5), cost)
    np.testing.assert_allclose(transport_plan(xs, xt, "emd"), exact, atol=1e-12)
    entropic = transport_plan(xs, xt, "sinkhorn", epsilon=0.01)
    assert (entropic * cost).sum() == pytest.approx((exact * cost).sum(), rel=0.05)
    np.testing.assert_allclose(entropic.sum(axis=1), 1 / 6, atol=1e-5)
    # points matched one to one along a line: the exact plan is the sorted matching
    line = np.array([[0.0], [1.0], [2.0]])
    np.testing.assert_allclose(transport_plan(line, line + 0.1, "emd"), np.eye(3) / 3, atol=1e-12)


def test_conditional_entropy_by_hand():
    plan = np.eye(3) / 3
    assert conditional_entropy(plan, np.array([0, 0, 1]), np.array([0, 1, 1])) == pytest.approx(2 / 3 * np.log(2))
    assert conditional_entropy(plan, np.array([0, 1, 2]), np.array([1, 0, 1])) == pytest.approx(0.0)


def test_otce_prefers_features_that_carry_the_labels():
    rng = np.random.default_rng(1)
    ys, yt = np.repeat([0, 1], 40), rng.permutation(np.repeat([0, 1], 40))
    xs, xt = ys[:, None] * 3 + rng.normal(0, 0.3, (80, 1)), yt[:, None] * 3 + rng.normal(0, 0.3, (80, 1))
    noise = otce_score(rng.normal(size=(80, 1)), ys, rng.normal(size=(80, 1)), yt)
    assert otce_score(xs, ys, xt, yt) > noise
    assert otce_score(xs, ys, xt, yt, solver="emd") == pytest.approx(0.0, abs=1e-9)  # classes map one to one
    assert noise == pytest.approx(-np.log(2), abs=0.1)  # labels independent of the coupling


def test_leep_by_hand_and_ordering():
    labels = np.array([0, 1, 1, 0])
    perfect = np.eye(2)[labels]
    assert leep_score(labels, perfect) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full((4, 2), 0.5)
    assert leep_score(labels, uniform) == pytest.approx(np.log(0.5))


def test_logme_orders_features_by_how_linearly_they_predict_labels():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    good = np.column_stack([labels + rng.normal(0, 0.1, 300), rng.normal(size=300)])
    poor = np.column_stack([labels + rng.normal(0, 2.0, 300), rng.normal(size=300)])
    assert logme_score(labels, good) > logme_score(labels, poor)


def test_frechet_distance_of_shifted_samples():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(x, x + np.array([3.0, 4.0, 0.0])) == pytest.approx(5.0, abs=1e-3)


def test_ccfv_prefers_consistent_classes():
    rng = np.random.default_rng(4)
    labels = [np.repeat([0, 1], 50) for _ in range(3)]
    consistent = [np.column_stack([l * 2.0 + rng.normal(0, 0.2, 100), rng.normal(0, 0.2, 100)]) for l in labels]
    drifting = [np.column_stack([l * 2.0 + k * 3 + rng.normal(0, 0.2, 100), rng.normal(0, 0.2, 100) * (k + 1)])
                for k, l in enumerate(labels)]
    assert ccfv_score(consistent, labels) > ccfv_score(drifting, labels)


def test_minimum_spanning_tree_matches_scipy():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(40, 4))
    parents, children, lengths = minimum_spanning_tree(points)
    reference = scipy_mst(cdist(points, points)).toarray()
    assert lengths.sum() == pytest.approx(reference.sum())
    assert sorted(np.round(lengths, 10)) == sorted(np.round(reference[reference > 0], 10))
    assert len(set(children.tolist())) == 39 and 0 not in children.tolist()
    np.testing.assert_allclose(lengths, np.linalg.norm(points[parents] - points[children], axis=1))


def test_cross_label_edge_ratio_on_separated_and_mixed_labels():
    points = np.concatenate([np.zeros((10, 2)), np.full((10, 2), 10.0)]) + np.random.default_rng(6).normal(0, 0.1, (20, 2))
    labels = np.repeat([0, 1], 10)
    expected = 1 - (10 * 9 + 10 * 9) / (20 * 19)
    assert cross_label_edge_ratio(points, labels) == pytest.approx((1 / 19) / expected)
    assert np.isnan(cross_label_edge_ratio(points, np.zeros(20, int)))
    assert topology_fusion(1.0, 0.0, 2) == pytest.approx(0.5)
    assert topology_fusion(1.0, 0.0, 5) == pytest.approx(0.8)


def test_sampling_is_seeded_and_bounded():
    a = sample_pixels((64, 64), 100, seed=1)
    np.testing.assert_array_equal(a[0], sample_pixels((64, 64), 100, seed=1)[0])
    assert not np.array_equal(a[1], sample_pixels((64, 64), 100, seed=2)[1])
    for side in (64, 1024, 4096):  # the sample does not grow with the image
        assert sample_pixels((side, side), 100, seed=0)[0].size == 100
    mask = np.zeros((8, 8), bool)
    mask[2, 3] = True
    assert [v.tolist() for v in sample_pixels((8, 8), 5, 0, mask)] == [[2], [3]]
    features = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4)  # stride 2 of an 8 x 8 image
    np.testing.assert_array_equal(features_at(features, (8, 8), np.array([7]), np.array([2])), [[13.0, 29.0]])


@pytest.fixture(scope="module")
def demo_models():
    from cte_kit.teaching.demo import demo_bank_entries
    from cte_kit.models.bank import load_model

    return [load_model(entry) for entry in demo_bank_entries()[:3]]


@pytest.fixture(scope="module")
def target():
    from cte_kit.data.synthetic import DEMO_TARGET, generate

    data = generate(DEMO_TARGET, 2, shape=(64, 64), seed=5)
    return data.images, data.labels, data.names


def test_label_based_estimators_name_what_is_missing(demo_models, target):
    images, labels, names = target
    for estimator in (LEEP(), LogME(), CCFV(), Topology()):
        with pytest.raises(MissingInputError, match="target labels"):
            run_estimator(estimator, demo_models[:1], images, names)
        with pytest.raises(MissingInputError, match="target labels"):
            estimator.score(demo_models[0], EstimatorInput(tuple(images), tuple(names)))
    with pytest.raises(MissingInputError, match="source images and labels"):
        run_estimator(OTCE(), demo_models[:1], images, names, labels=labels)
    with pytest.raises(MissingInputError, match="source"):
        OTCE().score(demo_models[0], EstimatorInput(tuple(images), tuple(names), labels=tuple(labels)))


def test_label_based_estimators_score_kit_unets(demo_models, target):
    images, labels, names = target
    source = SourceData(tuple(images), tuple(labels), tuple(names))
    for estimator in (LEEP(n_pixels=200), LogME(n_pixels=200), CCFV(n_per_class=20), Topology(n_pixels=16),
                      OTCE(n_pixels=100, repeats=1), OTCE(n_pixels=100, repeats=1, solver="emd")):
        results = run_estimator(estimator, demo_models, images, names, labels=labels, sources=[source] * 3)
        assert all(np.isfinite(r.score) for r in results), estimator.key
    first, second = (run_estimator(Topology(n_pixels=16), demo_models[:1], images, names, labels=labels)[0].score
                     for _ in range(2))
    assert first == second  # seeded by the estimator key and the image names


def test_sinkhorn_that_stops_early_warns_once_per_model_with_the_count(demo_models, target, monkeypatch):
    """A notebook scoring OTCE on a bank printed one identical warning per draw, each with a file and a line."""
    import warnings

    from cte_kit import CTEKitWarning
    from cte_kit.estimators.label_based import SinkhornWarning

    rng = np.random.default_rng(0)
    with pytest.warns(SinkhornWarning, match="Sinkhorn stopped"):
        transport_plan(rng.normal(size=(30, 2)) * 50, rng.normal(size=(30, 2)) * 50, epsilon=1e-3, max_iter=2)
    assert issubclass(SinkhornWarning, CTEKitWarning)  # printed as a sentence in notebooks and on the command line

    import ot

    original = ot.sinkhorn

    def stops_early(*args, **kwargs):  # POT's own warning when it runs out of iterations
        warnings.warn("Sinkhorn did not converge. You might want to increase the number of iterations `numItermax` "
                      "or the regularization parameter `reg`.", UserWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(ot, "sinkhorn", stops_early)
    images, labels, names = target
    source = SourceData(tuple(images), tuple(labels), tuple(names))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_estimator(OTCE(n_pixels=100, repeats=3), demo_models[:2], images, names, labels=labels,
                      sources=[source] * 2)
    stopped = [str(w.message) for w in caught if issubclass(w.category, SinkhornWarning)]
    assert len(stopped) == 2 and all("in 3 of 3 draw(s)" in message for message in stopped), stopped
    assert not [w for w in caught if "did not converge" in str(w.message)]  # POT's own are folded in

"""Ranks, correlations and bootstrap of CTE scores (cte_kit.scoring.ranking)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cte_kit.scoring import ranking
from cte_kit.scoring.ranking import (BootstrapResult, Correlations, bootstrap_scores, correlations, rank_scores, tied_at_top)


# -- ranks ------------------------------------------------------------------------------------
def test_rank_scores_descending_ties_averaged_nan_last():
    np.testing.assert_array_equal(rank_scores([0.3, np.nan, 0.9, 0.3]), [2.5, 4.0, 1.0, 2.5])
    np.testing.assert_array_equal(rank_scores([np.nan, 0.1, np.nan]), [2.5, 1.0, 2.5])
    np.testing.assert_array_equal(rank_scores([1.0, 2.0, 3.0]), [3.0, 2.0, 1.0])


def test_tied_at_top():
    assert tied_at_top([0.8, 0.8, 0.5]) == 2
    assert tied_at_top([0.8, 0.79, 0.5]) == 1
    assert tied_at_top([0.8, 0.79, 0.5], tol=0.015) == 2
    assert tied_at_top([np.nan, 0.2, np.nan]) == 1
    assert tied_at_top([np.nan, np.nan]) == 0


def test_rank_input_errors():
    with pytest.raises(ValueError, match="1D"):
        rank_scores(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="infinite"):
        rank_scores([1.0, np.inf])


# -- correlations -----------------------------------------------------------------------------
def test_perfect_and_reversed_orders():
    cte = np.array([0.1, 0.3, 0.35, 0.6, 0.7, 0.9])
    same = correlations(cte, cte**2)
    assert isinstance(same, Correlations)
    assert same.spearman == pytest.approx(1) and same.kendall == pytest.approx(1)
    assert same.weighted_kendall == pytest.approx(1) and 0.95 < same.pearson < 1
    # 6 models: all 720 pairings are enumerated, and only the identity and the reversal reach
    # |tau| = |rho| = 1, so the two-sided p is 2 / 720 exactly.
    assert same.kendall_p == pytest.approx(2 / 720) and same.spearman_p == pytest.approx(2 / 720)
    reverse = correlations(cte, -cte)
    assert reverse.spearman == pytest.approx(-1) and reverse.kendall == pytest.approx(-1)
    assert reverse.pearson == pytest.approx(-1) and reverse.weighted_kendall == pytest.approx(-1)


def test_hand_computed_tau_b_and_rho_with_a_tie():
    # Ranks: cte (4, 3, 2, 1), performance (4, 2.5, 2.5, 1). Of the 6 pairs, 5 are concordant
    # and 1 is tied in performance only: tau_b = 5 / sqrt(6 * 5).
    # rho = Pearson of the ranks: deviations (1.5, .5, -.5, -1.5) and (1.5, 0, 0, -1.5),
    # cross sum 4.5, squares 5 and 4.5: rho = 4.5 / sqrt(22.5).
    stats = correlations([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.6, 0.9])
    assert stats.kendall == pytest.approx(5 / math.sqrt(30), abs=1e-12)
    assert stats.spearman == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    # Pearson of the raw scores, by hand: deviations (-.15, -.05, .05, .15) and (-.15, -.05, -.05, .25).
    assert stats.pearson == pytest.approx(0.06 / math.sqrt(0.05 * 0.09), abs=1e-12)
    assert stats.n_models == 4


@pytest.mark.parametrize("seed", range(3))
def test_statistics_agree_with_scipy_on_tied_scores(seed):
    rng = np.random.default_rng(seed)
    cte, performance = rng.integers(0, 4, 8) / 4, rng.integers(0, 5, 8) / 5  # many ties
    stats = correlations(cte, performance)
    assert stats.kendall == pytest.approx(scipy_stats.kendalltau(cte, performance).statistic, abs=1e-12)
    assert stats.spearman == pytest.approx(scipy_stats.spearmanr(cte, performance).statistic, abs=1e-12)
    assert stats.pearson == pytest.approx(np.corrcoef(cte, performance)[0, 1], abs=1e-12)


def test_permutation_p_values_are_seeded():
    rng = np.random.default_rng(0)
    cte = rng.random(9)
    performance = cte + rng.normal(0, 0.3, 9)
    first, again = correlations(cte, performance, seed=3), correlations(cte, performance, seed=3)
    assert first == again
    assert 0 < first.kendall_p < 1 and 0 < first.spearman_p < 1
    other = correlations(cte, performance, seed=4)
    assert (other.kendall_p, other.spearman_p) != (first.kendall_p, first.spearman_p)


def test_degenerate_inputs_give_nan_without_error():
    cases = [
        ([0.1, 0.2], [0.3, 0.4]),  # two models
        ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]),  # constant CTE
        ([0.1, np.nan, 0.3, 0.2], [0.1, 0.2, np.nan, 0.3]),  # two models left after NaNs
    ]
    for cte, performance in cases:
        stats = correlations(cte, performance)
        for field in ("pearson", "pearson_p", "spearman", "spearman_p", "kendall", "kendall_p", "weighted_kendall"):
            assert math.isnan(getattr(stats, field)), field
    assert correlations([0.1, np.nan, 0.3, 0.2], [0.1, 0.2, np.nan, 0.3]).n_models == 2
    with pytest.raises(ValueError, match="models"):
        correlations([0.1, 0.2, 0.3], [0.1, 0.2])


# -- bootstrap --------------------------------------------------------------------------------
def synthetic_per_image(seed=0, n_images=25):
    rng = np.random.default_rng(seed)
    per_image = rng.normal([[0.5], [0.55], [0.8]], 0.05, size=(3, n_images))
    per_image[0, :4] = np.nan
    return per_image


def test_bootstrap_is_seeded_and_p_top_sums_to_one():
    per_image = synthetic_per_image()
    result = bootstrap_scores(per_image, n_boot=300, statistic="median", seed=1)
    assert isinstance(result, BootstrapResult)
    again = bootstrap_scores(per_image, n_boot=300, statistic="median", seed=1)
    for field in ("low", "high", "p_top"):
        np.testing.assert_array_equal(getattr(result, field), getattr(again, field))
    assert result.p_top.sum() == pytest.approx(1.0)
    assert result.p_top[2] == 1.0 and result.p_best_is_top == 1.0
    assert result.low[2] > result.high[1]
    median = np.nanmedian(per_image, axis=1)
    assert np.all(result.low <= median) and np.all(median <= result.high)
    assert (result.statistic, result.n_boot) == ("median", 300)
    assert bootstrap_scores(per_image, n_boot=2).statistic == "mean"  # the kit's default


def test_one_replicate_is_the_statistic_of_the_drawn_images():
    per_image = synthetic_per_image(1, n_images=11)
    drawn = np.random.default_rng(5).integers(0, 11, size=(1, 11))[0]
    for statistic, function in (("median", np.nanmedian), ("mean", np.nanmean)):
        result = bootstrap_scores(per_image, n_boot=1, statistic=statistic, seed=5)
        np.testing.assert_allclose(result.low, function(per_image[:, drawn], axis=1))
        np.testing.assert_allclose(result.high, result.low)


def test_bootstrap_chunks_do_not_change_the_result(monkeypatch):
    per_image = synthetic_per_image()
    whole = bootstrap_scores(per_image, n_boot=200, seed=3)
    monkeypatch.setattr(ranking, "_BOOTSTRAP_CHUNK_VALUES", 100)  # one replicate per chunk
    chunked = bootstrap_scores(per_image, n_boot=200, seed=3)
    for field in ("low", "high", "p_top"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field))


def test_close_models_share_p_top_and_ties_split():
    rng = np.random.default_rng(2)
    per_image = np.vstack([rng.random(30), rng.random(30)])
    result = bootstrap_scores(per_image, n_boot=400, seed=0)
    assert 0.05 < result.p_top[0] < 0.95 and result.p_top.sum() == pytest.approx(1.0)
    twins = bootstrap_scores(np.vstack([per_image[0], per_image[0]]), n_boot=50)
    np.testing.assert_allclose(twins.p_top, [0.5, 0.5])


def test_all_nan_model_and_errors():
    per_image = synthetic_per_image()
    per_image[1] = np.nan
    result = bootstrap_scores(per_image, n_boot=100, statistic="trimmed")
    assert result.p_top[1] == 0.0 and math.isnan(result.low[1]) and math.isnan(result.high[1])
    assert result.p_top.sum() == pytest.approx(1.0)
    assert math.isnan(bootstrap_scores(np.full((2, 5), np.nan), n_boot=10).p_best_is_top)
    with pytest.raises(ValueError, match="n_models, n_images"):
        bootstrap_scores(np.zeros(5))
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_scores(per_image, statistic="mode")
    with pytest.raises(ValueError, match="ci"):
        bootstrap_scores(per_image, ci=1.5)

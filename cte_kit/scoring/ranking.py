"""Rank models by CTE and judge the ranking against true performance.

* :func:`rank_scores` - rank 1 for the highest score, average ranks for ties, NaN last;
* :func:`correlations` - Pearson r on the raw scores, Spearman rho and Kendall tau-b on the
  ranks with permutation p-values, and a top-weighted Kendall tau (as the official analysis,
  plus the weighted tau);
* :func:`bootstrap_scores` - how sure the ranking is: paired bootstrap over target images of
  each model's CTE statistic, with percentile intervals and the probability of being on top;
* :func:`tied_at_top` - how many models share the best score.

All functions take one value per model (or per model and image) for a single target.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .consistency import DEFAULT_STATISTIC, nan_statistic

__all__ = ["Correlations", "BootstrapResult", "rank_scores", "correlations", "bootstrap_scores", "tied_at_top"]

# scipy >= 1.15 seeds resampling tests with `rng`; older releases only know `random_state`.
_SEED_KEYWORD = "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"

# Bootstrap replicates are gathered in chunks of at most this many values (~32 MB of float64).
_BOOTSTRAP_CHUNK_VALUES = 1 << 22


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be 1D (one value per model), got shape {scores.shape}")
    if np.isinf(scores).any():
        raise ValueError(f"{name} contain infinite values")
    return scores


def rank_scores(scores) -> np.ndarray:
    """Descending ranks: 1 for the highest score.

    Parameters
    ----------
    scores : (n_models,) float array_like

    Returns
    -------
    (n_models,) float ndarray
        Tied scores share the average of their ranks; NaN scores come after every defined
        score (and tie with each other).
    """
    scores = _as_scores(scores)
    # rankdata would propagate NaN; as -inf (real scores are finite) NaNs rank last, tied.
    return stats.rankdata(-np.where(np.isnan(scores), -np.inf, scores), method="average")


def tied_at_top(scores, tol: float = 0.0) -> int:
    """Number of models whose score is within ``tol`` of the best one (0 if all are NaN)."""
    scores = _as_scores(scores)
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if np.isnan(scores).all():
        return 0
    return int(np.count_nonzero(scores >= np.nanmax(scores) - tol))


# -- correlations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Correlations:
    """Agreement of a CTE ranking with the true performance ranking of the same models.

    Attributes
    ----------
    pearson, pearson_p : float
        Pearson r of the raw scores, parametric two-sided p-value.
    spearman, spearman_p : float
        Spearman rho of the rank vectors, permutation p-value.
    kendall, kendall_p : float
        Kendall tau-b of the rank vectors, permutation p-value.
    weighted_kendall : float
        ``scipy.stats.weightedtau`` (hyperbolic weights, exchanges near the top cost most).
    n_models : int
        Models with both scores defined (the others are left out).

    Notes
    -----
    With fewer than 3 models, or when either vector is constant, every value is NaN.
    """

    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    weighted_kendall: float
    n_models: int


# The two statistics below follow scipy's vectorised-statistic protocol (``axis`` keyword).
def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    return (x * y).sum(axis=-1) / np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))


def _kendall_tau_b(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """tau-b = sum sgn(dx) sgn(dy) / sqrt(sum sgn(dx)^2 sum sgn(dy)^2) over pairs i < j."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    upper = np.triu_indices(x.shape[-1], k=1)
    sign_x = np.sign(x[..., :, None] - x[..., None, :])[..., upper[0], upper[1]]
    sign_y = np.sign(y[..., :, None] - y[..., None, :])[..., upper[0], upper[1]]
    return (sign_x * sign_y).sum(axis=-1) / np.sqrt((sign_x**2).sum(axis=-1) * (sign_y**2).sum(axis=-1))


def _permutation_p(statistic, x: np.ndarray, y: np.ndarray, n_resamples: int, seed: int) -> float:
    # Only the pairing matters, so permuting x alone gives the same null distribution as
    # permuting both; scipy then counts n! (not n!^2) pairings and enumerates them exactly
    # whenever n! <= n_resamples (up to 6 models with 1000 resamples).
    result = stats.permutation_test(
        (x,),
        lambda x_permuted, axis=-1: statistic(x_permuted, y, axis=axis),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        axis=-1,
        **{_SEED_KEYWORD: seed},
    )
    return float(result.pvalue)


def correlations(cte, performance, n_resamples: int = 1000, seed: int = 0) -> Correlations:
    """Correlation of CTE scores with true performance across models.

    Parameters
    ----------
    cte, performance : (n_models,) float array_like
        One value per model, higher is better. Models with a NaN in either are left out.
    n_resamples : int
        Random pairings for the Spearman and Kendall p-values; when ``n_models!`` is not
        larger, all pairings are enumerated and the p-values are exact.
    seed : int

    Returns
    -------
    Correlations
        NaN values (no exception) for fewer than 3 models or a constant vector.
    """
    cte, performance = _as_scores(cte, "cte"), _as_scores(performance, "performance")
    if cte.shape != performance.shape:
        raise ValueError(f"cte has {cte.size} models but performance has {performance.size}")
    defined = ~(np.isnan(cte) | np.isnan(performance))
    cte, performance = cte[defined], performance[defined]
    n_models = int(cte.size)
    if n_models < 3 or np.ptp(cte) == 0 or np.ptp(performance) == 0:
        nan = float("nan")
        return Correlations(nan, nan, nan, nan, nan, nan, nan, n_models)
    pearson = stats.pearsonr(cte, performance)
    rank_cte, rank_performance = rank_scores(cte), rank_scores(performance)
    return Correlations(
        pearson=float(pearson.statistic),
        pearson_p=float(pearson.pvalue),
        # Pearson of rank vectors is Spearman's rho; permuting pairings keeps them rank vectors.
        spearman=float(_pearson(rank_cte, rank_performance)),
        spearman_p=_permutation_p(_pearson, rank_cte, rank_performance, n_resamples, seed),
        kendall=float(_kendall_tau_b(rank_cte, rank_performance)),
        kendall_p=_permutation_p(_kendall_tau_b, rank_cte, rank_performance, n_resamples, seed),
        weighted_kendall=float(stats.weightedtau(cte, performance).statistic),
        n_models=n_models,
    )


# -- bootstrap --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap over images of each model's CTE statistic.

    Attributes
    ----------
    low, high : (n_models,) float ndarray
        Percentile confidence interval of the statistic.
    p_top : (n_models,) float ndarray
        Fraction of replicates in which the model has the highest statistic; a tie at the
        top splits the replicate between the tied models, so ``p_top`` sums to 1 unless some
        replicate has no defined statistic at all.
    p_best_is_top : float
        ``p_top`` of the model ranked first on the full data (NaN if no model has a score).
    statistic : str
    n_boot : int
    """

    low: np.ndarray
    high: np.ndarray
    p_top: np.ndarray
    p_best_is_top: float
    statistic: str
    n_boot: int


def bootstrap_scores(
    per_image, n_boot: int = 1000, statistic: str = DEFAULT_STATISTIC, ci: float = 0.95, seed: int = 0, trim: float = 0.1
) -> BootstrapResult:
    """Bootstrap the per-model CTE statistic by resampling target images.

    Parameters
    ----------
    per_image : (n_models, n_images) float array_like
        ``CTE_i`` of every model on every image, NaN for empty images. The design is paired:
        each replicate draws one set of image indices, used for all models.
    n_boot : int
        Replicates.
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}
        As :func:`cte_kit.scoring.consistency.summarize`; NaNs are ignored per model and replicate.
    ci : float
        Confidence level of the percentile interval.
    seed : int
    trim : float
        Proportion cut from each end by ``'trimmed'``.

    Returns
    -------
    BootstrapResult
    """
    per_image = np.asarray(per_image, dtype=np.float64)
    if per_image.ndim != 2 or 0 in per_image.shape:
        raise ValueError(f"per_image must be (n_models, n_images), both >= 1, got shape {per_image.shape}")
    if np.isinf(per_image).any():
        raise ValueError("per_image contains infinite values")
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    n_models, n_images = per_image.shape
    indices = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
    chunk = max(1, _BOOTSTRAP_CHUNK_VALUES // (n_models * n_images))
    # per_image[:, indices[a:b]] is (n_models, b - a, n_images); replicates is (n_boot, n_models).
    replicates = np.concatenate(
        [
            nan_statistic(per_image[:, indices[start : start + chunk]], statistic, trim).T
            for start in range(0, n_boot, chunk)
        ]
    )
    alpha = (1.0 - ci) / 2
    defined = ~np.isnan(replicates)
    filled = np.where(defined, replicates, -np.inf)
    top = defined & (filled == filled.max(axis=1, keepdims=True))
    share = top / np.maximum(top.sum(axis=1, keepdims=True), 1)
    p_top = share.mean(axis=0)
    full = nan_statistic(per_image, statistic, trim)
    p_best = float(p_top[np.nanargmax(full)]) if np.isfinite(full).any() else float("nan")
    low, high = _nan_quantiles(replicates, (alpha, 1.0 - alpha))
    return BootstrapResult(low=low, high=high, p_top=p_top, p_best_is_top=p_best, statistic=statistic, n_boot=n_boot)


def _nan_quantiles(replicates: np.ndarray, levels) -> tuple[np.ndarray, np.ndarray]:
    """Per-column quantiles ignoring NaN; NaN for a column without values."""
    defined_columns = ~np.isnan(replicates).all(axis=0)
    result = np.full((len(levels), replicates.shape[1]), np.nan)
    result[:, defined_columns] = np.nanquantile(replicates[:, defined_columns], levels, axis=0)
    return result[0], result[1]

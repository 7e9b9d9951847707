"""Label-free choices from the bank's own responses, and rank aggregation.

A perturbation that is too weak leaves every decent model perfectly consistent: the scores tie
(often at exactly 1.0) and the ranking is carried by whichever model fails outright. One that is
too strong breaks every model. Without labels, the bank itself says which setting separates it:

* :func:`separation` - how well one setting separates the models: the best score, the spread,
  how many models tie at the top and which fraction of model pairs are told apart (by more than
  a tolerance, or, from per-image scores, consistently over a bootstrap of the images);
* :func:`choose_strength` - over candidate settings (strengths and/or layers), the *weakest*
  setting (highest bank-wide consistency) that separates the bank while its most consistent
  model stays above a floor, with the reasons; :func:`cte_kit.reports.plots.separation_sweep` draws it;
* :func:`aggregate_ranks` - combine several rankings (consistency types, perturbation families)
  into one score by mean normalised rank (Borda count).

Nothing here sees labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..scoring.consistency import DEFAULT_STATISTIC, nan_statistic
from ..scoring.ranking import rank_scores, tied_at_top

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_TOL",
    "Separation",
    "StrengthChoice",
    "separation",
    "choose_strength",
    "aggregate_ranks",
]

#: The most consistent model must keep at least this score for a setting to be usable.
DEFAULT_FLOOR = 0.5
#: Scores closer than this are treated as tied (without per-image scores).
DEFAULT_TOL = 0.005


@dataclass(frozen=True)
class Separation:
    """How well one setting separates the models of a bank.

    Attributes
    ----------
    setting : str
    scores : (n_models,) float ndarray
        Per-model score (the statistic over images when per-image scores were given).
    top : float
        Best score.
    level : float
        Median score over the models: the bank-wide consistency, used to order settings from
        weak (high) to strong (low).
    spread : float
        Standard deviation of the scores over the models (ddof 0).
    tied_at_top : int
        Models within ``tol`` of the best score (1 = a unique best model).
    resolved : float
        Fraction of model pairs that are told apart: scores differing by more than ``tol``, or,
        from per-image scores, ordered the same way in at least ``confidence`` of the bootstrap
        replicates over images.
    separated : bool
        ``tied_at_top == 1`` and ``resolved >= min_resolved``.
    above_floor : bool
        ``top >= floor``.
    """

    setting: str
    scores: np.ndarray
    top: float
    level: float
    spread: float
    tied_at_top: int
    resolved: float
    separated: bool
    above_floor: bool


@dataclass(frozen=True)
class StrengthChoice:
    """The label-free choice of a setting and the evidence for it.

    Attributes
    ----------
    setting : str or None
        The chosen setting (None only when no setting had a score).
    reason : str
        Why, in words.
    settings : tuple of Separation
        Every candidate, weakest first.
    floor, tol, min_resolved : float
        The rule's parameters.
    """

    setting: str | None
    reason: str
    settings: tuple[Separation, ...]
    floor: float
    tol: float
    min_resolved: float

    def table(self) -> list[dict]:
        """One dict per candidate (for printing or a DataFrame)."""
        return [{"setting": s.setting, "top": s.top, "level": s.level, "spread": s.spread,
                 "tied_at_top": s.tied_at_top, "resolved": s.resolved, "separated": s.separated,
                 "above_floor": s.above_floor, "chosen": s.setting == self.setting} for s in self.settings]


def _pair_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def separation(
    scores,
    setting: str = "",
    floor: float = DEFAULT_FLOOR,
    tol: float = DEFAULT_TOL,
    min_resolved: float = 1.0,
    statistic: str = DEFAULT_STATISTIC,
    n_boot: int = 200,
    confidence: float = 0.9,
    seed: int = 0,
) -> Separation:
    """Separation of a bank by one setting.

    Parameters
    ----------
    scores : (n_models,) or (n_models, n_images) float array_like
        One score per model, or per-image scores (NaN for empty images), higher = more consistent.
        Models whose score is NaN are left out.
    setting : str
        Its name.
    floor : float
        The best model must reach this score.
    tol : float
        Scores within ``tol`` of each other are tied (ties at the top; pairs when 1D scores).
    min_resolved : float
        Fraction of model pairs that must be told apart for the setting to count as separating.
    statistic : str
        Aggregation over images for 2D input (see :func:`cte_kit.scoring.consistency.nan_statistic`).
    n_boot, confidence, seed
        2D input: a pair is resolved when its order on the full data holds in at least
        ``confidence`` of ``n_boot`` paired bootstrap replicates over images, and the two scores
        differ by more than ``tol``.

    Returns
    -------
    Separation
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise ValueError(f"scores must be (n_models,) or (n_models, n_images), got shape {values.shape}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    per_model = nan_statistic(values, statistic) if values.ndim == 2 else values
    per_model = np.atleast_1d(np.asarray(per_model, dtype=np.float64))
    defined = np.isfinite(per_model)
    kept = per_model[defined]
    if kept.size == 0:
        nan = float("nan")
        return Separation(setting, per_model, nan, nan, nan, 0, nan, False, False)
    top = float(kept.max())
    n_top = tied_at_top(kept, tol)
    first, second = _pair_indices(kept.size)
    if first.size == 0:
        resolved = 1.0
    else:
        apart = np.abs(kept[first] - kept[second]) > tol
        if values.ndim == 2:
            rows = values[defined]
            n_images = rows.shape[1]
            indices = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
            replicates = nan_statistic(rows[:, indices], statistic).T  # (n_boot, n_models)
            sign = np.sign(kept[first] - kept[second])
            agree = np.sign(replicates[:, first] - replicates[:, second]) == sign
            apart &= agree.mean(axis=0) >= confidence
        resolved = float(apart.mean())
    separated = bool(n_top == 1 and resolved >= min_resolved)
    return Separation(setting, per_model, top, float(np.median(kept)), float(kept.std()), int(n_top), resolved,
                      separated, bool(top >= floor))


def choose_strength(
    scores_by_setting: Mapping[str, Sequence[float]],
    floor: float = DEFAULT_FLOOR,
    tol: float = DEFAULT_TOL,
    min_resolved: float = 1.0,
    order: str = "level",
    statistic: str = DEFAULT_STATISTIC,
    n_boot: int = 200,
    confidence: float = 0.9,
    seed: int = 0,
) -> StrengthChoice:
    """Choose a perturbation setting (strength and/or layer) from the bank's responses alone.

    The rule: order the settings from weakest to strongest, then take the first one that
    *separates* the bank (a unique best model and at least ``min_resolved`` of the model pairs
    told apart, see :func:`separation`) while its most consistent model stays at or above
    ``floor``. If none separates, take the setting above the floor that resolves the most pairs;
    among settings that resolve as many, the one with the fewest models tied at the top (a ranking
    that names its best model beats one that cannot choose between several), then the weaker. If
    every setting drops below the floor, take the one whose best model is most consistent.

    Parameters
    ----------
    scores_by_setting : mapping of str to (n_models,) or (n_models, n_images) array_like
        The bank's scores under each candidate setting, models in the same order everywhere.
    floor, tol, min_resolved, statistic, n_boot, confidence, seed
        See :func:`separation`.
    order : {'level', 'given'}
        ``level``: weakest = highest median score over the bank (works across layers and
        families); ``given``: the mapping's order is weakest first.

    Returns
    -------
    StrengthChoice
    """
    if not scores_by_setting:
        raise ValueError("give at least one setting")
    if order not in ("level", "given"):
        raise ValueError(f"order must be 'level' or 'given', got {order!r}")
    shapes = {np.asarray(v, dtype=float).shape[0] for v in scores_by_setting.values()}
    if len(shapes) != 1:
        raise ValueError(f"every setting needs the same models, got model counts {sorted(shapes)}")
    candidates = [separation(values, name, floor, tol, min_resolved, statistic, n_boot, confidence, seed)
                  for name, values in scores_by_setting.items()]
    if order == "level":
        # stable sort: equal levels keep the given order; settings without scores go last
        candidates.sort(key=lambda s: -s.level if np.isfinite(s.level) else np.inf)
    candidates = tuple(candidates)
    scored = [s for s in candidates if np.isfinite(s.top)]
    common = dict(settings=candidates, floor=floor, tol=tol, min_resolved=min_resolved)
    if not scored:
        return StrengthChoice(None, "no setting has a score", **common)
    usable = [s for s in scored if s.above_floor]
    for s in usable:
        if s.separated:
            return StrengthChoice(s.setting, f"weakest setting that separates the bank (unique best model, "
                                  f"{s.resolved:.0%} of model pairs resolved) with its best model at "
                                  f"{s.top:.3f} >= floor {floor:g}", **common)
    if usable:
        best = max(usable, key=lambda s: (s.resolved, -s.tied_at_top, -candidates.index(s)))
        return StrengthChoice(best.setting, f"no setting separates the bank; {best.setting} resolves the most "
                              f"model pairs ({best.resolved:.0%}) and has {_top_in_words(best.tied_at_top)}; its "
                              f"best model stays above the floor {floor:g}", **common)
    best = max(scored, key=lambda s: s.top)
    return StrengthChoice(best.setting, f"every setting drops the best model below the floor {floor:g}; "
                          f"{best.setting} keeps it highest ({best.top:.3f})", **common)


def _top_in_words(tied: int) -> str:
    return "a single best model" if tied == 1 else f"{tied} models tied at the top"


def aggregate_ranks(scores, weights: Sequence[float] | None = None) -> np.ndarray:
    """Combine several rankings of the same models into one score (Borda count).

    Each ranking (one per consistency type, perturbation family, ...) is turned into ranks
    (1 = best, ties share the average rank, a NaN score ranks last), each rank into a
    normalised Borda score ``(n - rank) / (n - 1)`` in [0, 1], and the Borda scores are
    averaged (optionally weighted). Only ranks enter, so scales of different consistencies do
    not matter.

    Parameters
    ----------
    scores : mapping of str to (n_models,) array_like, or (n_rankings, n_models) array_like
        Higher = better in every ranking.
    weights : sequence of float, optional
        One non-negative weight per ranking (default: equal).

    Returns
    -------
    (n_models,) float ndarray
        Higher = better; 1.0 for a model ranked first everywhere. NaN for a model without a
        score in any ranking.
    """
    rows = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if not rows:
        raise ValueError("give at least one ranking")
    matrix = np.asarray([np.asarray(row, dtype=np.float64) for row in rows])
    if matrix.ndim != 2:
        raise ValueError(f"every ranking needs one score per model; got shape {matrix.shape}")
    n_rankings, n_models = matrix.shape
    w = np.ones(n_rankings) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_rankings,) or (w < 0).any() or w.sum() == 0:
        raise ValueError(f"need {n_rankings} non-negative weights, not all zero; got {weights!r}")
    if n_models == 1:
        borda = np.ones_like(matrix)
    else:
        borda = np.array([(n_models - rank_scores(row)) / (n_models - 1) for row in matrix])
    combined = (w[:, None] * borda).sum(axis=0) / w.sum()
    return np.where(np.isnan(matrix).all(axis=0), np.nan, combined)

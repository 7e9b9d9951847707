"""How strong should a perturbation be? A sweep of one perturbation kind over strengths.

The paper (section 2.2, Fig. 3) notes that a perturbation that is too weak leaves every model
perfectly consistent and one that is too strong makes every model inconsistent; either way the
ranking loses its meaning. :func:`sweep_strengths` scores a bank at several strengths of one
perturbation and, when target labels are given, the correlation of CTE with true performance
at each strength (to *judge* strengths on a labelled benchmark, as Fig. 3 does).

Without labels, :meth:`StrengthSweep.choice` applies the kit's label-free rule
(:func:`cte_kit.estimators.selection.choose_strength`): the weakest strength that separates the bank while
its most consistent model stays above a floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..models.bank import BankEntry, load_model
from ..models.base import SegmentationModel
from ..perturb import NEUTRAL_STRENGTH, FeatureDropout, InputPerturbation, Perturbation
from ..runs.runner import RunTarget, run
from ..runs.store import ResultStore
from ..runs.units import Setting
from ..scoring.consistency import DEFAULT_STATISTIC, nan_statistic
from ..scoring.ranking import Correlations, correlations, rank_scores
from ..types import content_name
from .performance import PERFORMANCE_STATISTIC, fill_performance, performance, performance_metric_for, scored_rows

__all__ = ["STRENGTH_KINDS", "perturbation_for", "StrengthSweep", "sweep_strengths", "model_performance"]

#: Perturbation kinds that can be swept: bottleneck dropout and the four input perturbations.
STRENGTH_KINDS = ("dropout", *NEUTRAL_STRENGTH)


def perturbation_for(kind: str, strength: float) -> Perturbation:
    """``FeatureDropout(strength)`` for ``'dropout'``, else ``InputPerturbation(kind, strength)``."""
    if kind == "dropout":
        return FeatureDropout(float(strength))
    if kind not in NEUTRAL_STRENGTH:
        raise ValueError(f"unknown perturbation kind {kind!r}; choose from {STRENGTH_KINDS}")
    return InputPerturbation(kind, float(strength))


def model_performance(model: SegmentationModel, images, labels, metric: str = "f1") -> float:
    """True performance (``'f1'``, ``'iou'``, ``'map'``, ``'ap50'``) of clean predictions, aggregated over images
    by :data:`~cte_kit.evaluation.performance.PERFORMANCE_STATISTIC` (the median)."""
    values = performance(labels, model.predict(images), model.threshold)[metric]
    return float(nan_statistic(values, PERFORMANCE_STATISTIC)) if np.isfinite(values).any() else float("nan")


@dataclass
class StrengthSweep:
    """CTE of a bank at several strengths of one perturbation kind.

    Attributes
    ----------
    kind : str
        ``'dropout'`` or an input perturbation kind.
    strengths : list of float
    models : list of str
    consistency : str
    per_image : dict float -> (n_models, n_images) ndarray
        ``CTE_i`` at each strength (NaN rows for models that cannot take the perturbation).
    performance : (n_models,) ndarray or None
        True performance (``metric``) of each model, with labels only.
    metric : str
    statistic : str
    """

    kind: str
    strengths: list
    models: list
    consistency: str
    per_image: dict
    performance: np.ndarray | None
    metric: str
    statistic: str = DEFAULT_STATISTIC
    _correlations: dict = field(default_factory=dict, repr=False)

    def cte(self, strength: float) -> np.ndarray:
        """(n_models,) CTE score of each model at ``strength``."""
        return np.asarray(nan_statistic(self.per_image[strength], self.statistic), dtype=float)

    def cte_by_strength(self) -> dict:
        """``{strength: (n_models,) CTE}``, the input of :func:`cte_kit.reports.plots.sweep_lines`."""
        return {s: self.cte(s) for s in self.strengths}

    def correlations(self, strength: float) -> Correlations | None:
        """CTE vs true performance at one strength (None without labels)."""
        if self.performance is None:
            return None
        if strength not in self._correlations:
            self._correlations[strength] = correlations(self.cte(strength), self.performance)
        return self._correlations[strength]

    def setting(self, strength: float) -> str:
        """The perturbation label of one strength, e.g. ``'dropout:0.2'``."""
        return perturbation_for(self.kind, strength).label

    def choice(self, **options):
        """The kit's label-free choice among the swept strengths.

        ``options`` go to :func:`cte_kit.estimators.selection.choose_strength` (``floor``, ``tol``, ...);
        the settings are ordered from weak to strong by the bank-wide consistency.

        Returns
        -------
        cte_kit.estimators.selection.StrengthChoice
            ``.setting`` is a label such as ``'dropout:0.2'``; :meth:`strength_of` turns it back.
        """
        from ..estimators.selection import choose_strength

        options.setdefault("statistic", self.statistic)
        scores = {self.setting(s): self.per_image[s] for s in self.strengths}
        return choose_strength(scores, **options)

    def strength_of(self, setting: str | None) -> float | None:
        """The strength whose label is ``setting`` (None for None)."""
        if setting is None:
            return None
        return next(s for s in self.strengths if self.setting(s) == setting)

    def rows(self, choice=None) -> list[dict]:
        """One dict per strength.

        Label-free: ``top_model``, ``top_cte``, ``median_cte``, ``spread`` (standard deviation over
        models), ``resolved`` (fraction of model pairs told apart), ``tied_at_top`` and ``chosen``
        (from :meth:`choice`, or the ``choice`` given). With labels also ``kendall``,
        ``spearman`` and ``pearson`` of CTE against true performance.
        """
        choice = self.choice() if choice is None else choice
        separations = {s.setting: s for s in choice.settings}
        rows = []
        for strength in self.strengths:
            cte = self.cte(strength)
            defined = np.isfinite(cte)
            separation = separations[self.setting(strength)]
            row = {
                "strength": strength,
                "setting": self.setting(strength),
                "top_model": self.models[int(np.nanargmax(cte))] if defined.any() else None,
                "top_cte": float(np.nanmax(cte)) if defined.any() else float("nan"),
                "median_cte": float(np.nanmedian(cte)) if defined.any() else float("nan"),
                "spread": separation.spread,
                "resolved": separation.resolved,
                "tied_at_top": separation.tied_at_top,
                "chosen": separation.setting == choice.setting,
            }
            stats = self.correlations(strength)
            if stats is not None:
                row.update(kendall=stats.kendall, spearman=stats.spearman, pearson=stats.pearson)
            rows.append(row)
        return rows

    def ranks(self, strength: float) -> np.ndarray:
        """Rank of each model by CTE at ``strength`` (1 = most consistent)."""
        return rank_scores(self.cte(strength))


def sweep_strengths(
    bank: Sequence[BankEntry | SegmentationModel],
    images: Sequence[np.ndarray],
    kind: str,
    strengths: Sequence[float],
    labels: Sequence[np.ndarray] | None = None,
    consistency: str = "hard",
    seed: int = 0,
    statistic: str = DEFAULT_STATISTIC,
    progress: bool = True,
    names: Sequence[str] | None = None,
    store: ResultStore | None = None,
    backend=None,
) -> StrengthSweep:
    """Score every model of ``bank`` at every strength of one perturbation kind (through the runner).

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
    images : sequence of arrays
        The target images.
    kind : {'dropout', 'noise', 'brightness', 'contrast', 'gamma'}
    strengths : sequence of float
        Dropout rates, or ``theta`` of the input perturbation.
    labels : sequence of arrays, optional
        Only to compute the true performance that the correlations compare against (from the
        clean predictions the run stored).
    consistency : {'hard', 'soft', 'instance'}
    seed : int
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}
    progress : bool
    names : sequence of str, optional
        Image names (they seed the perturbations); default: names from the pixels
        (:func:`cte_kit.types.content_name`).
    store : ResultStore, optional
        Where the values go; pass the same store to later calls and the strengths, clean
        predictions and performance already there are not computed again. Default: in memory.
    backend : SerialBackend or DaskBackend, optional

    Returns
    -------
    StrengthSweep
        A black-box model under ``'dropout'`` gets NaN scores (it cannot be perturbed inside).
    """
    strengths = [float(s) for s in strengths]
    if not strengths:
        raise ValueError("give at least one strength")
    names = tuple(names) if names is not None else tuple(content_name(image) for image in images)
    perturbations = [perturbation_for(kind, s) for s in strengths]
    metric = performance_metric_for(consistency)
    target = RunTarget("strength sweep", tuple(images), names)
    settings = [Setting(p, (consistency,), seed) for p in perturbations]
    own = store is None
    store = ResultStore(":memory:") if own else store
    try:
        # a black box cannot be perturbed inside: it gets no dropout setting, and NaN
        models = [item if isinstance(item, SegmentationModel) else load_model(item) for item in bank]
        scorable = [m for m in models if kind != "dropout" or m.grey_box]
        report = run(scorable, target, settings, store, backend=backend, progress=progress)
        labels_keys = None
        if labels is not None:
            labels_keys = fill_performance(store, report.models, report.images[target.name], dict(zip(names, labels)))
        found = scored_rows(store, report.models, report.images[target.name], settings, labels_keys)
    finally:
        if own:
            store.close()
    model_index = {m.name: i for i, m in enumerate(models)}
    image_index = {name: j for j, name in enumerate(names)}
    by_label = {p.label: s for p, s in zip(perturbations, strengths)}
    per_image = {s: np.full((len(models), len(names)), np.nan) for s in strengths}
    perf_images = np.full((len(models), len(names)), np.nan)
    for row in found:
        i, j = model_index[row["model"]], image_index[row["image"]]
        per_image[by_label[row["perturbation"]]][i, j] = row["cte"]
        perf_images[i, j] = row[metric]
    perf = None
    if labels is not None:
        perf = np.array([float(nan_statistic(v, PERFORMANCE_STATISTIC)) if np.isfinite(v).any() else np.nan
                         for v in perf_images])
    return StrengthSweep(kind, strengths, [m.name for m in models], consistency, per_image, perf, metric, statistic)

"""Per-model scores, the kit's ranking and, with labels, how well it matches true performance.

:func:`summarize_results` reads the rows a run wrote (one per model, image, perturbation and
consistency) and gives one summary per setting: each model's aggregated CTE with its bootstrap
interval, the ranking with the label-free guards applied, the recommended model and, when the
rows carry true performance, the rank correlations of the ranking with it.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from ..estimators.guards import ModelGuards, bank_disagreement, bank_verdict, guarded_order
from ..estimators.tasks import Task, task_defaults
from ..estimators.selection import DEFAULT_TOL, separation
from ..scoring.consistency import BLIND_SPOTS, nan_statistic, summarize
from ..scoring.ranking import bootstrap_scores, correlations, rank_scores, tied_at_top
from ..types import CTEKitWarning
from .performance import PERFORMANCE_METRICS, PERFORMANCE_STATISTIC, performance_metric_for

__all__ = ["regret", "summarize_results"]


def regret(performance, pick: int | None) -> float:
    """What following a pick costs: the best true performance minus the pick's.

    Parameters
    ----------
    performance : (n_models,) float array_like
        True performance of each model (NaN: unknown, never the best).
    pick : int or None
        Index of the picked model; None when nothing was recommended.

    Returns
    -------
    float
        In [0, 1] for scores in [0, 1]; 0 when the pick is the best; NaN without a pick or a known
        performance of it.

    Examples
    --------
    >>> regret([0.9, 0.6, float("nan")], 1)
    0.30000000000000004
    """
    performance = np.asarray(performance, dtype=float)
    if pick is None or not np.isfinite(performance[pick]):
        return math.nan
    return float(np.nanmax(performance) - performance[pick])


def summarize_results(
    rows: Sequence[dict],
    statistic: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    models: Sequence[str] | None = None,
    guards: Mapping[str, ModelGuards] | None = None,
    task: str | Task | None = None,
) -> list[dict]:
    """Per-setting rankings from result rows.

    Parameters
    ----------
    rows : sequence of dict
        From :func:`read_results`.
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}, optional
        Aggregation of CTE_i over images (default: the task's, the mean; the paper: the median).
    n_boot : int
        Bootstrap replicates over images for the score intervals (0 disables them).
    models : sequence of str, optional
        Restrict to these models (in this order).
    guards : mapping of str to ModelGuards, optional
        Label-free guards (:func:`sweep_guards`). A model with a flag that concerns the setting's
        consistency is ranked after every unflagged model; None ranks by CTE alone.
    task : str or Task, optional
        The task ranked (:func:`cte_kit.estimators.tasks.task_defaults`; default: nuclei): its
        statistic, its guards' configuration (what a consensus needs) and the consistency a model
        needs to be recommended (``Task.recommend_from``, with the guards only).

    Returns
    -------
    list of dict, one per (perturbation, consistency)
        Each with ``perturbation``, ``consistency``, ``statistic`` (of CTE), ``performance_metric``,
        ``performance_statistic`` (:data:`~cte_kit.evaluation.performance.PERFORMANCE_STATISTIC`), ``models`` (a list
        of per-model dicts: ``name``, ``cte``, ``cte_median``, ``cte_mean``, ``cte_low``,
        ``cte_high``, ``p_top``, ``n_images``, ``n_empty``, ``rank`` (the kit's ranking:
        unflagged models first), ``rank_cte`` (by CTE alone), ``flags`` (each a dict with
        ``code``, ``scope``, ``reason``; empty when clean), ``guards`` (the guard values), and
        with labels ``performance``, ``f1``, ``map``, ``rank_performance``),
        ``recommended`` (the top unflagged model, None when every model is flagged),
        ``verdict`` (a sentence when no model can be recommended), ``blind_spot`` (with a recommendation,
        what the consistency cannot see: :data:`~cte_kit.scoring.consistency.BLIND_SPOTS`; else None), ``bank_note`` (a sentence when
        the ranking rests on a part of the bank only: the bank disagrees with itself), ``p_best_is_top`` (sampling
        stability: how often the recommended model stays first among the unflagged models when
        images are resampled - it says nothing about validity, which is what the flags are
        for; NaN, with the reason in ``stability``, when there is one image to resample or one
        model to compare; a model's ``cte_low``/``cte_high`` are absent when it has a score on
        fewer than two images), ``tied_at_top`` (exact ties), ``near_tied_at_top`` (within
        ``cte_kit.estimators.selection.DEFAULT_TOL``), ``resolved_pairs`` (the fraction of model pairs
        further apart than that), ``separated`` (a unique best model; otherwise a warning is
        issued), and with labels ``kendall``, ``spearman``, ``weighted_kendall`` (of the kit's
        ranking against true performance), ``kendall_unguarded`` (of CTE alone), ``pearson``
        (of the CTE values) and their p-values, and ``regret`` (:func:`regret` of the recommended model).
    """
    task = task_defaults(task)
    statistic = task.statistic if statistic is None else statistic
    settings = list(dict.fromkeys((row["perturbation"], row["consistency"], row["seed"], row["n_pert"]) for row in rows))
    summaries = []
    for perturbation, consistency, run_seed, n_pert in settings:
        selected = [r for r in rows if (r["perturbation"], r["consistency"], r["seed"], r["n_pert"]) ==
                    (perturbation, consistency, run_seed, n_pert)]
        names = list(models) if models is not None else list(dict.fromkeys(r["model"] for r in selected))
        image_names = list(dict.fromkeys(r["image"] for r in selected))
        column = {name: index for index, name in enumerate(image_names)}
        table = {metric: np.full((len(names), len(image_names)), np.nan) for metric in ("cte", *PERFORMANCE_METRICS)}
        for row in selected:
            if row["model"] in names:
                for metric in table:
                    table[metric][names.index(row["model"]), column[row["image"]]] = row[metric]
        metric = performance_metric_for(consistency)
        cte_summaries = [summarize(table["cte"][i], statistic) for i in range(len(names))]
        cte = np.array([s.score for s in cte_summaries])
        flags = [guards[name].flags_for(consistency) if guards and name in guards else () for name in names]
        flagged = np.array([bool(f) for f in flags])
        eligible = ~flagged & np.isfinite(cte)
        has_labels = bool(np.isfinite(table[metric]).any())
        entry = {"perturbation": perturbation, "consistency": consistency, "seed": run_seed, "n_pert": n_pert,
                 "statistic": statistic, "performance_metric": metric,
                 "performance_statistic": PERFORMANCE_STATISTIC, "n_images": len(image_names),
                 "guards": guards is not None}
        # resampling one image, or comparing one model, would print a certainty that is not there
        boot = bootstrap_scores(table["cte"], n_boot=n_boot, statistic=statistic, seed=seed) if n_boot and len(image_names) > 1 else None
        ranks, ranks_cte = rank_scores(guarded_order(cte, flagged)), rank_scores(cte)
        model_rows = []
        for i, name in enumerate(names):
            item = {"name": name, "cte": float(cte[i]), "cte_median": cte_summaries[i].median,
                    "cte_mean": cte_summaries[i].mean, "n_images": cte_summaries[i].n_images,
                    "n_empty": cte_summaries[i].n_empty, "rank": float(ranks[i]), "rank_cte": float(ranks_cte[i]),
                    "flags": [flag.__dict__ for flag in flags[i]]}
            if guards and name in guards:
                item["guards"] = {k: v for k, v in guards[name].as_dict().items() if k not in ("name", "flags")}
            defined = cte_summaries[i].n_images - cte_summaries[i].n_empty
            if boot is not None and defined > 1:
                item.update(cte_low=float(boot.low[i]), cte_high=float(boot.high[i]))
            if boot is not None and len(names) > 1:
                item["p_top"] = float(boot.p_top[i])
            model_rows.append(item)
        recommended = int(np.argmin(np.where(eligible, ranks, np.inf))) if eligible.any() else None
        entry["verdict"] = bank_verdict(guards, consistency, task.guards) if guards else None
        if entry["verdict"] is not None:
            recommended = None
        if guards is not None and recommended is not None and cte[recommended] < task.recommend_from:
            entry["verdict"] = (f"the most consistent unflagged model, {names[recommended]}, keeps only "
                                f"{cte[recommended]:.2f} of its prediction under {perturbation} ({consistency} "
                                f"consistency), less than the {task.recommend_from:g} a recommendation needs: none "
                                "can be recommended")
            recommended = None
        entry["recommended"] = names[recommended] if recommended is not None else None
        entry["blind_spot"] = BLIND_SPOTS.get(consistency) if recommended is not None else None
        entry["bank_note"] = bank_disagreement(guards, consistency, task.guards) if guards else None
        if recommended is None and entry["verdict"] is None:
            entry["verdict"] = "no model has a defined CTE on this target: none can be recommended"
        if n_boot and eligible.sum() > 1 and len(image_names) > 1:
            among = bootstrap_scores(table["cte"][eligible], n_boot=n_boot, statistic=statistic, seed=seed)
            entry["p_best_is_top"] = float(among.p_best_is_top)
        elif recommended is not None:
            entry["p_best_is_top"] = math.nan
            if n_boot:
                entry["stability"] = ("one image: nothing to resample" if len(image_names) < 2 else
                                      "one model: nothing to compare it with" if len(names) == 1 else
                                      "the only unflagged model with a score: nothing to compare it with")
        entry["tied_at_top"] = tied_at_top(cte[eligible]) if eligible.any() else 0
        spread = separation(cte[eligible]) if eligible.sum() > 1 else separation(cte)
        entry.update(near_tied_at_top=spread.tied_at_top, resolved_pairs=spread.resolved,
                     separated=spread.tied_at_top <= 1)
        if eligible.sum() > 1 and spread.tied_at_top > 1:
            advice = "" if statistic in ("mean", "trimmed") else ", or the mean over images (the kit's default)"
            warnings.warn(f"{spread.tied_at_top} models tie at the top (CTE within {DEFAULT_TOL:g} of "
                          f"{spread.top:.4f}) under {perturbation}, {consistency}, {statistic} over images: the bank is "
                          "not separated by this setting; try a stronger perturbation or another layer (see "
                          f"cte_kit.estimators.selection.choose_strength){advice}.", CTEKitWarning, stacklevel=2)
        if has_labels:
            perf = np.array([nan_statistic(table[metric][i], PERFORMANCE_STATISTIC) if np.isfinite(table[metric][i]).any() else np.nan
                             for i in range(len(names))])
            perf_ranks = rank_scores(perf)
            for i, item in enumerate(model_rows):
                item["performance"] = float(perf[i])
                item["rank_performance"] = float(perf_ranks[i])
                for extra in ("f1", "map"):
                    values = table[extra][i]
                    item[extra] = float(nan_statistic(values, PERFORMANCE_STATISTIC)) if np.isfinite(values).any() else math.nan
            ordered = correlations(guarded_order(cte, flagged), perf, seed=seed)
            raw = correlations(cte, perf, seed=seed)
            entry.update(kendall=ordered.kendall, kendall_p=ordered.kendall_p, spearman=ordered.spearman,
                         spearman_p=ordered.spearman_p, pearson=raw.pearson, pearson_p=raw.pearson_p,
                         weighted_kendall=ordered.weighted_kendall, kendall_unguarded=raw.kendall,
                         regret=regret(perf, recommended))
        entry["models"] = model_rows
        summaries.append(entry)
    return summaries

"""Paper-style summary tables over several targets (Tables 1 and 2 of Talks & Kreshuk).

:func:`correlation_rows` flattens the per-setting summaries of :func:`cte_kit.evaluation.summary.summarize_results`
for one target into rows; :func:`average_correlations` averages the Kendall / Spearman / Pearson
correlations of each method over targets (mean and standard deviation, as the paper's
"Avg." / "Std." rows) and :func:`format_correlation_table` prints them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["method_name", "correlation_rows", "average_correlations", "format_correlation_table"]

_CONSISTENCY_NAMES = {"hard": "CTE-NHD", "soft": "CTE-EI", "instance": "CTE-VRand"}
_STATS = ("kendall", "spearman", "pearson")


def method_name(perturbation: str, consistency: str) -> str:
    """The paper's name of a setting: ``'CTE-NHD (Feat)'`` for dropout + hard, ``'CTE-EI (Input: noise:0.1)'``..."""
    family = "Feat" if perturbation.startswith("dropout") else f"Input: {perturbation}"
    return f"{_CONSISTENCY_NAMES.get(consistency, consistency)} ({family})"


def correlation_rows(summaries: Sequence[Mapping], target: str) -> list[dict]:
    """One row per (perturbation, consistency) of one target: ``target``, ``method``, the correlations.

    Parameters
    ----------
    summaries : sequence of dict
        From :func:`cte_kit.evaluation.summary.summarize_results` (with labels, so the correlations exist).
    target : str
    """
    rows = []
    for summary in summaries:
        if "kendall" not in summary:
            continue
        rows.append({"target": target, "method": method_name(summary["perturbation"], summary["consistency"]),
                     "perturbation": summary["perturbation"], "consistency": summary["consistency"],
                     "n_models": len(summary["models"]), **{key: float(summary[key]) for key in _STATS}})
    return rows


def average_correlations(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and standard deviation (ddof 0, as numpy) of each correlation per method over targets.

    Returns
    -------
    list of dict
        One per method, in first-seen order: ``method``, ``n_targets``, and ``<stat>_mean`` /
        ``<stat>_std`` for kendall, spearman, pearson (NaN correlations are left out).
    """
    methods = list(dict.fromkeys(row["method"] for row in rows))
    table = []
    for method in methods:
        selected = [row for row in rows if row["method"] == method]
        entry = {"method": method, "n_targets": len({row["target"] for row in selected})}
        for key in _STATS:
            values = np.array([row[key] for row in selected], float)
            values = values[np.isfinite(values)]
            entry[f"{key}_mean"] = float(values.mean()) if values.size else float("nan")
            entry[f"{key}_std"] = float(values.std()) if values.size else float("nan")
        table.append(entry)
    return table


def format_correlation_table(averages: Sequence[Mapping], title: str | None = None) -> str:
    """A plain-text Table 1/2: one line per method, ``mean +- std`` of Kendall, Spearman, Pearson."""
    width = max([len("method")] + [len(a["method"]) for a in averages])
    header = f"{'method':<{width}}  {'targets':>7}  {'Kendall tau':>13}  {'Spearman rho':>13}  {'Pearson r':>13}"
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for entry in averages:
        cells = [f"{entry[f'{key}_mean']:+.2f} ± {entry[f'{key}_std']:.2f}" for key in _STATS]
        lines.append(f"{entry['method']:<{width}}  {entry['n_targets']:>7}  " + "  ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)

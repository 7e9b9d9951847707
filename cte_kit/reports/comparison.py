"""The estimator comparison as a table, CSV / JSON files and a heatmap (:func:`cte_kit.evaluation.comparison.compare`)."""

from __future__ import annotations

import csv
import json
import math
import textwrap
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..evaluation.comparison import ROW_COLUMNS, Comparison
from .plots import save_figure

__all__ = ["comparison_heatmap", "format_comparison", "write_comparison"]


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


def format_comparison(rows: Sequence[Mapping]) -> str:
    """A plain-text table of at most 100 columns: per estimator and target, Kendall (all models, its interval,
    usable models), the regret of its pick and the cost. Spearman, Pearson and the rest are in the CSV / JSON."""
    header = (f"{'estimator':<18} {'target':<16} {'needs':<14} {'Kendall':>7} {'+-1.96 SE':>15} {'usable':>7} "
              f"{'regret':>6} {'cost':>6}")
    lines = [header, "-" * len(header)]
    for row in rows:
        interval = f"[{_fmt(row['kendall_low'])}, {_fmt(row['kendall_high'])}]"
        cost = "n/a" if math.isnan(row["cost"]) else f"{row['cost']:.1f}x"
        needs = row["needs"].removeprefix("images").lstrip("+") or "-"
        lines.append(f"{row['estimator'][:18]:<18} {row['target'][:16]:<16} {needs[:14]:<14} {_fmt(row['kendall']):>7} "
                     f"{interval:>15} {_fmt(row['kendall_usable']):>7} {_regret(row['regret']):>6} {cost:>6}")
    skipped = [row for row in rows if row["not_applicable"] and row["n_models"] == 0]
    if skipped:
        lines.append("not applicable:")
        lines += [wrapped for row in skipped
                  for wrapped in textwrap.wrap(f"{row['estimator']} on {row['target']}: {row['not_applicable']}", 100,
                                               initial_indent="  ", subsequent_indent="    ")]
    lines += textwrap.wrap("needs: what the estimator reads besides the images ('-': nothing). Kendall: its ranking "
                           "against the true ranking over all models, with an interval of +-1.96 bootstrap standard "
                           "errors over images (how much it moves with the images); usable: the same over the models "
                           "whose true performance reaches compare()'s usable threshold. regret: the best model's true "
                           "F1 minus that of the estimator's top pick. cost: seconds per model relative to one clean "
                           "forward pass over the target.", 100)
    return "\n".join(lines)


def _regret(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def write_comparison(comparison: Comparison, out: str | Path, figure: bool = True) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.json`` and (optionally) ``comparison.png`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "comparison.csv", "json": out / "comparison.json"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS)
        writer.writeheader()
        writer.writerows(comparison.rows)
    document = {
        "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in comparison.rows],
        "truth_f1": comparison.truth,
        "scores": {f"{e} @ {t}": {m: (None if not math.isfinite(s) else s) for m, s in v.items()}
                   for (e, t), v in comparison.scores.items()},
    }
    paths["json"].write_text(json.dumps(document, indent=2))
    if figure:
        import matplotlib.pyplot as plt


        fig = comparison_heatmap(comparison.rows)
        paths["png"] = out / "comparison.png"
        save_figure(fig, paths["png"])
        plt.close(fig)
    return paths


def comparison_heatmap(rows: Sequence[Mapping], value: str = "kendall", ax=None):
    """Estimators x targets heatmap of one correlation column, n/a cells hatched grey.

    The estimators are sorted by their mean over targets (best on top); a last column shows
    that mean, and the label says what each estimator needs.
    """
    import matplotlib.pyplot as plt

    estimators = list(dict.fromkeys(row["estimator"] for row in rows))
    targets = list(dict.fromkeys(row["target"] for row in rows))
    needs = {row["estimator"]: row["needs"] for row in rows}
    grid = np.full((len(estimators), len(targets)), np.nan)
    for row in rows:
        grid[estimators.index(row["estimator"]), targets.index(row["target"])] = row[value]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(grid, axis=1)
    order = np.argsort(np.where(np.isnan(means), -np.inf, means))[::-1]
    grid, means = grid[order], means[order]
    estimators = [estimators[i] for i in order]
    table = np.column_stack([grid, means]) if len(targets) > 1 else grid
    columns = targets + (["mean"] if len(targets) > 1 else [])
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(columns) + 6.5), 0.42 * len(estimators) + 2.2),
                             constrained_layout=True)
    image = ax.imshow(np.ma.masked_invalid(table), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_facecolor("0.85")
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            text = "n/a" if np.isnan(table[i, j]) else f"{table[i, j]:+.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(table[i, j]) and abs(table[i, j]) > 0.6 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=90)  # upright names never run into each other
    ax.set_yticks(range(len(estimators)), [f"{e}  ({needs[e].replace('images+', '') if '+' in needs[e] else 'label-free'})"
                                           for e in estimators])
    ax.set_xlabel("target")
    ax.set_ylabel("estimator (what it needs besides the images)")
    label = value.replace("_", " ").replace("kendall", "Kendall").replace("spearman", "Spearman").replace("pearson", "Pearson")
    ax.set_title(f"Which estimator ranks the bank right?\n{label} of its ranking with the true F1 ranking")
    ax.figure.colorbar(image, ax=ax, label=f"{label} (1 = perfect ranking)")
    if ax.figure.get_layout_engine() is None:
        ax.figure.tight_layout()
    return ax.figure

"""Figures: CTE against true performance (paper Fig. 2), strength sweeps (Fig. 3), examples.

Every function draws on a given matplotlib ``Axes`` (or makes one), labels its axes, and
returns the Axes so notebooks can adjust it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["scatter_cte", "sweep_lines", "show_prediction_pair", "save_figure"]


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)[1]


def _fit_line(ax, x: np.ndarray, y: np.ndarray, color=None, label=None):
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 2 or np.ptp(x[finite]) == 0:
        return
    slope, intercept = np.polyfit(x[finite], y[finite], 1)
    xs = np.linspace(x[finite].min(), x[finite].max(), 50)
    ax.plot(xs, slope * xs + intercept, "--", color=color, linewidth=1.2, label=label)


def scatter_cte(
    cte: Sequence[float],
    performance: Sequence[float],
    names: Sequence[str],
    ax=None,
    title: str | None = None,
    cte_label: str = "CTE (consistency under perturbation)",
    performance_label: str = "true performance",
    stats: Mapping[str, float] | None = None,
    errors: tuple[Sequence[float], Sequence[float]] | None = None,
):
    """One point per model: CTE on x, true performance on y, least-squares line (paper Fig. 2).

    Parameters
    ----------
    cte, performance : sequence of float, one per model
    names : sequence of str
        Point labels.
    stats : mapping, optional
        ``kendall``, ``spearman``, ``pearson`` to print in the corner.
    errors : (low, high), optional
        Bootstrap interval of each CTE, drawn as horizontal error bars.
    """
    ax = _axes(ax)
    x, y = np.asarray(cte, float), np.asarray(performance, float)
    colors = [f"C{i % 10}" for i in range(len(x))]
    if errors is not None:
        low, high = np.asarray(errors[0], float), np.asarray(errors[1], float)
        ax.errorbar(x, y, xerr=[np.clip(x - low, 0, None), np.clip(high - x, 0, None)], fmt="none",
                    ecolor="0.6", elinewidth=1, capsize=2, zorder=1)
    ax.scatter(x, y, c=colors, s=50, zorder=2, edgecolors="k", linewidths=0.5)
    for xi, yi, name, color in zip(x, y, names, colors):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
    _fit_line(ax, x, y, color="0.3")
    if stats:
        text = "\n".join(f"{key.capitalize()} = {stats[key]:.2f}" for key in ("kendall", "spearman", "pearson")
                         if key in stats and stats[key] is not None and np.isfinite(stats[key]))
        ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
    ax.set_xlabel(cte_label)
    ax.set_ylabel(performance_label)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def sweep_lines(
    cte_by_strength: Mapping[float, Sequence[float]],
    performance: Sequence[float],
    ax=None,
    title: str | None = None,
    strength_name: str = "dropout p",
    performance_label: str = "true performance",
    kendall_by_strength: Mapping[float, float] | None = None,
):
    """CTE vs performance at several perturbation strengths, one fitted line each (paper Fig. 3)."""
    ax = _axes(ax)
    y = np.asarray(performance, float)
    markers = "osD^vP*X"
    for index, (strength, values) in enumerate(sorted(cte_by_strength.items())):
        color = f"C{index % 10}"
        label = f"{strength_name} = {strength:g}"
        if kendall_by_strength and strength in kendall_by_strength:
            label += f" (Kendall {kendall_by_strength[strength]:.2f})"
        x = np.asarray(values, float)
        ax.scatter(x, y, color=color, marker=markers[index % len(markers)], s=36, label=label, edgecolors="k", linewidths=0.4)
        _fit_line(ax, x, y, color=color)
    ax.set_xlabel("CTE (consistency under perturbation)")
    ax.set_ylabel(performance_label)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def show_prediction_pair(image, clean, perturbed, threshold: float = 0.5, axes=None, titles: Sequence[str] | None = None):
    """Image, clean and perturbed foreground probability, and the map of flipped pixels.

    Parameters
    ----------
    image : (H, W) array
    clean, perturbed : (H, W) float arrays
        Probability maps.
    axes : sequence of 4 Axes, optional
    """
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)[1]
    clean_mask, perturbed_mask = np.asarray(clean) > threshold, np.asarray(perturbed) > threshold
    flips = np.zeros(clean_mask.shape + (3,), np.float32)
    flips[clean_mask & perturbed_mask] = (0.75, 0.75, 0.75)
    flips[clean_mask & ~perturbed_mask] = (0.9, 0.2, 0.2)
    flips[~clean_mask & perturbed_mask] = (0.2, 0.4, 0.95)
    titles = titles or ("image", "clean prediction", "perturbed prediction", "flips (red lost, blue gained)")
    panels = (image, clean, perturbed, flips)
    for ax, panel, title in zip(axes, panels, titles):
        ax.imshow(panel, cmap="gray" if np.ndim(panel) == 2 else None, vmin=0 if panel is not image else None,
                  vmax=1 if panel is not image else None, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    return axes


def save_figure(figure, path) -> None:
    """Save a figure as PNG (150 dpi), creating the folder."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")

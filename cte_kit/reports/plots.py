"""Figures: CTE against true performance (paper Fig. 2), strength sweeps (Fig. 3), examples.

Every function draws on a given matplotlib ``Axes`` (or makes one), labels its axes, and
returns the Axes so notebooks can adjust it.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np

__all__ = ["METRIC_NAMES", "scatter_cte", "summary_scatters", "sweep_lines", "separation_sweep", "show_prediction_pair",
           "save_figure", "series_style"]

#: How figures and tables name the true-performance metrics.
METRIC_NAMES = {"f1": "F1", "iou": "IoU", "map": "mAP", "ap50": "AP50"}


def series_style(index: int) -> tuple[str, str, str]:
    """(colour, marker, line style) of the ``index``-th model: ten colours, then new markers and dashes,
    so that banks of more than ten models stay readable."""
    cycle = index // 10
    return f"C{index % 10}", "osD^v"[cycle % 5], ("-", "--", ":", "-.")[cycle % 4]


def _axes(ax):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)[1]


def _legend_outside(ax, **options):
    """The legend right of the axes, where it cannot cover a point or a line."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)


#: Where a point's name may go, in order of preference: (dx, dy) directions, at growing distances (points).
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1),
                     (1, 2), (-1, 2), (1, -2), (-1, -2), (2, 1), (-2, 1), (2, -1), (-2, -1))
_LABEL_DISTANCES = (4, 9, 15, 22, 30, 40, 52, 66)


def _label_points(ax, x: np.ndarray, y: np.ndarray, names: Sequence[str], colors: Sequence, fontsize: float = 8,
                  avoid: Sequence = ()) -> list:
    """Name each point next to it, inside the axes, overlapping no other name, no point and nothing in ``avoid``.

    Greedy: each name takes the first free spot of a ring of candidate offsets around its point
    (nearest first); a name pushed away from its point gets a thin leader line. When no spot is
    free, the one that overlaps least is taken. The axes limits are frozen first (with margins
    that leave room for names at the edge), and the figure's layout is run so that positions are
    measured at their final size.
    """
    from matplotlib.transforms import Bbox

    finite = np.isfinite(x) & np.isfinite(y)
    ax.margins(x=0.15, y=0.1)
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    figure = ax.figure
    figure.draw_without_rendering()  # runs constrained layout: the axes get their final size
    renderer = figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    radius = 4.5 * figure.dpi / 72  # a scatter marker of size 50 is about 7 points across
    centres = ax.transData.transform(np.column_stack([x[finite], y[finite]]))
    points = [Bbox.from_extents(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]
    taken = [artist.get_window_extent(renderer) for artist in avoid]

    def overlap(box) -> float:
        """Area shared with other names and boxes; touching a point counts a hundredfold and covering a point's
        centre outweighs everything else (it hides data)."""
        covered = sum(box.x0 < cx < box.x1 and box.y0 < cy < box.y1 for cx, cy in centres)
        area = 1e9 * covered
        for weight, others in ((100.0, points), (1.0, taken)):
            for other in others:
                width = min(box.x1, other.x1) - max(box.x0, other.x0)
                height = min(box.y1, other.y1) - max(box.y0, other.y0)
                area += weight * max(width, 0.0) * max(height, 0.0)
        return area

    texts = []
    for index in np.flatnonzero(finite):
        text = ax.annotate(names[index], (x[index], y[index]), textcoords="offset points", xytext=(0, 0),
                           fontsize=fontsize, color=colors[index])
        best = None
        for distance in _LABEL_DISTANCES:
            for dx, dy in _LABEL_DIRECTIONS:
                scale = distance / max(abs(dx), abs(dy))
                text.set_position((dx * scale, dy * scale))
                text.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
                text.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")
                box = text.get_window_extent(renderer)
                if not (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1):
                    continue
                cost = overlap(box)
                if best is None or cost < best[0]:
                    best = (cost, text.get_position(), text.get_horizontalalignment(),
                            text.get_verticalalignment(), box)
                if cost == 0.0:
                    break
            if best is not None and best[0] == 0.0:
                break
        if best is None:  # no spot inside the axes (a very long name): keep it next to its point
            best = (0.0, (4, 4), "left", "bottom", None)
        _, offset, horizontal, vertical, box = best
        text.set_position(offset)
        text.set_horizontalalignment(horizontal)
        text.set_verticalalignment(vertical)
        if max(abs(offset[0]), abs(offset[1])) > _LABEL_DISTANCES[1]:
            text.remove()
            text = ax.annotate(names[index], (x[index], y[index]), textcoords="offset points", xytext=offset,
                               fontsize=fontsize, color=colors[index], ha=horizontal, va=vertical,
                               arrowprops=dict(arrowstyle="-", color=colors[index], linewidth=0.6, shrinkA=0,
                                               shrinkB=3))
        if box is not None:
            taken.append(box)
        texts.append(text)
    return texts


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
    flagged: Sequence[bool] | None = None,
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
    flagged : sequence of bool, optional
        Models flagged by the label-free guards (:mod:`cte_kit.estimators.guards`): drawn grey and hollow,
        their label marked "(flagged)".
    """
    ax = _axes(ax)
    x, y = np.asarray(cte, float), np.asarray(performance, float)
    flagged = np.zeros(len(x), bool) if flagged is None else np.asarray(flagged, bool)
    drawn = np.isfinite(x) & np.isfinite(y)
    if errors is not None:
        low, high = np.asarray(errors[0], float), np.asarray(errors[1], float)
        ax.errorbar(x[drawn], y[drawn], xerr=[np.clip((x - low)[drawn], 0, None), np.clip((high - x)[drawn], 0, None)],
                    fmt="none", ecolor="0.6", elinewidth=1, capsize=2, zorder=1)
    colors = []
    for index, (xi, yi) in enumerate(zip(x, y)):
        color, marker, _ = series_style(index)
        if not drawn[index]:
            colors.append(color)
            continue
        if flagged[index]:
            color = "0.55"
            ax.scatter([xi], [yi], facecolors="none", marker=marker, s=50, zorder=2, edgecolors=color, linewidths=1.2)
        else:
            ax.scatter([xi], [yi], color=color, marker=marker, s=50, zorder=2, edgecolors="k", linewidths=0.5)
        colors.append(color)
    # the line describes the models the ranking trusts; flagged ones would drag it anywhere
    _fit_line(ax, x[~flagged], y[~flagged], color="0.3")
    avoid = []
    if stats:
        text = "\n".join(f"{key.capitalize()} = {stats[key]:.2f}" for key in ("kendall", "spearman", "pearson")
                         if key in stats and stats[key] is not None and np.isfinite(stats[key]))
        if flagged.any():
            text += "\n(flagged models ranked last)"
        avoid.append(ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9,
                             bbox=dict(boxstyle="round", facecolor="white", alpha=0.8)))
    ax.set_xlabel(cte_label + _missing_note(names, x, y))
    ax.set_ylabel(performance_label)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    names = [f"{name} (flagged)" if flag else name for name, flag in zip(names, flagged)]
    _label_points(ax, x, y, names, colors, fontsize=8, avoid=avoid)
    return ax


def _missing_note(names: Sequence[str], x: np.ndarray, y: np.ndarray) -> str:
    """A line for the axis label naming the models without a value (a figure hides no model silently)."""
    missing = [name for name, xi, yi in zip(names, x, y) if not (np.isfinite(xi) and np.isfinite(yi))]
    if not missing:
        return ""
    from .figure_check import MISSING_NOTE

    return f"\n{MISSING_NOTE} (no value): {', '.join(missing)}"


def summary_scatters(summaries: Sequence[Mapping], title: str):
    """CTE against true performance for each labelled summary of :func:`cte_kit.evaluation.summary.summarize_results`,
    side by side (two per row), with bootstrap intervals, correlations and flagged models; None without labels."""
    import matplotlib.pyplot as plt

    labelled = [s for s in summaries if "kendall" in s]
    if not labelled:
        return None
    columns = min(2, len(labelled))
    rows = -(-len(labelled) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 5.2 * rows), constrained_layout=True,
                                squeeze=False)
    for ax in axes.ravel()[len(labelled):]:
        ax.remove()
    for ax, summary in zip(axes.ravel(), labelled):
        models = summary["models"]
        metric = METRIC_NAMES.get(summary["performance_metric"], summary["performance_metric"])
        scatter_cte([m["cte"] for m in models], [m["performance"] for m in models], [m["name"] for m in models], ax=ax,
                    title=f"{title}: {summary['perturbation']}, {summary['consistency']}",
                    cte_label=f"CTE ({summary['consistency']}, {summary['statistic']} over images)",
                    performance_label=f"true {metric} ({summary['performance_statistic']} over images)",
                    stats=summary, errors=([m.get("cte_low", m["cte"]) for m in models],
                                           [m.get("cte_high", m["cte"]) for m in models]),
                    flagged=[bool(m.get("flags")) for m in models])
    return figure


def sweep_lines(
    cte_by_strength: Mapping[float, Sequence[float]],
    performance: Sequence[float],
    ax=None,
    title: str | None = None,
    strength_name: str = "dropout p",
    performance_label: str = "true performance",
    kendall_by_strength: Mapping[float, float] | None = None,
    cte_label: str = "CTE (consistency under perturbation)",
    all_strengths: Sequence[float] | None = None,
):
    """CTE vs performance at several perturbation strengths, one fitted line each (paper Fig. 3).

    Parameters
    ----------
    all_strengths : sequence of float, optional
        Every strength that may be drawn (a panel's options): each strength keeps its colour and
        marker when others are added or removed. Default: the strengths in ``cte_by_strength``.
    """
    ax = _axes(ax)
    y = np.asarray(performance, float)
    markers = "osD^vP*X"
    palette = sorted(set(float(s) for s in (all_strengths or ())) | set(float(s) for s in cte_by_strength))
    for strength, values in sorted(cte_by_strength.items()):
        index = palette.index(float(strength))
        color = f"C{index % 10}"
        label = f"{strength_name} = {strength:g}"
        if kendall_by_strength and strength in kendall_by_strength:
            label += f" (Kendall {kendall_by_strength[strength]:.2f})"
        x = np.asarray(values, float)
        ax.scatter(x, y, color=color, marker=markers[index % len(markers)], s=36, label=label, edgecolors="k", linewidths=0.4)
        _fit_line(ax, x, y, color=color)
    ax.set_xlabel(cte_label)
    ax.set_ylabel(performance_label)
    _legend_outside(ax, fontsize=8)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def separation_sweep(
    choice,
    names: Sequence[str] | None = None,
    axes=None,
    title: str | None = None,
    kendall_by_setting: Mapping[str, float] | None = None,
):
    """The label-free strength choice: every model's CTE per setting, and how well each setting separates.

    Left: one line per model across the candidate settings (weakest first), the floor as a
    dashed line, the chosen setting shaded. Right: fraction of model pairs resolved and the
    number of models tied at the top per setting; with ``kendall_by_setting`` (known only on
    labelled benchmarks) the Kendall tau against true performance is drawn too.

    Parameters
    ----------
    choice : cte_kit.estimators.selection.StrengthChoice
    names : sequence of str, optional
        Model names (legend).
    axes : two Axes, optional
    kendall_by_setting : mapping of setting to float, optional

    Returns
    -------
    the two Axes
    """
    if axes is None:
        import matplotlib.pyplot as plt

        axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)[1]
    left, right = axes
    settings = [s.setting for s in choice.settings]
    x = np.arange(len(settings))
    scores = np.array([s.scores for s in choice.settings], dtype=float)  # (n_settings, n_models)
    labels = [names[model] if names is not None and model < len(names) else f"model {model}"
              for model in range(scores.shape[1])]
    for model, label in enumerate(labels):
        color, marker, linestyle = series_style(model)
        left.plot(x, scores[:, model], linestyle=linestyle, marker=marker, markersize=4, color=color, label=label)
    left.axhline(choice.floor, color="0.4", linestyle="--", linewidth=1, label=f"floor {choice.floor:g}")
    if choice.setting in settings:
        for ax in axes:
            ax.axvspan(settings.index(choice.setting) - 0.4, settings.index(choice.setting) + 0.4,
                       color="gold", alpha=0.3, zorder=0)
    left.set_ylabel("CTE of each model")
    missing = [f"{label} at {setting}" for model, label in enumerate(labels) for setting, value
               in zip(settings, scores[:, model]) if not np.isfinite(value)]
    _legend_outside(left, fontsize=7)
    right.plot(x, [s.resolved for s in choice.settings], "-o", color="C0", label="model pairs resolved")
    tied = [s.tied_at_top for s in choice.settings]
    right.plot(x, np.asarray(tied, float) / max(1, scores.shape[1]), "-s", color="C3",
               label="tied at top (fraction of models)")
    lowest = 0.0
    if kendall_by_setting:
        kendall = np.array([kendall_by_setting.get(s, np.nan) for s in settings], dtype=float)
        right.plot(x, kendall, "-^", color="C2", label="Kendall vs true performance (labels)")
        if np.isfinite(kendall).any():
            lowest = min(lowest, float(np.nanmin(kendall)))
        missing += [f"Kendall at {setting}" for setting, value in zip(settings, kendall) if not np.isfinite(value)]
    right.set_ylabel("fraction (Kendall: tau)")
    right.set_ylim(lowest - 0.05, 1.05)
    _legend_outside(right, fontsize=8)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(settings, rotation=90, fontsize=8)  # upright: long setting names never overlap
        ax.set_xlabel("perturbation setting (weakest first)")
        ax.grid(alpha=0.3)
    if missing:
        from .figure_check import MISSING_NOTE

        left.set_xlabel("\n".join(textwrap.wrap(f"perturbation setting (weakest first); {MISSING_NOTE} (no value): "
                                                 + ", ".join(missing), 45)))
    if title:
        left.set_title(title)
        right.set_title(f"chosen: {choice.setting}")
    return axes


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


# -- teaching notebooks: several targets on one scatter, strength curves, image grids --------------
__all__ += ["scatter_by_group", "strength_curves", "image_grid"]


def scatter_by_group(
    groups: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ax=None,
    title: str | None = None,
    cte_label: str = "CTE (consistency under perturbation)",
    performance_label: str = "true performance",
    names: Sequence[str] | None = None,
):
    """CTE against true performance for several groups (targets), one colour and fitted line each (Fig. 2a-d).

    Parameters
    ----------
    groups : mapping of str to (cte, performance)
        One entry per target (legend label), each two sequences with one value per model.
    names : sequence of str, optional
        Model names, to annotate the points (same order in every group).
    """
    ax = _axes(ax)
    xs, ys, labels, colors = [], [], [], []
    for index, (group, (cte, performance)) in enumerate(groups.items()):
        color = f"C{index % 10}"
        x, y = np.asarray(cte, float), np.asarray(performance, float)
        ax.scatter(x, y, color=color, s=40, edgecolors="k", linewidths=0.4, label=group, zorder=2)
        _fit_line(ax, x, y, color=color)
        if names is not None:
            xs.append(x)
            ys.append(y)
            labels += list(names)
            colors += [color] * len(x)
    ax.set_xlabel(cte_label)
    ax.set_ylabel(performance_label)
    _legend_outside(ax, fontsize=8)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if names is not None:
        _label_points(ax, np.concatenate(xs), np.concatenate(ys), labels, colors, fontsize=6)
    return ax


def strength_curves(rows: Sequence[Mapping], ax=None, title: str | None = None, strength_name: str = "dropout p"):
    """Ranking quality against perturbation strength, from :meth:`cte_kit.evaluation.strength.StrengthSweep.rows`.

    Draws, per strength, the label-free fraction of model pairs resolved and the bank-wide
    median CTE (dashed), with labels the Kendall / Spearman / Pearson correlation of CTE with
    true performance (solid), and marks the label-free choice (a gold band).
    """
    ax = _axes(ax)
    x = np.array([row["strength"] for row in rows], float)
    for key, label, style in (("kendall", "Kendall tau (labels)", "-o"), ("spearman", "Spearman rho (labels)", "-s"),
                              ("pearson", "Pearson r (labels)", "-^")):
        if any(key in row for row in rows):
            ax.plot(x, [row.get(key, np.nan) for row in rows], style, markersize=5, label=label)
    ax.plot(x, [row.get("resolved", np.nan) for row in rows], "--D", color="0.35", markersize=4,
            label="model pairs resolved (label-free)")
    ax.plot(x, [row.get("median_cte", np.nan) for row in rows], ":", color="0.55", label="median CTE over models (label-free)")
    for row in rows:
        if row.get("chosen"):
            width = 0.04 * max(np.ptp(x), 1e-3)
            ax.axvspan(row["strength"] - width, row["strength"] + width, color="gold", alpha=0.35, zorder=0,
                       label="label-free choice")
    ax.set_xlabel(strength_name)
    ax.set_ylabel("correlation / fraction")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="0.8", linewidth=0.8)
    _legend_outside(ax, fontsize=7)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def image_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 4, suptitle: str | None = None,
               size: float = 2.6, cmap: str = "gray", percentiles: tuple[float, float] = (1.0, 99.8),
               limits: tuple[float, float] | None = None, labels: Sequence[bool] | None = None):
    """Show images in a grid; returns the Figure.

    Each grey image is contrast-stretched to its own ``percentiles``, or all share the display
    range ``limits`` (to compare intensities, e.g. perturbed versions of one image). Images
    flagged True in ``labels`` are instance label images, drawn with one colour per object on
    black.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    figure, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4), constrained_layout=True,
                                squeeze=False)
    flags = list(labels) if labels is not None else [False] * n
    for index, ax in enumerate(axes.flat):
        if index >= n:
            ax.axis("off")
            continue
        image = np.asarray(images[index])
        if image.ndim == 3 and image.shape[-1] not in (3, 4):
            image = image[..., 0]
        if flags[index]:
            ids = np.where(image > 0, (image.astype(np.int64) - 1) % 255 + 1, 0)
            ax.imshow(ids, cmap=_label_colormap(), vmin=0, vmax=255, interpolation="nearest")
        else:
            if limits is not None:
                low, high = limits
            elif cmap == "gray" and image.ndim == 2:
                low, high = np.percentile(image, percentiles)
            else:
                low = high = None
            ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=low, vmax=high, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
        ax.set_xlabel("x (pixels)", fontsize=7)
        ax.set_ylabel("y (pixels)", fontsize=7)
        ax.tick_params(labelsize=6)
    if suptitle:  # wrapped to the grid's width: a narrow grid would cut a long title at both edges
        figure.suptitle("\n".join(textwrap.wrap(suptitle, max(24, int(9 * size * ncols)))))
    return figure


def _label_colormap():
    """256 colours: black for background, then fixed pseudo-random bright colours for objects."""
    from matplotlib.colors import ListedColormap

    colours = np.random.default_rng(3).uniform(0.25, 1.0, size=(256, 3))
    colours[0] = 0.0
    return ListedColormap(colours)

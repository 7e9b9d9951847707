"""Figures hide no data: names of points inside the axes and apart, legends beside the axes, stable styles."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cte_kit.reports.plots import scatter_by_group, scatter_cte, separation_sweep, strength_curves, sweep_lines
from cte_kit.estimators.selection import choose_strength

#: Seven models, four of them within 0.01 of each other in the top-right corner (notebook 1's cluster).
CTE = [0.986, 0.984, 0.9805, 0.9757, 0.971, 0.965, 0.936]
F1 = [0.962, 0.960, 0.952, 0.935, 0.910, 0.739, 0.828]
NAMES = ["bright_background", "near_target", "small_nuclei", "very_noisy", "large_nuclei", "sharp_clean",
         "gamma_textured"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _boxes(ax, texts):
    """The boxes of the texts themselves (an annotation's extent would include its leader line)."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    return [Text.get_window_extent(text, renderer) for text in texts]


def _overlap(a, b) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def test_point_names_stay_inside_the_axes_and_apart():
    figure, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    scatter_cte(CTE, F1, NAMES, ax=ax, stats={"kendall": 0.9, "spearman": 0.96, "pearson": 0.68})
    figure.canvas.draw()
    names = [text for text in ax.texts if text.get_text() in NAMES]
    assert sorted(text.get_text() for text in names) == sorted(NAMES)
    inside = ax.get_window_extent(figure.canvas.get_renderer())
    boxes = _boxes(ax, names)
    for text, box in zip(names, boxes):
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, \
            f"{text.get_text()} runs past the axes"
    overlaps = [(names[i].get_text(), names[j].get_text()) for i in range(len(boxes)) for j in range(i)
                if _overlap(boxes[i], boxes[j]) > 0]
    assert not overlaps
    # and no name covers a point
    points = ax.transData.transform(np.column_stack([CTE, F1]))
    assert not [(text.get_text(), tuple(point)) for text, box in zip(names, boxes) for point in points
                if box.contains(*point)]


def test_legends_sit_beside_the_axes():
    figure, axes = plt.subplots(1, 4, figsize=(24, 4.5), constrained_layout=True)
    sweep_lines({0.05: CTE, 0.5: np.asarray(CTE) - 0.05}, F1, ax=axes[0])
    scatter_by_group({"a": (CTE, F1), "b": (np.asarray(CTE) - 0.02, F1)}, ax=axes[1], names=NAMES)
    strength_curves([{"strength": 0.05, "kendall": 0.7, "resolved": 0.6, "median_cte": 0.98, "chosen": False},
                     {"strength": 0.5, "kendall": 0.9, "resolved": 0.9, "median_cte": 0.95, "chosen": True}],
                    ax=axes[2])
    choice = choose_strength({"dropout:0.1": CTE, "dropout:0.3": np.asarray(CTE) ** 2})
    separation_sweep(choice, NAMES, axes=[axes[3], figure.add_subplot(5, 5, 25)])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        legend = ax.get_legend()
        assert legend is not None
        assert _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer)) == 0


def test_a_strength_keeps_its_style_when_another_is_added():
    def styles(strengths):
        _, ax = plt.subplots()
        sweep_lines({s: CTE for s in strengths}, F1, ax=ax, all_strengths=(0.05, 0.1, 0.2, 0.5))
        return {float(text.get_text().split("= ")[1]): (handle.get_facecolor()[0].tolist(), handle.get_paths()[0])
                for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}

    three, four = styles((0.05, 0.2, 0.5)), styles((0.05, 0.1, 0.2, 0.5))
    for strength in three:
        assert three[strength][0] == four[strength][0], strength
        np.testing.assert_array_equal(three[strength][1].vertices, four[strength][1].vertices)
    assert four[0.1][0] not in [four[s][0] for s in (0.05, 0.2, 0.5)]

"""Figures hide no data: names of points inside the axes and apart, legends beside the axes, stable styles."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cte_kit.reports.plots import (scatter_by_group, scatter_cte, separation_sweep, strength_curves, summary_scatters,
                                   sweep_lines)
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


# -- every figure the kit makes can be read (cte_kit.reports.figure_check) ------------------------------
from cte_kit.reports.figure_check import figure_problems  # noqa: E402


def _summary(consistency, ctes, performance, flagged=(), kendall=0.71):
    """A summary entry as summarize_results gives it (the demo's values on the synthetic target)."""
    models = [{"name": name, "cte": c, "cte_low": c - 0.01, "cte_high": c + 0.01, "performance": p,
               "flags": [{"reason": "finds many more objects than the bank"}] if name in flagged else []}
              for name, c, p in zip(NAMES, ctes, performance)]
    return {"perturbation": "gamma:0.7", "consistency": consistency, "statistic": "mean",
            "performance_metric": "map" if consistency == "instance" else "f1", "performance_statistic": "median",
            "models": models, "kendall": kendall, "spearman": 0.82, "pearson": 0.98}


def test_the_checker_finds_what_makes_a_figure_hard_to_read():
    figure, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1], "o-", label="a line with a long legend entry")
    ax.scatter([0.5, np.nan], [0.5, 0.2])
    ax.legend(loc="center")
    ax.set_xticks(np.linspace(0, 1, 30))
    ax.annotate("a name cut off", (1, 1), xytext=(30, 0), textcoords="offset points")
    problems = " | ".join(figure_problems(figure))
    assert "cut off at the edge" in problems
    assert "overlap" in problems  # thirty tick labels on four inches
    assert "covers the line" in problems
    assert "not drawn" in problems  # the NaN point, and no note says so
    figure, ax = plt.subplots(figsize=(4, 3), constrained_layout=True)
    ax.plot([0, 1], [0, 1], "o-")
    assert figure_problems(figure) == []


def test_the_demo_scatters_name_every_model_and_hide_none():
    hard = _summary("hard", [0.953, 0.930, 0.903, 0.874, 0.870, 0.671, 0.468], [0.952, 0.962, 0.935, 0.960, 0.910, 0.828, 0.739])
    instance = _summary("instance", [0.990, 0.982, 0.979, 0.950, 0.823, 0.573, np.nan],
                        [0.417, 0.464, 0.412, 0.396, 0.247, 0.140, 0.036], flagged=("sharp_clean",))
    figure = summary_scatters([hard, instance], "synthetic_target")
    assert figure_problems(figure) == []
    texts = " ".join(text.get_text() for ax in figure.axes for text in [*ax.texts, ax.xaxis.label])
    assert "not plotted" in texts and "gamma_textured" in texts  # the NaN model is named, not dropped


def test_the_notebooks_scatters_and_sweeps_can_be_read():
    figure, ax = plt.subplots(figsize=(5.5, 4.5), constrained_layout=True)
    scatter_cte(CTE, F1, NAMES, ax=ax, stats={"kendall": 0.9, "spearman": 0.96, "pearson": 0.68},
                errors=(np.asarray(CTE) - 0.01, np.asarray(CTE) + 0.01))
    assert figure_problems(figure) == []
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    choice = choose_strength({"dropout:0.1": CTE, "dropout:0.3": np.asarray(CTE) ** 2, "dropout:0.5": np.asarray(CTE) ** 4})
    separation_sweep(choice, NAMES, axes=axes, kendall_by_setting={"dropout:0.1": 0.4, "dropout:0.3": 0.6},
                     title="CTE of each model")
    assert figure_problems(figure) == []


def test_the_comparison_heatmap_and_a_long_sweep_can_be_read():
    from cte_kit.reports.comparison import comparison_heatmap

    estimators = ["cte", "cte_soft", "cte+agreement", "agreement_instance", "leep", "otce"]
    for targets in (["synthetic_target"], ["fluo_256", "fluo_360", "histo_he", "brightfield_tissue"]):
        rows = [{"estimator": e, "target": t, "needs": "images+labels+source" if e == "otce" else "images",
                 "kendall": np.nan if e == "otce" else 0.1 * i} for i, e in enumerate(estimators) for t in targets]
        assert figure_problems(comparison_heatmap(rows)) == [], targets
    settings = ["dropout:0.1", "dropout:0.2", "dropout:0.3", "dropout:0.5", "dropout:0.1@sym1", "dropout:0.2@sym1",
                "dropout:0.3@sym1", "dropout:0.2@sym2", "dropout:0.05@all", "dropout:0.1@all", "gamma:0.7"]
    choice = choose_strength({s: np.asarray(CTE) ** (1 + i) for i, s in enumerate(settings)})
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.6), constrained_layout=True)
    separation_sweep(choice, NAMES, axes=axes, kendall_by_setting={s: 0.5 for s in settings}, title="t")
    assert figure_problems(figure) == []


def test_image_grids_and_prediction_pairs_can_be_read():
    from cte_kit.reports.plots import image_grid, show_prediction_pair

    rng = np.random.default_rng(0)
    images = [rng.random((64, 64)) for _ in range(6)]
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20], labels[30:40, 35:50] = 1, 2
    figure = image_grid(images + [labels, labels], [f"source: domain number {i}" for i in range(8)], ncols=2,
                        labels=[False] * 6 + [True] * 2,
                        suptitle="Instance labels, clean vs bottleneck dropout (one colour per object), on a narrow grid")
    assert figure_problems(figure) == []
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    show_prediction_pair(images[0], images[1], images[2], axes=axes,
                         titles=("model near_target", "clean prediction", "gamma:0.7 prediction", "flips: consistency 0.862"))
    assert figure_problems(figure) == []

"""Figures of an adaptation: the stopping signals, the kit's label-free choice and, to judge it, the truth.

:func:`plot_choice` draws one row of panels over the checkpoints of an adaptation: the stopping
signals of the SelfAdapt paper with their thresholds, the score the kit ranks the checkpoints by
(and their agreement with the rest of the bank), and - when labels were used to judge - the true
F1 and mAP. Every panel marks the checkpoint the kit chose and each stopping rule's; legends sit
below the panels, where they cover no line.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


__all__ = ["plot_choice"]

_STOP_STYLES = {"fn_rate": ("tab:purple", "FN-rate stop"), "embedding": ("tab:brown", "embedding stop")}


def _marks(ax, choice, run) -> None:
    ax.axvline(choice.step, color="tab:red", lw=2, alpha=0.5, label=f"kit's choice: step {choice.step}")
    if run is not None:
        for name, stop in run.stops.items():
            color, label = _STOP_STYLES.get(name, ("grey", f"{name} stop"))
            ax.axvline(stop.step, color=color, ls=":", lw=1.5, label=f"{label}: step {stop.step}")


def _legend_below(ax) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=2, borderaxespad=0.0)


def plot_choice(choice, run=None, truth: Mapping[int, Mapping[str, float]] | None = None, axes=None,
                title: str | None = None):
    """The checkpoints of an adaptation, the kit's choice and (optionally) the truth it is judged by.

    Parameters
    ----------
    choice : cte_kit.runs.checkpoints.CheckpointChoice
    run : cte_kit.adapt.Adaptation, optional
        Adds a panel of the stopping signals with their thresholds, and each rule's choice.
    truth : mapping of int -> mapping of str -> float, optional
        ``{step: {'f1': ..., 'map': ...}}``
        (:func:`cte_kit.evaluation.performance.checkpoint_performance`); adds the truth panel.
    axes : sequence of matplotlib Axes, optional
        One per panel (stopping signals if ``run``, choice, truth if ``truth``).
    title : str, optional

    Returns
    -------
    list of matplotlib Axes
    """
    import matplotlib.pyplot as plt

    panels = (["stops"] if run is not None else []) + ["choice"] + (["truth"] if truth is not None else [])
    if axes is None:
        figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.6), constrained_layout=True,
                                    squeeze=False)
        axes = list(axes[0])
    else:
        axes, figure = list(axes), axes[0].figure
    if len(axes) != len(panels):
        raise ValueError(f"{len(panels)} panels to draw ({', '.join(panels)}) but {len(axes)} axes")
    steps = np.array([s.step for s in choice.scores])
    for ax, panel in zip(axes, panels):
        if panel == "stops":
            for name, values, threshold, color in (
                    ("FN rate", [p.fn_rate for p in run.curve], run.config.fn_threshold, "tab:purple"),
                    ("embedding distance", [p.embedding for p in run.curve], run.config.embedding_threshold,
                     "tab:brown")):
                ax.plot([p.step for p in run.curve], values, "o-", color=color, label=name)
                ax.axhline(threshold, color=color, ls="--", lw=1, label=f"{name} threshold {threshold:g}")
            ax.set_ylabel("stopping signal (0 = the starting model)")
            ax.set_title("stopping rules of the SelfAdapt paper", fontsize=10)
        elif panel == "choice":
            ax.plot(steps, [s.score for s in choice.scores], "o-", color="tab:blue",
                    label=f"{choice.rule.consistency} CTE ({choice.rule.perturbation})")
            flagged = [s for s in choice.scores if s.flags]
            if flagged:
                ax.plot([s.step for s in flagged], [s.score for s in flagged], "x", color="black", ms=9,
                        label="flagged by the guards")
            if choice.reference:
                ax.plot(steps, [s.agreement for s in choice.scores], "s--", color="tab:green",
                        label=f"IoU with the bank's consensus ({len(choice.reference)} models)")
            ax.set_ylabel("label-free score")
            ax.set_title("what the kit sees (no labels)", fontsize=10)
        else:
            for metric, marker, label in (("f1", "o-", "true F1 (foreground)"), ("map", "s-", "true mAP")):
                ax.plot(steps, [truth[int(step)][metric] for step in steps], marker, label=label)
            ax.set_ylabel("true score (labels used only to judge)")
            ax.set_title("the hidden truth", fontsize=10)
        _marks(ax, choice, run)
        ax.set_xlabel("adaptation step")
        _legend_below(ax)
    if title:
        figure.suptitle(title, fontsize=11)
    return axes

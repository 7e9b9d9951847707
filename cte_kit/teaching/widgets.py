"""Notebook widgets (core ipywidgets + matplotlib only, so they work in JupyterLab, Binder and Colab).

* :func:`perturbation_explorer` - one slider per perturbation strength (noise, brightness,
  contrast, gamma of the input; dropout rate at the bottleneck; the seed). It shows, for the
  input perturbation and for dropout side by side, the image, the clean and the perturbed
  prediction and the map of flipped pixels, with the consistency values updating live.
* :func:`strength_sweep_panel` - choose a perturbation kind and a set of strengths, press *Run*,
  and get paper Fig. 3 (one fitted line per strength) with the correlation and the label-free
  diagnostics of each strength.

Every callback is a plain method that returns its numbers, so the widgets can be driven without
a browser: ``explorer.update(noise=0.1)`` or ``explorer.sliders['noise'].value = 0.1`` both
recompute, and ``panel.run(kind='dropout', strengths=[0.1, 0.3])`` or ``panel.button.click()``
run a sweep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..scoring.consistency import hard_consistency, instance_consistency, soft_consistency
from ..types import Prediction, content_name, image_id
from ..models.base import SegmentationModel
from ..perturb import image_seed
from ..perturb import NEUTRAL_STRENGTH, FeatureDropout, InputPerturbation

__all__ = ["DEFAULT_STRENGTHS", "SLIDER_RANGES", "PerturbationExplorer", "StrengthSweepPanel", "kit_default",
           "perturbation_explorer", "strength_options", "strength_sweep_panel"]

#: (min, max, step) of each slider; the neutral strength of each lies inside its range.
SLIDER_RANGES: Mapping[str, tuple[float, float, float]] = {
    "noise": (0.0, 0.5, 0.01),
    "brightness": (-0.5, 0.5, 0.02),
    "contrast": (0.1, 2.0, 0.05),
    "gamma": (0.3, 3.0, 0.05),
    "dropout": (0.0, 0.9, 0.05),
}

#: Order in which the input perturbations are composed (detector response first, noise last).
_INPUT_ORDER = ("gamma", "contrast", "brightness", "noise")


def _scores(clean: Prediction, perturbed: Prediction, threshold: float) -> dict:
    """Hard, soft (and instance when labels exist) consistency, and the flipped pixel counts."""
    result = {}
    if clean.probability is not None and perturbed.probability is not None:
        lost = (clean.probability > threshold) & ~(perturbed.probability > threshold)
        gained = ~(clean.probability > threshold) & (perturbed.probability > threshold)
        result.update(hard=hard_consistency(clean.probability, perturbed.probability, threshold),
                      soft=soft_consistency(clean.probability, perturbed.probability, threshold),
                      lost=int(lost.sum()), gained=int(gained.sum()), flipped=int(lost.sum() + gained.sum()))
    if clean.labels is not None and perturbed.labels is not None:
        result["instance"] = instance_consistency(clean.labels, perturbed.labels)
    return result


def _show(output, figure) -> None:
    """Replace what an Output widget shows by ``figure`` (only inside an IPython kernel), then close it."""
    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from IPython.display import display

    if get_ipython() is not None:
        with output:
            output.clear_output(wait=True)
            display(figure)
    plt.close(figure)


def _fmt(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


@dataclass
class _Row:
    title: str
    image: np.ndarray
    clean: Prediction
    perturbed: Prediction
    scores: dict


class PerturbationExplorer:
    """Interactive view of one model on one image under input perturbations and dropout.

    Parameters
    ----------
    model : SegmentationModel
        Any adapter; the dropout row appears only for grey-box models.
    image : (H, W) or (H, W, C) array
        A raw target image (normalised by the model's own settings).
    seed : int
        Initial seed of the noise and of the dropout mask.
    initial : mapping, optional
        Initial slider values, e.g. ``{'noise': 0.1, 'dropout': 0.2}``; unnamed sliders start at
        their neutral value (no perturbation).
    draw : bool
        Draw a figure on every update (False: compute numbers only, for tests and scripts).

    Attributes
    ----------
    sliders : dict of str -> ipywidgets slider
        ``noise``, ``brightness``, ``contrast``, ``gamma``, ``dropout`` and ``seed``.
    values : dict
        The last result of :meth:`update`: ``{'settings': ..., 'input': {...}, 'dropout': {...}}``
        where each of ``input`` / ``dropout`` holds ``hard``, ``soft``, ``instance``, ``flipped``,
        ``lost``, ``gained`` and the perturbation ``label`` (``dropout`` is None for black boxes).
    figure : matplotlib Figure or None
        The last figure drawn.
    widget : ipywidgets.VBox
        What to display.
    """

    def __init__(self, model: SegmentationModel, image, seed: int = 0, initial: Mapping[str, float] | None = None,
                 draw: bool = True):
        import ipywidgets as widgets

        self.model = model
        self.raw = image
        self.normalised = model.prepare(image)
        self._clean = model._predict_normalised([self.normalised])[0]
        self.draw = draw
        self.figure = None
        self.values: dict = {}
        self._busy = False
        start = {**{k: NEUTRAL_STRENGTH.get(k, 0.0) for k in SLIDER_RANGES}, **dict(initial or {})}
        unknown = sorted(set(start) - set(SLIDER_RANGES))
        if unknown:
            raise ValueError(f"unknown slider(s) {unknown}; sliders: {sorted(SLIDER_RANGES)}")
        style = {"description_width": "90px"}
        layout = widgets.Layout(width="330px")
        self.sliders = {
            name: widgets.FloatSlider(value=start[name], min=low, max=high, step=step, description=name,
                                      continuous_update=False, readout_format=".2f", style=style, layout=layout)
            for name, (low, high, step) in SLIDER_RANGES.items()
        }
        self.sliders["seed"] = widgets.IntSlider(value=int(seed), min=0, max=20, description="seed",
                                                 continuous_update=False, style=style, layout=layout)
        if not model.grey_box:
            self.sliders["dropout"].disabled = True
            self.sliders["dropout"].description = "dropout (n/a)"
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        self.reset_button = widgets.Button(description="reset", tooltip="all strengths back to neutral")
        self.reset_button.on_click(lambda _button: self.reset())
        self.readout = widgets.HTML()
        self.output = widgets.Output()
        input_box = widgets.VBox([widgets.HTML("<b>Input perturbations</b> (black box: any model)"),
                                  *(self.sliders[k] for k in ("noise", "brightness", "contrast", "gamma"))])
        feature_box = widgets.VBox([widgets.HTML("<b>Feature perturbation</b> (grey box: bottleneck dropout)"),
                                    self.sliders["dropout"], self.sliders["seed"], self.reset_button])
        self.widget = widgets.VBox([widgets.HBox([input_box, feature_box]), self.readout, self.output])
        self.update()

    # -- the callback ---------------------------------------------------------------------------
    def _on_change(self, _change=None) -> None:
        if not self._busy:
            self.update()

    def settings(self) -> dict:
        """Current slider values."""
        return {name: slider.value for name, slider in self.sliders.items()}

    def input_perturbations(self, settings: Mapping[str, float] | None = None) -> list[InputPerturbation]:
        """The non-neutral input perturbations of ``settings`` (default: the sliders), in the order applied."""
        settings = self.settings() if settings is None else settings
        chosen = [InputPerturbation(kind, float(settings[kind])) for kind in _INPUT_ORDER]
        return [p for p in chosen if not p.is_neutral]

    def perturbed_image(self, settings: Mapping[str, float] | None = None) -> np.ndarray:
        """The normalised image after the input perturbations.

        The random numbers come from the generator :meth:`SegmentationModel.predict_pairs` uses
        for image 0, draw 0, so with a single input perturbation the result equals the
        estimator's.
        """
        settings = self.settings() if settings is None else settings
        rng = np.random.default_rng(image_seed(int(settings["seed"]), image_id(content_name(self.raw)), 0))
        array = self.normalised
        for perturbation in self.input_perturbations(settings):
            array = perturbation.apply(array, rng)
        return array

    def update(self, **values) -> dict:
        """Set any sliders given as keywords, recompute, redraw; returns :attr:`values`.

        Examples
        --------
        >>> explorer.update(noise=0.2, dropout=0.3)["input"]["hard"]  # doctest: +SKIP
        """
        unknown = sorted(set(values) - set(self.sliders))
        if unknown:
            raise ValueError(f"unknown slider(s) {unknown}; sliders: {sorted(self.sliders)}")
        self._busy = True
        try:
            for name, value in values.items():
                self.sliders[name].value = value
        finally:
            self._busy = False
        settings = self.settings()
        threshold = self.model.threshold
        rows = []
        inputs = self.input_perturbations(settings)
        label = " + ".join(p.label for p in inputs) or "none"
        perturbed_input = self.perturbed_image(settings)
        perturbed = self._clean if not inputs else self.model._predict_normalised([perturbed_input])[0]
        input_scores = {"label": label, **_scores(self._clean, perturbed, threshold)}
        rows.append(_Row(f"input: {label}", perturbed_input, self._clean, perturbed, input_scores))
        dropout_scores = None
        if self.model.grey_box:
            dropout = FeatureDropout(float(settings["dropout"]))
            pair = self.model.predict_pairs([self.raw], dropout, seed=int(settings["seed"]))[0]
            dropout_scores = {"label": dropout.label, **_scores(pair.clean, pair.perturbed[0], threshold)}
            rows.append(_Row(f"bottleneck {dropout.label}", self.normalised, pair.clean, pair.perturbed[0], dropout_scores))
        self.values = {"settings": settings, "input": input_scores, "dropout": dropout_scores}
        self.readout.value = self._readout_html()
        if self.draw:
            self._redraw(rows)
        return self.values

    def reset(self) -> dict:
        """Every strength back to neutral (the seed is kept)."""
        return self.update(**{k: NEUTRAL_STRENGTH.get(k, 0.0) for k in SLIDER_RANGES})

    # -- display --------------------------------------------------------------------------------
    def _readout_html(self) -> str:
        parts = []
        for key, name in (("input", "input"), ("dropout", "dropout")):
            scores = self.values[key]
            if scores is None:
                parts.append(f"<b>{name}</b>: not available, {self.model.name} is a black box")
                continue
            text = (f"<b>{name}</b> ({scores['label']}): hard consistency (IoU) <b>{_fmt(scores.get('hard'))}</b>, "
                    f"soft (EI) {_fmt(scores.get('soft'))}")
            if "instance" in scores:
                text += f", instance (Rand) {_fmt(scores['instance'])}"
            if "flipped" in scores:
                text += f"; {scores['flipped']} pixels flipped ({scores['lost']} lost, {scores['gained']} gained)"
            parts.append(text)
        return "<br>".join(parts)

    def _redraw(self, rows: Sequence[_Row]) -> None:
        import matplotlib.pyplot as plt

        from ..reports.plots import show_prediction_pair

        figure, axes = plt.subplots(len(rows), 4, figsize=(13, 3.4 * len(rows)), constrained_layout=True, squeeze=False)
        for row_axes, row in zip(axes, rows):
            clean = row.clean.probability if row.clean.probability is not None else (row.clean.labels > 0).astype(np.float32)
            perturbed = (row.perturbed.probability if row.perturbed.probability is not None
                         else (row.perturbed.labels > 0).astype(np.float32))
            image = row.image if row.image.ndim == 2 else row.image.mean(axis=-1)
            show_prediction_pair(image, clean, perturbed, threshold=self.model.threshold, axes=row_axes,
                                 titles=(row.title, "clean prediction", "perturbed prediction",
                                         f"flips: hard consistency {_fmt(row.scores.get('hard'))}"))
        figure.suptitle(f"{self.model.name}: clean vs perturbed prediction (red: foreground lost, blue: gained)")
        self.figure = figure
        _show(self.output, figure)

    def _ipython_display_(self):  # pragma: no cover - exercised in notebooks
        from IPython.display import display

        display(self.widget)


def perturbation_explorer(model: SegmentationModel, image, seed: int = 0, initial: Mapping[str, float] | None = None,
                          draw: bool = True) -> PerturbationExplorer:
    """Build a :class:`PerturbationExplorer` (display it, or its ``.widget``, in a notebook)."""
    return PerturbationExplorer(model, image, seed=seed, initial=initial, draw=draw)


#: Strengths offered per kind (the paper sweeps dropout from 0.05 to 0.5); the panel adds the kit's default
#: (:func:`kit_default`) to its kind's options, so that it can always be compared with the others.
DEFAULT_STRENGTHS: Mapping[str, tuple[float, ...]] = {
    "dropout": (0.05, 0.1, 0.2, 0.3, 0.5, 0.7),
    "noise": (0.02, 0.05, 0.1, 0.2, 0.4),
    "brightness": (0.05, 0.1, 0.2, 0.4),
    "contrast": (0.9, 0.7, 0.5, 0.3),
    "gamma": (0.4, 0.5, 0.6, 0.8, 0.9, 1.25, 1.5, 2.0),
}


def kit_default(consistency: str = "hard") -> tuple[str, float]:
    """(kind, strength) of the kit's default perturbation for ``consistency``
    (:func:`cte_kit.estimators.cte.default_perturbation`)."""
    from ..estimators.cte import default_perturbation

    default = default_perturbation(consistency)
    if isinstance(default, FeatureDropout):
        return "dropout", float(default.rate)
    return default.kind, float(default.strength)


def strength_options(kind: str, consistency: str = "hard") -> list[float]:
    """The strengths the panel offers for ``kind``: :data:`DEFAULT_STRENGTHS`, with the kit's default of that kind."""
    default_kind, default_strength = kit_default(consistency)
    return sorted(set(DEFAULT_STRENGTHS[kind]) | ({default_strength} if kind == default_kind else set()))


class StrengthSweepPanel:
    """Widget around :func:`cte_kit.evaluation.strength.sweep_strengths`: paper Fig. 3 for any perturbation kind.

    Parameters
    ----------
    bank : sequence of BankEntry or SegmentationModel
    images : sequence of arrays
        The target images.
    labels : sequence of arrays, optional
        Target labels, only to draw CTE against true performance and the correlations.
    kind : str
        Initially selected perturbation kind.
    strengths : sequence of float, optional
        Initially selected strengths (default :data:`DEFAULT_STRENGTHS`).
    consistency : {'hard', 'soft', 'instance'}
    seed : int
    progress : bool
        Progress bars while sweeping.
    draw : bool
        Draw figures (False: compute only).

    Attributes
    ----------
    kind, strengths : ipywidgets
        A dropdown and a multiple selection.
    button : ipywidgets.Button
        Runs :meth:`run` with the current selection.
    result : StrengthSweep or None
        The last sweep.
    choice : cte_kit.estimators.selection.StrengthChoice or None
        The label-free choice among its strengths.
    rows : list of dict
        :meth:`StrengthSweep.rows` of the last sweep (what the table shows).
    figure : matplotlib Figure or None
    """

    def __init__(self, bank, images, labels=None, kind: str = "dropout", strengths: Sequence[float] | None = None,
                 consistency: str = "hard", seed: int = 0, progress: bool = True, draw: bool = True):
        import ipywidgets as widgets

        from ..evaluation.strength import STRENGTH_KINDS
        from ..models.bank import load_model
        from ..runs.store import ResultStore

        self.models = [item if isinstance(item, SegmentationModel) else load_model(item) for item in bank]
        # every strength, clean prediction and performance computed once, for as long as the panel lives
        self._store = ResultStore(":memory:")
        self.images, self.labels = images, labels
        self.consistency, self.seed, self.progress, self.draw = consistency, seed, progress, draw
        self.result = None
        self.choice = None
        self.rows: list = []
        self.figure = None
        self._cache: dict = {}
        self._performance = None
        self.kind = widgets.Dropdown(options=list(STRENGTH_KINDS), value=kind, description="perturbation",
                                     style={"description_width": "initial"})
        self.strengths = widgets.SelectMultiple(description="strengths", rows=6)
        self._set_options(kind, strengths)
        self.kind.observe(lambda change: self._set_options(change["new"]), names="value")
        self.button = widgets.Button(description="Run sweep", button_style="primary", icon="play")
        self.button.on_click(lambda _button: self.run())
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.output = widgets.Output()
        self.widget = widgets.VBox([widgets.HBox([self.kind, self.strengths, self.button]), self.status, self.table,
                                    self.output])

    def _set_options(self, kind: str, chosen: Sequence[float] | None = None) -> None:
        options = sorted(set(strength_options(kind, self.consistency)) | set(float(s) for s in (chosen or ())))
        default_kind, default_strength = kit_default(self.consistency)
        self.strengths.options = [(f"{s:g} (kit default)" if (kind, s) == (default_kind, default_strength) else f"{s:g}", s)
                                  for s in options]
        self.strengths.value = tuple(float(s) for s in (chosen or options))

    def run(self, kind: str | None = None, strengths: Sequence[float] | None = None):
        """Sweep (reusing strengths already computed for this kind), update table and figure.

        Returns
        -------
        StrengthSweep
        """
        from ..evaluation.performance import performance_metric_for
        from ..evaluation.strength import StrengthSweep, sweep_strengths

        if kind is not None and kind != self.kind.value:
            self.kind.value = kind
        if strengths is not None:
            self._set_options(self.kind.value, strengths)
        kind = self.kind.value
        chosen = sorted(float(s) for s in self.strengths.value)
        if not chosen:
            raise ValueError("select at least one strength")
        missing = [s for s in chosen if (kind, s) not in self._cache]
        # a sweep started by the button runs in a widget callback, where JupyterLab's status stays "Idle":
        # the panel itself says that it is busy (and the progress bars draw into its output)
        self.button.disabled, self.button.description, self.button.icon = True, "Running...", "hourglass-half"
        started = time.perf_counter()
        if missing:
            self.status.value = (f"<b>Running:</b> {kind} at {', '.join(f'{s:g}' for s in missing)} on "
                                 f"{len(self.models)} models x {len(self.images)} images...")
        try:
            if missing:
                with self.output:
                    self.output.clear_output()
                    fresh = sweep_strengths(self.models, self.images, kind, missing, labels=self.labels,
                                            consistency=self.consistency, seed=self.seed, progress=self.progress,
                                            store=self._store)
                for s in missing:
                    self._cache[(kind, s)] = fresh.per_image[s]
                if fresh.performance is not None and np.isfinite(fresh.performance).all():
                    self._performance = fresh.performance
            self.result = StrengthSweep(kind, chosen, [m.name for m in self.models], self.consistency,
                                        {s: self._cache[(kind, s)] for s in chosen}, self._performance,
                                        performance_metric_for(self.consistency))
        finally:
            self.button.disabled, self.button.description, self.button.icon = False, "Run sweep", "play"
        self.status.value = (f"Done: {kind} at {', '.join(f'{s:g}' for s in chosen)} "
                             f"({time.perf_counter() - started:.0f} s).")
        self.choice = self.result.choice()
        self.rows = self.result.rows(self.choice)
        self.table.value = self._table_html()
        if self.draw:
            self._redraw()
        return self.result

    def _table_html(self) -> str:
        choice, rows = self.choice, self.rows
        labelled = self.result.performance is not None
        default = kit_default(self.consistency)
        columns = ["strength", "top model", "top CTE", "spread", "pairs resolved", "tied at top", "label-free choice"]
        if labelled:
            columns += ["Kendall", "Spearman", "Pearson"]
        body = []
        for row in rows:
            strength = f"{row['strength']:g}" + (" (kit default)" if (self.result.kind, row["strength"]) == default else "")
            cells = [strength, str(row["top_model"]), _fmt(row["top_cte"]), _fmt(row["spread"]),
                     _fmt(row["resolved"]), str(row["tied_at_top"]), "&#9733;" if row["chosen"] else ""]
            if labelled:
                cells += [_fmt(row["kendall"]), _fmt(row["spearman"]), _fmt(row["pearson"])]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
        return f"<table>{head}{''.join(body)}</table><p>Label-free choice: <b>{choice.setting}</b> ({choice.reason})</p>"

    def _redraw(self) -> None:
        import matplotlib.pyplot as plt

        from ..reports.plots import strength_curves, sweep_lines
        from ..evaluation.performance import PERFORMANCE_STATISTIC

        result = self.result
        labelled = result.performance is not None
        # one panel above the other: side by side they squeeze to unreadable ticks and legends in a notebook
        figure, axes = plt.subplots(2 if labelled else 1, 1, figsize=(9.5, 9.6 if labelled else 4.8),
                                    constrained_layout=True, squeeze=False)
        name = "dropout p" if result.kind == "dropout" else f"{result.kind} strength"
        if labelled:
            kendall = {row["strength"]: row["kendall"] for row in self.rows}
            sweep_lines(result.cte_by_strength(), result.performance, ax=axes[0][0], strength_name=name,
                        cte_label=f"CTE ({result.consistency} consistency, {result.statistic} over images)",
                        performance_label=f"true {result.metric.upper()} ({PERFORMANCE_STATISTIC} over images)",
                        kendall_by_strength=kendall, title=f"CTE vs true {result.metric.upper()} per {name}",
                        all_strengths=[value for _, value in self.strengths.options])
        strength_curves(self.rows, ax=axes[-1][0], strength_name=name,
                        title=f"{result.consistency} CTE: how each {name} ranks the bank")
        self.figure = figure
        _show(self.output, figure)

    def _ipython_display_(self):  # pragma: no cover - exercised in notebooks
        from IPython.display import display

        display(self.widget)


def strength_sweep_panel(bank, images, labels=None, kind: str = "dropout", strengths: Sequence[float] | None = None,
                         consistency: str = "hard", seed: int = 0, progress: bool = True,
                         draw: bool = True) -> StrengthSweepPanel:
    """Build a :class:`StrengthSweepPanel` (display it, press *Run sweep*, or call ``.run()``)."""
    return StrengthSweepPanel(bank, images, labels, kind=kind, strengths=strengths, consistency=consistency,
                              seed=seed, progress=progress, draw=draw)

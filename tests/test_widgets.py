"""Notebook widgets driven without a browser: their callbacks compute what the estimator computes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from cte_kit.scoring.consistency import hard_consistency, instance_consistency, soft_consistency
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.teaching.demo import demo_bank_entries
from cte_kit.estimators.cte import default_perturbation, estimate
from cte_kit.models import load_model
from cte_kit.types import Prediction
from cte_kit.models.base import SegmentationModel
from cte_kit.perturb import FeatureDropout, InputPerturbation
from cte_kit.evaluation.strength import model_performance, perturbation_for, sweep_strengths
from cte_kit.reports.figure_check import figure_problems
from cte_kit.teaching.widgets import SLIDER_RANGES, perturbation_explorer, strength_sweep_panel


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks: one thread is fastest, and far faster than several on a shared, busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bank():
    """Three small U-Nets of the shipped demo bank (width 8, 3 levels)."""
    entries = {entry.name: entry for entry in demo_bank_entries()}
    return [load_model(entries[name]) for name in ("near_target", "sharp_clean", "gamma_textured")]


@pytest.fixture(scope="module")
def target():
    return generate(DEMO_TARGET, 5, shape=(64, 64), seed=11)


@dataclass
class ThresholdModel(SegmentationModel):
    """A black box: foreground = normalised intensity above 0.5 (no features to perturb)."""

    def _predict_normalised(self, batch):
        out = []
        for image in batch:
            probability = np.clip(image, 0.0, 1.0).astype(np.float32)
            out.append(Prediction(probability=probability, labels=(probability > 0.5).astype(np.int32)))
        return out


def _pair(model, image, perturbation, seed=0):
    pair = model.predict_pairs([image], perturbation, seed=seed)[0]
    return pair.clean, pair.perturbed[0]


# -- perturbation explorer ------------------------------------------------------------------------
def test_explorer_starts_neutral(bank, target):
    explorer = perturbation_explorer(bank[0], target.images[0], draw=False)
    assert explorer.values["input"]["label"] == "none"
    assert explorer.values["input"]["hard"] == 1.0 and explorer.values["input"]["flipped"] == 0
    assert explorer.values["dropout"]["hard"] == 1.0
    assert set(explorer.sliders) == {*SLIDER_RANGES, "seed"}


def test_slider_change_runs_the_callback_and_matches_the_estimator(bank, target):
    model, image = bank[1], target.images[0]
    explorer = perturbation_explorer(model, image, draw=False)
    explorer.sliders["noise"].value = 0.2  # what a user's drag does: the observer recomputes
    clean, perturbed = _pair(model, image, InputPerturbation("noise", 0.2))
    expected = hard_consistency(clean.labels > 0, perturbed.labels > 0)  # the masks' foreground, as every adapter
    assert explorer.values["input"]["label"] == "noise:0.2"
    assert explorer.values["input"]["hard"] == pytest.approx(expected, abs=1e-12)
    assert explorer.values["input"]["hard"] < 1.0
    # the estimator predicts clean and perturbed images in one batch of two, the widget one at a time:
    # the same network in another batch size differs in the last float bits
    assert explorer.values["input"]["soft"] == pytest.approx(
        soft_consistency(clean.probability, perturbed.probability, model.threshold), abs=1e-7)
    assert explorer.values["input"]["instance"] == pytest.approx(instance_consistency(clean.labels, perturbed.labels))
    assert explorer.values["input"]["hard"] == pytest.approx(
        estimate(model, [image], InputPerturbation("noise", 0.2)).score, abs=1e-12)
    explorer.sliders["noise"].value = 0.4
    assert explorer.values["input"]["hard"] != pytest.approx(expected)


def test_dropout_slider_matches_hard_consistency(bank, target):
    model, image = bank[0], target.images[1]
    explorer = perturbation_explorer(model, image, draw=False)
    values = {}
    for rate in (0.3, 0.6):
        result = explorer.update(dropout=rate)
        clean, perturbed = _pair(model, image, FeatureDropout(rate), seed=0)
        expected = hard_consistency(clean.labels > 0, perturbed.labels > 0)  # the masks' foreground, as every adapter
        assert result["dropout"]["hard"] == pytest.approx(expected, abs=1e-12)
        assert result["dropout"]["label"] == f"dropout:{rate:g}"
        values[rate] = result["dropout"]["hard"]
    assert values[0.3] != values[0.6]
    assert min(values.values()) < 1.0
    explorer.sliders["seed"].value = 5
    clean, perturbed = _pair(model, image, FeatureDropout(0.6), seed=5)
    assert explorer.values["dropout"]["hard"] == pytest.approx(
        hard_consistency(clean.probability, perturbed.probability, model.threshold), abs=1e-12)


def test_flip_counts_and_reset(bank, target):
    model, image = bank[1], target.images[2]
    explorer = perturbation_explorer(model, image, draw=False, initial={"contrast": 0.5})
    clean, perturbed = _pair(model, image, InputPerturbation("contrast", 0.5))
    lost = np.count_nonzero((clean.probability > 0.5) & ~(perturbed.probability > 0.5))
    gained = np.count_nonzero(~(clean.probability > 0.5) & (perturbed.probability > 0.5))
    assert (explorer.values["input"]["lost"], explorer.values["input"]["gained"]) == (lost, gained)
    assert explorer.reset()["input"]["hard"] == 1.0
    assert explorer.sliders["contrast"].value == 1.0


def test_input_perturbations_compose_in_a_fixed_order(bank, target):
    explorer = perturbation_explorer(bank[0], target.images[0], draw=False)
    explorer.update(noise=0.1, gamma=1.5, contrast=0.8)
    assert [p.kind for p in explorer.input_perturbations()] == ["gamma", "contrast", "noise"]
    assert explorer.values["input"]["label"] == "gamma:1.5 + contrast:0.8 + noise:0.1"
    assert not np.allclose(explorer.perturbed_image(), explorer.normalised)


def test_explorer_draws_a_labelled_figure(bank, target):
    explorer = perturbation_explorer(bank[0], target.images[0], initial={"noise": 0.1, "dropout": 0.2})
    axes = explorer.figure.axes
    assert len(axes) == 8
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    assert explorer.figure.get_suptitle()
    assert "hard consistency" in explorer.readout.value
    assert figure_problems(explorer.figure) == []


def test_black_box_has_no_dropout_row(target):
    explorer = perturbation_explorer(ThresholdModel(name="threshold"), target.images[0], draw=True,
                                     initial={"brightness": 0.2})
    assert explorer.sliders["dropout"].disabled
    assert explorer.values["dropout"] is None
    assert explorer.values["input"]["hard"] < 1.0
    assert "black box" in explorer.readout.value
    assert len(explorer.figure.axes) == 4


def test_unknown_slider_is_refused(bank, target):
    explorer = perturbation_explorer(bank[0], target.images[0], draw=False)
    with pytest.raises(ValueError, match="unknown slider"):
        explorer.update(blur=1.0)
    with pytest.raises(ValueError, match="unknown slider"):
        perturbation_explorer(bank[0], target.images[0], draw=False, initial={"blur": 1.0})


# -- strength sweep panel -------------------------------------------------------------------------
def test_button_click_runs_the_sweep(bank, target):
    panel = strength_sweep_panel(bank, target.images, target.labels, kind="dropout", strengths=(0.1, 0.4),
                                 progress=False, draw=True)
    assert panel.result is None
    panel.button.click()  # the widget's own callback, as a press in the browser
    result = panel.result
    assert result.strengths == [0.1, 0.4] and result.models == [m.name for m in bank]
    for strength in result.strengths:
        expected = [estimate(model, target.images, FeatureDropout(strength)).score for model in bank]
        np.testing.assert_allclose(result.cte(strength), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.performance, [model_performance(m, target.images, target.labels) for m in bank])
    assert sum(row["chosen"] for row in panel.rows) == 1
    assert panel.choice.setting in {"dropout:0.1", "dropout:0.4"}
    assert "Kendall" in panel.table.value and "Label-free choice" in panel.table.value
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in panel.figure.axes)
    # both axes of CTE vs performance name the statistic over images that made their numbers
    assert "mean over images" in panel.figure.axes[0].get_xlabel()
    assert "median over images" in panel.figure.axes[0].get_ylabel()
    assert panel.kind.style.description_width == "initial"  # "perturbation" is not cut
    assert figure_problems(panel.figure) == []  # no squeezed legend, overlapping ticks or hidden point


def test_panel_shows_that_it_is_busy_while_it_sweeps(bank, target, monkeypatch):
    import cte_kit.evaluation.strength as strength

    panel = strength_sweep_panel(bank, target.images, None, kind="dropout", strengths=(0.2,), progress=False,
                                 draw=False)
    seen = []
    original = strength.sweep_strengths

    def watched(*args, **kwargs):
        seen.append((panel.button.disabled, panel.button.description, panel.status.value))
        return original(*args, **kwargs)

    monkeypatch.setattr(strength, "sweep_strengths", watched)
    panel.button.click()
    ((disabled, description, status),) = seen
    assert disabled and description == "Running..." and "Running" in status and "dropout at 0.2" in status
    assert not panel.button.disabled and panel.button.description == "Run sweep"
    assert panel.status.value.startswith("Done: dropout at 0.2")


def test_panel_reuses_computed_strengths_and_switches_kind(bank, target, monkeypatch):
    import cte_kit.evaluation.strength as strength

    panel = strength_sweep_panel(bank, target.images, None, kind="dropout", strengths=(0.2,), progress=False,
                                 draw=False)
    panel.run()
    calls = []
    original = strength.sweep_strengths
    monkeypatch.setattr(strength, "sweep_strengths", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    panel.run(strengths=(0.2,))
    assert calls == []  # cached
    panel.run(kind="noise", strengths=(0.05, 0.1))
    assert calls == [[0.05, 0.1]]
    assert panel.kind.value == "noise" and panel.result.kind == "noise"
    assert panel.result.performance is None and "kendall" not in panel.rows[0]
    expected = estimate(bank[2], target.images, InputPerturbation("noise", 0.1)).score
    assert panel.result.cte(0.1)[2] == pytest.approx(expected, abs=1e-12)
    panel.kind.value = "gamma"  # the drop-down offers that kind's strengths, the kit's default among them
    default = default_perturbation("hard")
    assert default.kind == "gamma" and default.strength in panel.strengths.value
    labels = dict((value, label) for label, value in panel.strengths.options)
    assert labels[default.strength].endswith("(kit default)")
    assert sum(label.endswith("(kit default)") for label in labels.values()) == 1


def test_sweep_strengths_leaves_black_boxes_out_of_dropout(target):
    models = [ThresholdModel(name="a"), ThresholdModel(name="b", threshold=0.4)]
    result = sweep_strengths(models, target.images, "dropout", [0.2], progress=False)
    assert np.isnan(result.cte(0.2)).all()
    result = sweep_strengths(models, target.images, "brightness", [0.1], progress=False)
    assert np.isfinite(result.cte(0.1)).all()
    assert perturbation_for("dropout", 0.2) == FeatureDropout(0.2)
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        perturbation_for("blur", 1.0)

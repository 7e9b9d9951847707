"""Summaries say when there is nothing to compare or to resample, instead of printing a certainty."""

import math

import numpy as np

from cte_kit.evaluation.summary import summarize_results
from cte_kit.teaching.demo import format_table


def _rows(values):
    """Rows of one setting from {model: [CTE per image]}."""
    return [{"model": model, "image": f"img{j}", "perturbation": "gamma:0.7", "consistency": "hard", "seed": 0,
             "n_pert": 1, "cte": value, "f1": np.nan, "iou": np.nan, "map": np.nan, "ap50": np.nan}
            for model, scores in values.items() for j, value in enumerate(scores)]


def test_one_model_has_an_interval_but_nothing_to_compare_with():
    (summary,) = summarize_results(_rows({"only": [0.7, 0.8, 0.9, 0.6]}), n_boot=200)
    (model,) = summary["models"]
    assert 0.6 <= model["cte_low"] < model["cte_high"] <= 0.9 and "p_top" not in model
    assert math.isnan(summary["p_best_is_top"]) and summary["stability"] == "one model: nothing to compare it with"
    table = format_table(summary)
    assert "[nan" not in table and "100%" not in table
    assert "Sampling stability: not estimated (one model: nothing to compare it with)" in table


def test_one_image_has_no_interval_and_nothing_to_resample():
    (summary,) = summarize_results(_rows({"a": [0.9], "b": [0.5]}), n_boot=200)
    assert all("cte_low" not in m and "p_top" not in m for m in summary["models"])
    assert summary["recommended"] == "a" and summary["stability"] == "one image: nothing to resample"
    table = format_table(summary)
    assert "n/a" in table and "[nan" not in table and "100%" not in table
    # a model with a score on one image only has no interval either, whatever the others have
    (summary,) = summarize_results(_rows({"a": [0.9, 0.8, 0.7], "b": [0.5, np.nan, np.nan]}), n_boot=200)
    intervals = {m["name"]: "cte_low" in m for m in summary["models"]}
    assert intervals == {"a": True, "b": False} and np.isfinite(summary["p_best_is_top"])

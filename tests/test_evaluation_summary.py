"""Summaries say when there is nothing to compare or to resample, instead of printing a certainty."""

import math

import numpy as np
from pytest import approx

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


def _touching_cells() -> np.ndarray:
    """Three pairs of touching rectangular cells on a background: (64, 96) int labels 1..6."""
    labels = np.zeros((64, 96), np.int32)
    for pair in range(3):
        left = 4 + 30 * pair
        labels[8:56, left:left + 12] = 2 * pair + 1
        labels[8:56, left + 12:left + 24] = 2 * pair + 2
    return labels


def test_an_instance_recommendation_says_what_instance_consistency_cannot_see():
    """A model that merges touching cells the same way under every perturbation is the most consistent: the
    kit cannot see that from its predictions, so the recommendation says what the score does not measure."""
    from skimage.measure import label

    from cte_kit.scoring.consistency import instance_consistency
    from cte_kit.scoring.metrics import average_precision

    truth = _touching_cells()
    merged = label(truth > 0)  # each pair of touching cells as one object, under every perturbation
    moved = truth.copy()  # the correct model's perturbed prediction: one shared border drawn 2 px off
    moved[8:56, 14:18] = 2
    predictions = {"merges": (merged, merged), "separates": (truth, moved)}
    rows = []
    for name, (clean, perturbed) in predictions.items():
        for j in range(3):
            rows.append({"model": name, "image": f"img{j}", "perturbation": "gamma:0.7", "consistency": "instance",
                         "seed": 0, "n_pert": 1, "cte": instance_consistency(clean, perturbed), "f1": np.nan,
                         "iou": np.nan, "map": average_precision(truth, clean).mean, "ap50": np.nan})
    (summary,) = summarize_results(rows, n_boot=0, task="cells")
    scores = {m["name"]: (m["cte"], m["map"]) for m in summary["models"]}
    assert scores["merges"][0] == 1.0 > scores["separates"][0]  # merging is perfectly consistent ...
    # ... and its objects overlap each cell with IoU 0.5: a match at IoU 0.5 only (3 of 6 cells), so mAP 0.5 / 10
    assert scores["merges"][1] == approx(0.05) and scores["separates"][1] == 1.0
    assert summary["recommended"] == "merges" and summary["regret"] == approx(0.95)
    assert "merges touching objects" in summary["blind_spot"]
    assert "What this score cannot see: instance consistency measures" in format_table(summary)
    # hard consistency has no such sentence, and neither has a ranking that recommends nothing
    hard = [{**row, "consistency": "hard"} for row in _rows({"a": [0.9, 0.8], "b": [0.5, 0.6]})]
    (summary,) = summarize_results(hard, n_boot=0)
    assert summary["recommended"] == "a" and summary["blind_spot"] is None
    assert "What this score cannot see" not in format_table(summary)

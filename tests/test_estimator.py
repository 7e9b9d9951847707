"""The estimator's defaults and one model's CTE (cte_kit.estimators.cte)."""

import numpy as np
import pytest
import torch

from cte_kit.scoring.consistency import DEFAULT_STATISTIC, PAPER_STATISTIC
from cte_kit.estimators.cte import (DEFAULT_PERTURBATIONS, PAPER_PERTURBATION, default_perturbation, default_settings, estimate)
from cte_kit.models.unet import UNetConfig, UNetModel
from cte_kit.perturb import FeatureDropout, InputPerturbation


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = UNetConfig(levels=3, width=8, output="foreground+boundary")
    return UNetModel(name="u", network=config.build(), config=config)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(2)
    return [rng.integers(0, 4000, size=(48, 64)).astype(np.uint16) for _ in range(4)]


def test_defaults_differ_from_the_paper_where_the_benchmark_says_so():
    assert (PAPER_PERTURBATION, PAPER_STATISTIC) == ("dropout:0.2", "median")
    assert DEFAULT_STATISTIC == "mean"
    assert DEFAULT_PERTURBATIONS == {"hard": "gamma:0.7", "soft": "gamma:0.7", "instance": "gamma:0.7"}
    assert default_perturbation("instance") == default_perturbation("hard") == InputPerturbation("gamma", 0.7)
    with pytest.raises(ValueError, match="unknown consistency 'dice'"):
        default_perturbation("dice")


def test_default_settings_group_consistencies_by_perturbation():
    assert default_settings(["instance", "hard", "soft", "hard"]) == {"gamma:0.7": ["instance", "hard", "soft"]}
    assert default_settings([]) == {}


def test_estimate_uses_the_default_of_its_consistency_and_the_mean(model, images):
    result = estimate(model, images, consistency="instance", seed=3)
    explicit = estimate(model, images, InputPerturbation("gamma", 0.7), consistency="instance", seed=3)
    assert result.perturbation == "gamma:0.7"
    np.testing.assert_array_equal(result.per_image, explicit.per_image)
    assert result.summary.statistic == "mean"
    assert result.score == pytest.approx(np.nanmean(result.per_image))
    paper = estimate(model, images, FeatureDropout(0.2), statistic=PAPER_STATISTIC, seed=3)
    assert paper.score == pytest.approx(np.nanmedian(paper.per_image))

"""Label-free setting choice, rank aggregation, the tie-aware statistic and symmetric U-Net layers."""

import numpy as np
import pytest
import torch

from cte_kit.scoring.consistency import STATISTICS, nan_statistic, summarize
from cte_kit.perturb import FeatureDropout, parse_perturbation
from cte_kit.scoring.ranking import bootstrap_scores
from cte_kit.estimators.selection import aggregate_ranks, choose_strength, separation


# -- separation -------------------------------------------------------------------------------
def test_separation_of_hand_computed_scores():
    s = separation([0.9, 0.8, 0.8, 0.5], "x", floor=0.85, tol=0.01)
    assert s.top == 0.9
    assert s.level == pytest.approx(0.8)  # median of the four
    assert s.tied_at_top == 1
    # pairs: (.9,.8) (.9,.8) (.9,.5) (.8,.8) (.8,.5) (.8,.5): one tied pair of six
    assert s.resolved == pytest.approx(5 / 6)
    assert not s.separated  # min_resolved = 1 by default
    assert s.above_floor
    assert s.spread == pytest.approx(np.std([0.9, 0.8, 0.8, 0.5]))


def test_separation_ties_at_top_within_tolerance():
    s = separation([1.0, 0.998, 0.7], tol=0.005)
    assert s.tied_at_top == 2 and not s.separated
    assert separation([1.0, 0.998, 0.7], tol=0.001).separated


def test_separation_from_per_image_scores_uses_the_bootstrap():
    rng = np.random.default_rng(0)
    clear = np.stack([np.full(40, 0.9), np.full(40, 0.5)]) + rng.normal(0, 0.01, (2, 40))
    assert separation(clear, statistic="mean").resolved == 1.0
    # two models whose per-image scores are the same noise, shuffled: their order is not stable
    noise = rng.normal(0.8, 0.1, 40)
    unstable = np.stack([noise, rng.permutation(noise) + 0.006])
    s = separation(unstable, statistic="mean", tol=0.005)
    assert s.resolved == 0.0  # mean differs by > tol, but not consistently over the bootstrap


def test_separation_leaves_out_nan_models():
    s = separation([np.nan, 0.9, 0.4])
    assert s.top == 0.9 and s.resolved == 1.0 and s.separated


# -- choose_strength --------------------------------------------------------------------------
SWEEP = {
    # weak: three good models tie at 1.0, only the broken one differs
    "dropout:0.1": [1.0, 1.0, 1.0, 0.6],
    # separates, best model above the floor
    "dropout:0.3": [0.95, 0.9, 0.8, 0.3],
    # separates too, but stronger
    "dropout:0.5": [0.7, 0.5, 0.4, 0.1],
}


def test_choose_strength_takes_the_weakest_separating_setting():
    choice = choose_strength(SWEEP)
    assert choice.setting == "dropout:0.3"
    assert [s.setting for s in choice.settings] == ["dropout:0.1", "dropout:0.3", "dropout:0.5"]
    assert choice.settings[0].tied_at_top == 3
    assert "weakest setting that separates" in choice.reason
    assert [row["chosen"] for row in choice.table()] == [False, True, False]


def test_choose_strength_orders_by_bank_level_not_by_mapping_order():
    reversed_sweep = dict(reversed(list(SWEEP.items())))
    assert choose_strength(reversed_sweep).setting == "dropout:0.3"
    assert choose_strength(reversed_sweep, order="given").setting == "dropout:0.5"


def test_choose_strength_respects_the_floor():
    choice = choose_strength(SWEEP, floor=0.96)
    # 0.3 and 0.5 fall below the floor; 0.1 is above but does not separate: most resolved above floor
    assert choice.setting == "dropout:0.1"
    assert "no setting separates" in choice.reason
    below = choose_strength({"a": [0.4, 0.3], "b": [0.45, 0.2]}, floor=0.5)
    assert below.setting == "b" and "below the floor" in below.reason


def test_choose_strength_breaks_a_tie_in_resolved_pairs_on_the_models_tied_at_the_top():
    # both settings resolve 3 of the 6 pairs (hand-counted); the weaker one has three models tied at the
    # top, the stronger one a single best model: the single best model wins, although it is stronger
    sweep = {"dropout:0.05": [1.0, 1.0, 1.0, 0.6], "dropout:0.5": [0.9, 0.7, 0.7, 0.7]}
    weak, strong = (separation(v, tol=0.005) for v in sweep.values())
    assert weak.resolved == strong.resolved == pytest.approx(3 / 6)
    assert (weak.tied_at_top, strong.tied_at_top) == (3, 1)
    choice = choose_strength(sweep, min_resolved=1.0)
    assert choice.setting == "dropout:0.5"
    assert "a single best model" in choice.reason and "tied at the top" not in choice.reason
    # with equal ties at the top, the weaker setting still wins
    equal = choose_strength({"weak": [1.0, 0.9, 0.9, 0.9], "strong": [0.8, 0.6, 0.6, 0.6]})
    assert equal.setting == "weak"


def test_choose_strength_validates():
    with pytest.raises(ValueError):
        choose_strength({})
    with pytest.raises(ValueError):
        choose_strength({"a": [1.0, 0.5], "b": [1.0, 0.5, 0.2]})
    with pytest.raises(ValueError):
        choose_strength(SWEEP, order="alphabetical")
    assert choose_strength({"a": [np.nan, np.nan]}).setting is None


# -- aggregate_ranks --------------------------------------------------------------------------
def test_aggregate_ranks_is_a_normalised_borda_count():
    hard = [0.9, 0.8, 0.7]        # ranks 1 2 3 -> borda 1, .5, 0
    instance = [0.5, 0.6, 0.1]    # ranks 2 1 3 -> borda .5, 1, 0
    combined = aggregate_ranks({"hard": hard, "instance": instance})
    np.testing.assert_allclose(combined, [0.75, 0.75, 0.0])
    np.testing.assert_allclose(aggregate_ranks([hard, instance], weights=[3, 1]), [0.875, 0.625, 0.0])


def test_aggregate_ranks_ties_and_nan():
    # ties share the average rank (1.5 -> borda 0.75); NaN ranks last; all-NaN model stays NaN
    combined = aggregate_ranks([[1.0, 1.0, np.nan, 0.2], [0.3, 0.9, np.nan, 0.1]])
    # ranking 1: ranks 1.5 1.5 4 3 -> (4-r)/3 = .833 .833 0 .333; ranking 2: ranks 2 1 4 3 -> .667 1 0 .333
    np.testing.assert_allclose(combined[[0, 1, 3]], [0.75, 11 / 12, 1 / 3])
    assert np.isnan(combined[2])
    with pytest.raises(ValueError):
        aggregate_ranks([[1, 2], [1, 2]], weights=[0, 0])
    with pytest.raises(ValueError):
        aggregate_ranks([])


# -- tie-aware statistic ----------------------------------------------------------------------
def test_tie_aware_statistic_breaks_median_ties_by_the_mean():
    a = [1.0, 1.0, 1.0, 0.9]      # median 1, mean .975
    b = [1.0, 1.0, 1.0, 0.5]      # median 1, mean .875
    c = [1.0, 0.99, 0.98, 0.97]   # median .985
    scores = [summarize(x, "tie-aware").score for x in (a, b, c)]
    assert summarize(a, "median").score == summarize(b, "median").score == 1.0
    assert scores[0] > scores[1] > scores[2]
    assert scores[0] == pytest.approx(1.0 - 1e-6 * 0.025)
    assert scores[0] <= 1.0
    assert "tie-aware" in STATISTICS
    np.testing.assert_allclose(nan_statistic(np.array([a, b]), "tie-aware"), scores[:2])
    assert np.isnan(nan_statistic([np.nan, np.nan], "tie-aware"))
    boot = bootstrap_scores(np.array([a, b]), n_boot=50, statistic="tie-aware")
    assert boot.p_top[0] >= boot.p_top[1]


# -- symmetric layers of the kit U-Net --------------------------------------------------------
def _unet_model(levels=3):
    from cte_kit.models.unet import UNetConfig, UNetModel

    torch.manual_seed(0)
    config = UNetConfig(levels=levels, width=4, output="foreground+boundary")
    return UNetModel(name="u", network=config.build(), config=config, instances="watershed")


def test_symmetric_layers_follow_the_official_definition():
    model = _unet_model(levels=3)
    net = model.network
    assert model.feature_modules(["sym0"]) == [net.encoders[2]]
    # sym k: the skip at depth k from the bottleneck and decoder k-1
    assert model.feature_modules(["sym1"]) == [net.encoders[1], net.decoders[0]]
    assert model.feature_modules(["sym2"]) == [net.encoders[0], net.decoders[1]]
    four = _unet_model(levels=4)
    assert four.feature_modules(["sym1"]) == [four.network.encoders[2], four.network.decoders[0]]
    assert four.feature_modules(["all"]) == [*four.network.encoders, *four.network.decoders]
    with pytest.raises(ValueError, match="sym3"):
        model.feature_modules(["sym3"])
    # aliases are accepted but do not change the plain layer list; duplicates are hooked once
    assert "sym1" not in model.layers
    assert model.check_layers(["sym1", "bottleneck"]) == ("encoder1", "bottleneck", "decoder0")
    assert len(model.feature_modules(["sym0", "bottleneck", "sym1"])) == 3
    with pytest.raises(ValueError, match="sym0"):
        model.check_layers(["sym9"])
    assert parse_perturbation("dropout:0.2@sym1").layers == ("sym1",)


def test_symmetric_dropout_pair_matches_unforked_hooks():
    from cte_kit.perturb import feature_dropout

    model = _unet_model(levels=3)
    rng = np.random.default_rng(1)
    images = [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
    pairs = model.predict_pairs(images, FeatureDropout(0.5, ("sym1",)), seed=3, image_ids=[0, 1])
    clean = model.predict(images)
    for pair, reference in zip(pairs, clean):
        np.testing.assert_allclose(pair.clean.probability, reference.probability, atol=1e-5)
    # the perturbed half equals a plain (unforked) pass with the same hooks and seeds
    from cte_kit.perturb import image_seed

    arrays = [model.prepare(image) for image in images]
    seeds = [image_seed(3, i, 0) for i in range(2)]
    tensor, size = model._to_tensor(arrays)
    with torch.inference_mode(), feature_dropout(model.feature_modules(["sym1"]), 0.5, seeds):
        logits = model.network(tensor)
    expected = torch.sigmoid(logits[:, 0]).numpy()
    for pair, reference in zip(pairs, expected):
        np.testing.assert_allclose(pair.perturbed[0].probability, reference, atol=1e-5)
    assert any(not np.allclose(p.perturbed[0].probability, p.clean.probability) for p in pairs)


# -- the summary's separation report and warning ----------------------------------------------
def _rows(ctes):
    """Result rows: one image per model with the given CTE (no labels)."""
    return [{"model": f"m{i}", "image": "a", "perturbation": "dropout:0.2", "consistency": "instance", "seed": 0,
             "n_pert": 1, "cte": cte, "f1": np.nan, "iou": np.nan, "map": np.nan, "ap50": np.nan}
            for i, cte in enumerate(ctes)]


def test_summarize_results_warns_when_the_bank_is_not_separated():
    from cte_kit.evaluation.summary import summarize_results

    with pytest.warns(UserWarning, match="3 models tie at the top"):
        summary = summarize_results(_rows([1.0, 1.0, 0.998, 0.4]), n_boot=0)[0]
    assert summary["tied_at_top"] == 2 and summary["near_tied_at_top"] == 3
    assert summary["separated"] is False
    assert summary["resolved_pairs"] == pytest.approx(3 / 6)  # only the pairs with 0.4 are apart
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        separated = summarize_results(_rows([1.0, 0.9, 0.4]), n_boot=0)[0]
    assert separated["separated"] is True and separated["resolved_pairs"] == 1.0


# -- command line -----------------------------------------------------------------------------
def test_rank_choose_strength_and_combine(tmp_path, capsys):
    import json

    import tifffile

    from cte_kit.cli import main
    from cte_kit.data.synthetic import DEMO_TARGET, generate

    data = generate(DEMO_TARGET, 2, shape=(64, 64), seed=3)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for name, image, label in zip(data.names, data.images, data.labels):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", label)
    bank = tmp_path / "bank.yaml"
    bank.write_text("models:\n" + "".join(f"  - name: {n}\n    kind: unet\n    pretrained: demo/{n}\n"
                                          for n in ("near_target", "sharp_clean", "very_noisy")))
    summary = tmp_path / "summary.json"
    argv = ["rank", "--bank", str(bank), "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--perturbation", "dropout:0.1", "--perturbation", "dropout:0.3@sym1", "--consistency", "hard",
            "--statistic", "tie-aware", "--choose-strength", "--combine", "--out", str(tmp_path / "r.csv"),
            "--summary", str(summary), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Label-free choice (hard)" in printed and "Combined ranking" in printed
    document = json.loads(summary.read_text())
    assert document["statistic"] == "tie-aware"
    (choice,) = document["choices"]
    assert choice["setting"] in ("dropout:0.1", "dropout:0.3@sym1")
    assert [c["chosen"] for c in choice["candidates"]].count(True) == 1
    combined = {m["name"]: m["combined"] for m in document["combined"]["models"]}
    assert set(combined) == {"near_target", "sharp_clean", "very_noisy"}
    assert all(0.0 <= v <= 1.0 for v in combined.values())
    assert sorted(combined.values())[-1] > sorted(combined.values())[0]

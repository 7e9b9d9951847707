"""Tests of cte_kit.runs.checkpoints: choosing an adaptation's checkpoint without labels."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cte_kit.adapt import AdaptConfig, checkpoint_entry, provenance_path
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.estimators.cte import default_settings
from cte_kit.evaluation.performance import checkpoint_performance
from cte_kit.models.bank import BankEntry, load_model
from cte_kit.models.unet import load_checkpoint, save_checkpoint
from cte_kit.runs.checkpoints import NO_GAIN, ChoiceRule, adapt_and_choose, choose_checkpoint
from cte_kit.runs.runner import RunTarget
from cte_kit.runs.store import ResultStore
from cte_kit.teaching.demo import demo_bank_entries, demo_checkpoint


@pytest.fixture(scope="module")
def target_data():
    return generate(DEMO_TARGET, 6, shape=(96, 96), seed=7)


def _true_f1(store, choice, labels, names) -> dict[int, float]:
    """Median foreground F1 of every checkpoint, from the labels (the evaluation floor, only to judge)."""
    return {step: values["f1"] for step, values in checkpoint_performance(store, choice, dict(zip(names, labels))).items()}


def _dice(truth: np.ndarray, mask: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN), counted by hand."""
    tp, fp, fn = (truth & mask).sum(), (~truth & mask).sum(), (truth & ~mask).sum()
    return 2 * tp / (2 * tp + fp + fn)


def _noisy(path, sigma: float, seed: int):
    """The demo `near_target` U-Net with Gaussian noise of ``sigma`` times each weight tensor's spread added."""
    network, config, settings, _ = load_checkpoint(demo_checkpoint("near_target"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.numel() > 1:
                parameter.add_(sigma * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return save_checkpoint(network, config, path, settings=settings)


def test_a_sequence_made_better_then_worse_is_chosen_at_its_best_without_labels(target_data, tmp_path):
    # noise on the weights shrinks to nothing at step 20, then grows; the last checkpoint is wrecked into flooding
    # the image, which is very consistent: CTE alone would take it, the guards must not
    plan = {0: (0.2, 1), 10: (0.1, 1), 20: (0.0, 0), 30: (0.1, 2), 40: (0.3, 2), 50: (0.8, 2)}
    entries = {step: BankEntry(f"ckpt@step{step}", "unet", str(_noisy(tmp_path / f"step_{step}.pt", *noise)))
               for step, noise in plan.items()}
    target = RunTarget("target", target_data.images, target_data.names)  # images and names: no labels to read
    with ResultStore(tmp_path / "ranking.sqlite") as store:
        choice = choose_checkpoint(entries, target, store, progress=False)
        raw = choose_checkpoint(entries, target, store, replace(ChoiceRule(), guards=None), progress=False)
        truth = _true_f1(store, choice, target_data.labels, target_data.names)
    assert max(truth, key=truth.get) == 20 and truth[0] < truth[10] < truth[20] > truth[30] > truth[40] > truth[50]
    # the truth the evaluation floor filled in is the F1 (Dice) of the objects' pixels, median over images
    for step in (0, 20, 50):
        predictions = load_model(entries[step]).predict(target_data.images)
        reference = np.median([_dice(t > 0, p.labels > 0) for t, p in zip(target_data.labels, predictions)])
        assert truth[step] == pytest.approx(reference, abs=1e-9)
    assert choice.step == 20 and not choice.kept_start
    assert choice.reason.startswith("step 20: the highest hard CTE under gamma:0.7")
    scores = {s.step: s for s in choice.scores}
    assert scores[50].flags and "foreground" in scores[50].flags[0] and not scores[20].flags
    # without the guards the flooding checkpoint wins: the guards, not luck, kept it out
    assert raw.step == 50 and scores[50].score > scores[20].score
    # the scores are the kit's default estimator: the same settings `rank` uses
    assert choice.rule.perturbation == next(iter(default_settings(["hard"])))


def test_an_adaptation_that_only_hurts_keeps_the_starting_weights_and_says_so(target_data, tmp_path):
    # a step far too large, no L2-SP and a teacher that follows the student at once: the model falls apart
    ruin = AdaptConfig(steps=6, eval_every=2, batch_size=2, patch_size=64, n_eval=2, learning_rate=0.05, l2sp=0.0,
                       ema_decay=0.5, warmup=0.0)
    source = next(e for e in demo_bank_entries() if e.name == "near_target")
    out = tmp_path / "near_adapted.pt"
    result = adapt_and_choose(source, target_data.images, target_data.names, ruin, out, progress=False)
    with ResultStore(tmp_path / "near_adapted_checkpoints" / "ranking.sqlite") as store:
        truth = _true_f1(store, result.choice, target_data.labels, target_data.names)
    assert all(truth[step] < truth[0] - 0.1 for step in truth if step), truth
    assert result.choice.step == 0 and result.choice.kept_start
    assert result.choice.reason.startswith(NO_GAIN)
    # what is written is the starting weights, and its report says why
    written = load_model(BankEntry("w", "unet", str(out))).network.state_dict()
    start = load_model(source).network.state_dict()
    assert all(torch.equal(written[k], v) for k, v in start.items())
    report = json.loads(provenance_path(out).read_text())
    assert report["choice"]["chosen_step"] == 0 and report["choice"]["reason"].startswith(NO_GAIN)
    assert [c["step"] for c in report["choice"]["checkpoints"]] == [0, 2, 4, 6]


def test_checkpoint_zero_predicts_what_the_source_predicts(target_data, tmp_path):
    source = next(e for e in demo_bank_entries() if e.name == "sharp_clean")
    entry = checkpoint_entry(source, "unet", demo_checkpoint("sharp_clean"), 0)
    assert entry.name == "sharp_clean@step0" and entry.settings == source.settings
    a, b = load_model(source).predict(target_data.images[:2]), load_model(entry).predict(target_data.images[:2])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.labels, y.labels)


def test_choice_refuses_checkpoints_without_the_start(target_data, tmp_path):
    with ResultStore(tmp_path / "s.sqlite") as store, pytest.raises(ValueError, match="step 0"):
        choose_checkpoint({10: BankEntry("x", "unet", str(demo_checkpoint("near_target")))},
                          RunTarget("target", target_data.images, target_data.names), store, progress=False)
    with pytest.raises(ValueError, match="margin"):
        ChoiceRule(margin=-0.1)


def test_a_more_consistent_checkpoint_the_rest_of_the_bank_does_not_confirm_does_not_replace_the_start(target_data,
                                                                                                       tmp_path):
    # small_nuclei stands in for a checkpoint that self-training made more consistent (higher CTE) but worse
    entries = {e.name: e for e in demo_bank_entries()}
    checkpoints = {0: entries["near_target"], 10: entries["small_nuclei"]}
    reference = [e for name, e in entries.items() if name not in ("near_target", "small_nuclei")]
    target = RunTarget("target", target_data.images, target_data.names)
    with ResultStore(tmp_path / "ranking.sqlite") as store:
        alone = choose_checkpoint(checkpoints, target, store, progress=False)
        checked = choose_checkpoint(checkpoints, target, store, reference=reference, progress=False)
        truth = _true_f1(store, checked, target_data.labels, target_data.names)
    scores = {s.step: s for s in checked.scores}
    assert truth[10] < truth[0] and scores[10].score > scores[0].score + checked.rule.margin
    assert alone.step == 10 and not alone.reference  # by CTE alone the worse one wins
    assert checked.step == 0 and checked.reason.startswith(NO_GAIN)
    assert "agree less with the other 5 models of the bank" in checked.reason
    assert len(checked.reference) == 5 and scores[10].agreement < scores[0].agreement

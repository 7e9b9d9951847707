"""Label-free guards: leave-one-out consensus, flags and their place in the ranking."""

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import measure

from cte_kit import CTEKitWarning
from cte_kit.cli import main
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.teaching.demo import demo_checkpoint
from cte_kit.estimators.guards import (GuardConfig, bank_verdict, compute_guards, foreground_agreement, image_flags,
                                      image_statistics, leave_one_out_consensus)
from cte_kit.models.unet import UNetModel, load_checkpoint, save_checkpoint
from cte_kit.perturb import parse_perturbation
from cte_kit.evaluation.sweep import read_results, run_sweep, sweep_guards
from cte_kit.evaluation.summary import summarize_results


def test_leave_one_out_consensus_never_counts_the_model_itself():
    masks = np.zeros((4, 1, 3), bool)
    masks[0, 0] = [True, True, False]
    masks[1, 0] = [True, False, False]
    masks[2, 0] = [True, False, True]
    masks[3, 0] = [False, True, True]
    consensus = leave_one_out_consensus(masks)
    # by hand: pixel 0 has votes (_,1,1,0) for model 0 -> 2 of 3 others: foreground
    assert consensus[:, 0, 0].tolist() == [True, True, True, True]
    # pixel 1: models 0 and 3 vote; for model 0 the others give 1 of 3 -> background,
    # for model 1 the others give 2 of 3 -> foreground
    assert consensus[:, 0, 1].tolist() == [False, True, True, False]
    # pixel 2: models 2 and 3; each of them sees only 1 other vote of 3
    assert consensus[:, 0, 2].tolist() == [True, True, False, False]
    # a model alone against the rest never makes its own majority
    lone = np.zeros((3, 2, 2), bool)
    lone[0] = True
    assert not leave_one_out_consensus(lone)[0].any()
    with pytest.raises(ValueError, match="n_models >= 3"):
        leave_one_out_consensus(np.zeros((2, 4, 4), bool))
    with pytest.raises(TypeError, match="boolean"):
        leave_one_out_consensus(np.zeros((3, 4, 4)))


def test_image_statistics_and_agreement_by_hand():
    labels = np.zeros((4, 5), np.int32)
    labels[0, :2] = 1
    labels[2:, 2:] = 7
    stats = image_statistics(labels > 0, labels)
    assert stats.foreground_fraction == pytest.approx(8 / 20)
    assert stats.n_objects == 2 and stats.median_object_size == 4.0
    assert stats.typical_object_size == 6.0  # 8 foreground pixels: the median one lies in the object of 6
    assert stats.size_spread == 3.0  # pixels 2 and 6 of 8 (the quartiles) lie in the objects of 2 and 6
    assert foreground_agreement(labels > 0, labels == 7) == pytest.approx(6 / 8)
    assert foreground_agreement(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    assert np.isnan(image_statistics(np.zeros((2, 2), bool), np.zeros((2, 2), int)).median_object_size)


def test_size_spread_is_the_ratio_of_the_area_weighted_quartiles():
    """Against numpy: the areas of the objects of the foreground pixels, their quantiles (inverted CDF)."""
    rng = np.random.default_rng(3)
    labels = np.zeros((60, 80), np.int32)
    for index in range(1, 13):  # rectangles of random sizes, some overwriting others
        y, x, h, w = rng.integers(0, 50), rng.integers(0, 70), rng.integers(1, 20), rng.integers(1, 20)
        labels[y : y + h, x : x + w] = index
    areas = np.bincount(labels.ravel())[labels[labels > 0]]
    quartile = lambda q: np.quantile(areas, q, method="inverted_cdf")  # noqa: E731
    stats = image_statistics(labels > 0, labels)
    assert stats.size_spread == pytest.approx(quartile(0.75) / quartile(0.25))
    assert stats.typical_object_size == quartile(0.5)
    assert np.isnan(image_statistics(np.zeros((3, 3), bool), np.zeros((3, 3), int)).size_spread)


def _discs(shape=(64, 64), centres=((16, 16), (40, 44), (16, 48))):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = index
    return labels


def test_flags_floods_empty_and_oversplit_with_reasons():
    truth = _discs()
    good = [(truth > 0, truth)] * 3
    flooding = np.ones_like(truth, bool)
    over_split = np.arange(truth.size, dtype=np.int32).reshape(truth.shape) * (truth > 0)
    predictions = {"good_a": good[0], "good_b": good[1], "good_c": good[2], "floods": (flooding, flooding.astype(np.int32)),
                   "nothing": (np.zeros_like(flooding), np.zeros_like(truth)), "splits": (truth > 0, over_split)}
    guards = compute_guards(list(predictions), ["a", "b"], lambda model, image: predictions[model])
    assert [g.flags for g in (guards["good_a"], guards["good_b"], guards["good_c"])] == [(), (), ()]
    assert [f.code for f in guards["floods"].flags] == ["floods", "disagrees"]
    assert guards["floods"].flags[0].reason == "predicts 100 % of the image as foreground"
    # flooding is degenerate whatever the bank says; the flooding model is left out of the consensus
    assert guards["good_a"].consensus_fraction == pytest.approx((truth > 0).mean())
    assert guards["nothing"].flags[0].code == "empty" and "100% of the images" in guards["nothing"].flags[0].reason
    assert [f.code for f in guards["splits"].flags] == ["over-splits"]
    assert guards["splits"].flags_for("hard") == () and guards["splits"].flags_for("instance")
    assert guards["good_a"].agreement_iou == 1.0 and guards["good_a"].agreement_f1 == 1.0
    assert bank_verdict(guards) is None


def test_small_bank_gets_absolute_checks_only_and_a_verdict_when_all_fail():
    truth = _discs()
    predictions = {"fine": (truth > 0, truth), "floods": (np.ones_like(truth, bool), np.ones_like(truth))}
    guards = compute_guards(list(predictions), ["a"], lambda model, image: predictions[model])
    assert guards["fine"].flags == () and np.isnan(guards["fine"].agreement_iou)
    assert [f.code for f in guards["floods"].flags] == ["floods"]
    only_bad = {name: g for name, g in guards.items() if g.flags}
    assert "none of them can be recommended" in bank_verdict(only_bad)
    with pytest.raises(ValueError, match="min_models"):
        GuardConfig(min_models=2)


@pytest.fixture(scope="module")
def inverted_checkpoint(tmp_path_factory):
    """A U-Net whose output is 1 - p of a good demo model: its head's weights and bias negated."""
    network, config, settings, history = load_checkpoint(demo_checkpoint("near_target"))
    network.head.weight.data.neg_()
    network.head.bias.data.neg_()
    return save_checkpoint(network, config, tmp_path_factory.mktemp("inverted") / "inverted.pt", settings=settings)


def test_inverted_model_is_flagged_and_not_ranked_first(tmp_path, inverted_checkpoint):
    data = generate(DEMO_TARGET, 6, shape=(96, 96), seed=11)
    good = UNetModel.from_checkpoint(demo_checkpoint("near_target"))
    inverted = UNetModel.from_checkpoint(inverted_checkpoint)
    image = data.images[0]
    assert np.allclose(inverted.predict([image])[0].probability, 1 - good.predict([image])[0].probability, atol=1e-5)
    bank = [UNetModel.from_checkpoint(demo_checkpoint(name)) for name in ("near_target", "sharp_clean", "small_nuclei")]
    bank.append(inverted)
    out = tmp_path / "rows.csv"
    run_sweep(bank, data.images, data.names, out, [parse_perturbation("gamma:0.7")], ["hard"], progress=False)
    names = [m.name for m in bank]
    rows = read_results(out)
    raw = summarize_results(rows, models=names, n_boot=0)[0]
    guarded = summarize_results(rows, models=names, n_boot=50, guards=sweep_guards(out, names, data.names))[0]
    by_name = {m["name"]: m for m in guarded["models"]}
    assert by_name["inverted"]["flags"] and by_name["inverted"]["rank"] == len(names)
    assert "of the image as foreground" in by_name["inverted"]["flags"][0]["reason"]
    assert guarded["recommended"] != "inverted" and guarded["verdict"] is None
    # the raw ranking would have put the stable inverted model at least as high as the guarded one
    assert {m["name"]: m["rank_cte"] for m in raw["models"]}["inverted"] <= by_name["inverted"]["rank_cte"]


def test_guards_read_no_labels(tmp_path):
    data = generate(DEMO_TARGET, 3, shape=(64, 64), seed=5)
    bank = [UNetModel.from_checkpoint(demo_checkpoint(name)) for name in ("near_target", "very_noisy", "small_nuclei")]
    names = [m.name for m in bank]
    guards = {}
    for with_labels in (False, True):
        out = tmp_path / f"{with_labels}.csv"
        run_sweep(bank, data.images, data.names, out, [parse_perturbation("noise:0.05")], ["hard"],
                  labels=data.labels if with_labels else None, progress=False)
        guards[with_labels] = sweep_guards(out, names, data.names)
    assert guards[False] == guards[True]


def test_flag_and_reason_in_cli_table_and_summary_json(tmp_path, inverted_checkpoint, capsys):
    data = generate(DEMO_TARGET, 4, shape=(96, 96), seed=3)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, image, label in zip(data.names, data.images, data.labels):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", label)
    lines = ["models:"]
    for name in ("near_target", "sharp_clean", "small_nuclei"):
        lines += [f"  - name: {name}", "    kind: unet", f"    pretrained: demo/{name}"]
    lines += ["  - name: inverted", "    kind: unet", f"    path: {inverted_checkpoint}"]
    (tmp_path / "bank.yaml").write_text("\n".join(lines) + "\n")
    argv = ["rank", "--bank", str(tmp_path / "bank.yaml"), "--images", str(tmp_path / "images"), "--labels",
            str(tmp_path / "labels"), "--perturbation", "gamma:0.7", "--out", str(tmp_path / "rows.csv"),
            "--summary", str(tmp_path / "summary.json"), "--no-progress"]
    with pytest.warns(CTEKitWarning, match="inverted predicts"):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "! inverted" in printed and "flagged by the label-free guards" in printed
    document = json.loads((tmp_path / "summary.json").read_text())
    flags = {m["name"]: m["flags"] for m in document["models"]}
    assert flags["near_target"] == [] and flags["inverted"][0]["code"] == "floods"
    assert flags["inverted"][0]["reason"].startswith("predicts")
    assert document["recommended"] != "inverted"
    assert main(argv + ["--no-guards"]) == 0
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert all(m["flags"] == [] for m in raw["models"]) and raw["guards"] is False


def test_guarded_order_puts_flagged_models_last_in_their_own_order():
    from cte_kit.estimators.guards import guarded_order
    from cte_kit.scoring.ranking import rank_scores

    order = guarded_order([0.9, 0.99, 0.5, np.nan, 0.7], [False, True, False, False, True])
    assert rank_scores(order).tolist() == [1.0, 3.0, 2.0, 5.0, 4.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        guarded_order([1.5, 0.2], [False, False])
    with pytest.raises(ValueError, match="flags"):
        guarded_order([0.5], [False, True])


def _fraction_mask(fraction, shape=(20, 50)):
    """A foreground of ``fraction`` of the image, as objects of 10 pixels."""
    mask = np.zeros(shape, bool)
    mask.flat[: int(round(fraction * mask.size))] = True
    return mask, (np.arange(mask.size).reshape(shape) // 10 + 1) * mask


def test_foreground_outliers_judged_on_odds_on_dense_targets():
    # dense target: the bank predicts 35 %; 75 % is 2.1 times that (a plain ratio would let it pass) but its
    # odds are 5.5 times the bank's; 45 % is a normal spread
    predictions = {"a": _fraction_mask(0.35), "b": _fraction_mask(0.35), "c": _fraction_mask(0.36),
                   "near": _fraction_mask(0.45), "floods": _fraction_mask(0.75), "sparse": _fraction_mask(0.08)}
    guards = compute_guards(list(predictions), ["x"], lambda model, image: predictions[model])
    codes = {name: [f.code for f in g.flags if f.scope == "all"] for name, g in guards.items()}
    assert codes["near"] == [] and codes["a"] == []
    assert "floods" in codes["floods"] and "empty" in codes["sparse"]
    assert "75 % of the image as foreground where the bank predicts 36 %" in guards["floods"].flags[0].reason


def test_a_bank_that_fails_the_same_way_gets_no_recommendation():
    # fluorescence models on an H&E image: ~70 % foreground (the bright background), one big region with holes
    background = np.ones((40, 40), bool)
    background[5:25, 5:29] = False  # the nuclei: 30 % of the image
    predictions = {f"m{i}": (background, background.astype(np.int32)) for i in range(4)}
    guards = compute_guards(list(predictions), ["a", "b"], lambda model, image: predictions[model])
    assert all([f.code for f in g.flags] == ["one-region"] for g in guards.values())
    assert "marks 70 % of the image as foreground, mostly as one region covering 70 % of it" in guards["m0"].flags[0].reason
    assert "none of them can be recommended" in bank_verdict(guards, "hard")
    # the one model that segments the nuclei is not outvoted by the failing majority; alone, with no
    # consensus to check it, it is named but not recommended
    nuclei = ~background
    predictions["works"] = (nuclei, nuclei.astype(np.int32))
    guards = compute_guards(list(predictions), ["a", "b"], lambda model, image: predictions[model])
    assert guards["works"].flags == () and bank_verdict(guards, "hard").startswith("only works passes the guards")
    # a membrane map is one connected mesh but only a fifth of the image: not degenerate
    mesh = np.zeros((60, 60), bool)
    mesh[::6] = mesh[:, ::6] = True
    mesh = mesh | np.roll(mesh, 1, axis=0)
    membranes = {f"m{i}": (mesh, mesh.astype(np.int32)) for i in range(3)}
    guards = compute_guards(list(membranes), ["a"], lambda model, image: membranes[model])
    assert all(g.flags == () for g in guards.values()) and guards["m0"].largest_object_fraction > 0.25


def _sparse_objects(seed, fraction, shape=(256, 256), radius=2):
    """Hundreds of small discs (mitochondria in EM) covering about ``fraction`` of the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    disc = np.pi * radius ** 2
    for index in range(1, int(fraction * labels.size / disc) + 1):
        cy, cx = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = index
    return labels > 0, labels


@pytest.mark.parametrize("bank_size", [1, 2, 3])
def test_a_model_empty_on_most_images_is_flagged_in_a_bank_of_any_size(bank_size):
    truth = _discs()
    nothing = (np.zeros_like(truth, bool), np.zeros_like(truth))
    # empty on 3 of 4 images (a threshold of 0.99999 keeps one object on one image)
    almost_empty = {"a": nothing, "b": nothing, "c": nothing, "d": (truth == 1, (truth == 1).astype(np.int32))}
    predictions = {f"empty{i}": almost_empty for i in range(bank_size)}
    if bank_size == 2:
        predictions = {"empty0": almost_empty, "good": {image: (truth > 0, truth) for image in "abcd"}}
    guards = compute_guards(list(predictions), list("abcd"), lambda model, image: predictions[model][image])
    for name, found in guards.items():
        if name.startswith("empty"):
            assert [f.code for f in found.flags] == ["empty"], name
            assert found.flags[0].reason == "predicts no foreground on 75% of the images"
            assert found.empty_images == 0.75
        else:
            assert found.flags == () and found.empty_images == 0.0
    flagged = {name: g for name, g in guards.items() if g.flags}
    assert "none of them can be recommended" in bank_verdict(flagged)
    # the threshold is data: a share the user sets
    relaxed = compute_guards(list(predictions), list("abcd"), lambda model, image: predictions[model][image],
                             GuardConfig(absolute_empty_share=0.8))
    assert all(not g.flags for g in relaxed.values())


def test_sparse_mitochondria_are_never_called_empty():
    # 3-10 % foreground in hundreds of small objects, and one section without any: a correct EM model
    sections = {f"s{i}": _sparse_objects(i, fraction) for i, fraction in enumerate((0.03, 0.05, 0.1, 0.04))}
    sections["blank"] = (np.zeros((256, 256), bool), np.zeros((256, 256), np.int32))
    assert all(50 <= labels.max() for mask, labels in list(sections.values())[:4])
    for bank in (["alone"], ["m0", "m1", "m2"]):
        guards = compute_guards(bank, list(sections), lambda model, image: sections[image])
        assert all(g.flags == () for g in guards.values()), {n: g.flags for n, g in guards.items()}
        assert guards[bank[0]].empty_images == pytest.approx(0.2)


def test_the_empty_model_of_a_bank_of_two_is_not_recommended():
    # CTE 1.0 for the model that predicts nothing (its one object is stable), 0.9 for the good one
    truth = _discs()
    nothing = (np.zeros_like(truth, bool), np.zeros_like(truth))
    predictions = {"empty": {"a": nothing, "b": nothing, "c": nothing, "d": (truth == 1, truth * (truth == 1))},
                   "good": {image: (truth > 0, truth) for image in "abcd"}}
    guards = compute_guards(list(predictions), list("abcd"), lambda model, image: predictions[model][image])
    rows = [{"model": model, "image": image, "perturbation": "gamma:0.7", "consistency": consistency, "seed": 0,
             "n_pert": 1, "cte": (np.nan if image != "d" else 1.0) if model == "empty" else 0.9,
             "f1": np.nan, "iou": np.nan, "map": np.nan, "ap50": np.nan}
            for model in predictions for image in "abcd" for consistency in ("hard", "instance")]
    for summary in summarize_results(rows, n_boot=0, guards=guards):
        assert summary["recommended"] == "good", summary["consistency"]
        assert summarize_results(rows, n_boot=0)[0]["recommended"] == "empty"  # CTE alone picks it


# -- the three tasks: each builds its failure modes and its correct model; only the failures are flagged --------
def _codes(guards):
    return {name: sorted({f.code for f in g.flags}) for name, g in guards.items()}


def _loader(predictions, images):
    return lambda model, image: predictions[model][images.index(image)]


def test_dense_tissue_fills_the_image_and_only_its_failures_are_flagged():
    from cte_kit.data.synthetic import DENSE_TISSUE, generate_tissue
    from cte_kit.estimators.tasks import TASKS

    tissue = generate_tissue(DENSE_TISSUE, 3, shape=(96, 96), seed=2)
    cells = [c.astype(np.int32) for c in tissue.cells]
    full = [np.ones(c.shape, bool) for c in cells]
    # a cell model, and one that splits a little differently (each cell less its wall pixels, relabelled)
    thinner = [measure.label((c > 0) & (m == 0), connectivity=1) for c, m in zip(cells, tissue.membranes)]
    predictions = {
        "cells_a": [(f, c) for f, c in zip(full, cells)], "cells_b": [(f, c) for f, c in zip(full, cells)],
        "cells_thin": [(t > 0, t) for t in thinner],
        "one_object": [(f, f.astype(np.int32)) for f in full],  # no boundaries: one object the size of the image
        "walls": [(m > 0, measure.label(m > 0)) for m in tissue.membranes],  # the membranes, not the cells
    }
    images = list(tissue.names)
    guards = compute_guards(list(predictions), images, _loader(predictions, images), TASKS["cells"].guards)
    codes = _codes(guards)
    assert codes["cells_a"] == codes["cells_b"] == codes["cells_thin"] == []
    assert guards["one_object"].flags[0].code == "one-region" and "found no boundaries" in guards["one_object"].flags[0].reason
    assert codes["one_object"] == ["merges", "one-region"]  # against the cell models, it merges them all too
    assert guards["walls"].flags[0].code == "network" and "traces boundaries (membranes)" in guards["walls"].flags[0].reason
    # the nuclei task's guards call every correct cell model degenerate: what a dense tissue needs its own task for
    nuclei = compute_guards(list(predictions), images, _loader(predictions, images), TASKS["nuclei"].guards)
    assert "floods" in _codes(nuclei)["cells_a"] and "floods" in _codes(nuclei)["cells_b"]


def test_mitochondria_few_right_models_are_not_outvoted_by_a_wrong_majority():
    from cte_kit.data.synthetic import EM_SSTEM, generate_tissue
    from cte_kit.estimators.guards import bank_disagreement
    from cte_kit.estimators.tasks import TASKS

    em = generate_tissue(EM_SSTEM, 3, shape=(128, 128), seed=5)
    mito = [m.astype(np.int32) for m in em.mitochondria]
    assert all(0.02 < (m > 0).mean() < 0.12 for m in mito)  # sparse small objects, as the task expects
    # a mitochondria model that misses a rim of every object: still right, a little different
    eroded = [measure.label(ndi.binary_erosion(m > 0)) for m in mito]
    yy, xx = np.mgrid[:128, :128]
    blobs = ((yy % 64 - 32) ** 2 + (xx % 64 - 32) ** 2) < 26 ** 2  # nuclei-sized blobs over half the section
    predictions = {"mito_a": [(m > 0, m) for m in mito], "mito_b": [(e > 0, e) for e in eroded]}
    for index in range(3):  # the wrong majority: three membrane models (the ISBI membranes of the same sections)
        predictions[f"membrane_{index}"] = [(w > 0, measure.label(w > 0)) for w in em.membranes]
    predictions["nuclei"] = [(blobs, measure.label(blobs))] * 3
    images = list(em.names)
    guards = compute_guards(list(predictions), images, _loader(predictions, images), TASKS["mitochondria"].guards)
    codes = _codes(guards)
    assert codes["mito_a"] == codes["mito_b"] == []
    assert all(codes[f"membrane_{i}"] == ["network"] for i in range(3))
    assert codes["nuclei"] and set(codes["nuclei"]) <= {"floods", "implausible"}
    note = bank_disagreement(guards, "hard", TASKS["mitochondria"].guards)
    assert "the bank disagrees with itself: 4 of 6 models are flagged (network 3," in note
    assert "the ranking rests on the other 2 (mito_a, mito_b)" in note and "fewer than the 3 a consensus needs" in note
    assert bank_verdict(guards, "hard") is None
    # the nuclei task's guards (the kit before tasks) take the membranes' majority for the truth
    nuclei = compute_guards(list(predictions), images, _loader(predictions, images), TASKS["nuclei"].guards)
    assert "disagrees" in _codes(nuclei)["mito_a"] and _codes(nuclei)["membrane_0"] == []


def test_nuclei_guards_are_unchanged_by_the_tasks():
    from cte_kit.estimators.tasks import TASKS

    assert TASKS["nuclei"].guards == GuardConfig()
    truth = _discs()
    predictions = {"a": (truth > 0, truth), "b": (truth > 0, truth), "c": (truth > 0, truth),
                   "floods": (np.ones_like(truth, bool), np.ones_like(truth))}
    guards = compute_guards(list(predictions), ["x"], lambda model, image: predictions[model], TASKS["nuclei"].guards)
    assert _codes(guards) == {"a": [], "b": [], "c": [], "floods": ["disagrees", "floods"]}


def test_specks_are_not_mitochondria():
    from cte_kit.estimators.tasks import TASKS

    mito = {image: _sparse_objects(seed, 0.05, radius=9) for seed, image in enumerate("abc")}  # areas ~250 px
    specks = {image: _sparse_objects(10 + seed, 0.05, radius=2) for seed, image in enumerate("abc")}  # ~13 px
    predictions = {"mito": mito, "specks": specks}
    guards = compute_guards(list(predictions), list("abc"), lambda model, image: predictions[model][image],
                            TASKS["mitochondria"].guards)
    assert guards["mito"].flags == ()
    assert [f.code for f in guards["specks"].flags] == ["implausible"]
    assert "finds objects of typical area 13 px" in guards["specks"].flags[0].reason
    assert "where this task's objects measure 200 px or more" in guards["specks"].flags[0].reason


def test_a_few_specks_beside_the_objects_are_not_a_speck_model():
    """Objects of ~250 px and twice as many 1-3 px specks: the plain median object area is a speck's,
    but nearly all the foreground lies in objects (hand-computed below)."""
    from cte_kit.estimators.tasks import TASKS

    predictions = {}
    for seed, image in enumerate("abc"):
        foreground, labels = _sparse_objects(seed, 0.05, radius=9)
        rng = np.random.default_rng(20 + seed)
        background = np.flatnonzero(~ndi.binary_dilation(foreground, iterations=2))
        specks = rng.choice(background, 2 * labels.max(), replace=False)
        labels.flat[specks] = labels.max() + 1 + np.arange(specks.size)
        sizes = np.bincount(labels.ravel())[1:]
        assert np.median(sizes[sizes > 0]) == 1  # the plain median sees only the specks
        predictions[image] = (labels > 0, labels)
    guards = compute_guards(["mito"], list("abc"), lambda model, image: predictions[image], TASKS["mitochondria"].guards)
    assert guards["mito"].typical_object_size > 200 and guards["mito"].object_size == 1
    assert guards["mito"].flags == ()


def test_a_model_too_unstable_to_follow_is_not_recommended():
    truth = _discs()
    predictions = {name: (truth > 0, truth) for name in ("steady", "shaky")}
    guards = compute_guards(list(predictions), ["a"], lambda model, image: predictions[model])
    rows = [{"model": model, "image": "a", "perturbation": "gamma:0.7", "consistency": "hard", "seed": 0, "n_pert": 1,
             "cte": cte, "f1": np.nan, "iou": np.nan, "map": np.nan, "ap50": np.nan}
            for model, cte in (("steady", 0.45), ("shaky", 0.3))]
    guarded = summarize_results(rows, n_boot=0, guards=guards)[0]
    assert guarded["recommended"] is None
    assert "steady, keeps only 0.45 of its prediction under gamma:0.7 (hard consistency), less than the 0.5" \
        in guarded["verdict"]
    assert summarize_results(rows, n_boot=0)[0]["recommended"] == "steady"  # CTE alone still names one
    rows[0]["cte"] = 0.55
    assert summarize_results(rows, n_boot=0, guards=guards)[0]["recommended"] == "steady"


def _touching_discs(radius, rng, shape=(240, 240)):
    """Discs of ``radius`` +- 10 % on a grid, in 3 x 3 clusters of touching discs (left half of the image)
    and alone (right half): (instances, the connected components a model that merges touching objects finds)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    index = 0
    step, gap = int(1.8 * radius), 4 * radius  # neighbours in a cluster overlap a little: they touch
    for y0 in range(radius + 2, shape[0] - 5 * radius, 3 * step + gap):
        for x0 in range(radius + 2, shape[1] // 2 - 5 * radius, 3 * step + gap):  # clusters: discs touch
            for dy in range(3):
                for dx in range(3):
                    index += 1
                    r = radius * rng.uniform(0.9, 1.0)
                    labels[(yy - y0 - dy * step) ** 2 + (xx - x0 - dx * step) ** 2 <= r ** 2] = index
    for y0 in range(radius + 2, shape[0] - radius, gap):
        for x0 in range(shape[1] // 2 + radius, shape[1] - radius, gap):  # alone
            index += 1
            r = radius * rng.uniform(0.9, 1.1)
            labels[(yy - y0) ** 2 + (xx - x0) ** 2 <= r ** 2] = index
    return labels, measure.label(labels > 0, connectivity=1)


@pytest.mark.parametrize("task, radius", [("nuclei", 6), ("cells", 10), ("mitochondria", 9)])
def test_a_model_that_merges_touching_objects_is_flagged_for_instances(task, radius):
    """A model that finds each object and one that merges the touching ones into clumps: the same foreground,
    so only the instance ranking must not trust the second; no bank is needed to see it. The mitochondria task
    ranks the foreground and leaves the check out (EM profiles of one section differ in size more than nuclei)."""
    from cte_kit.estimators.tasks import TASKS

    rng = np.random.default_rng(7)
    pairs = [_touching_discs(radius, rng) for _ in range(3)]
    assert all(clumps.max() < labels.max() for labels, clumps in pairs)
    predictions = {"objects": [(labels > 0, labels) for labels, _ in pairs],
                   "clumps": [(clumps > 0, clumps) for _, clumps in pairs]}
    for name in predictions:  # each alone: the check needs no bank
        guards = compute_guards([name], list("abc"), _loader(predictions, list("abc")), TASKS[task].guards)[name]
        if name == "objects":
            assert guards.flags == () and guards.size_spread < 1.5
        elif task == "mitochondria":
            assert guards.flags == () and guards.size_spread > 5
        else:
            assert [f.code for f in guards.flags] == ["clumps"] and guards.size_spread > 5
            assert guards.flags_for("hard") == () and guards.flags_for("instance") == guards.flags
            assert "it merges touching objects into clumps" in guards.flags[0].reason
            assert guards.plausible  # its foreground still votes in the consensus
            labels, clumps = pairs[0]  # and the per-image quality control (cte-kit qc) says it of one image
            own = image_statistics(clumps > 0, clumps)
            assert [f.code for f in image_flags(own, config=TASKS[task].guards)] == ["clumps"]
            assert image_flags(image_statistics(labels > 0, labels), config=TASKS[task].guards) == ()


def test_dense_tissue_with_merged_neighbours_is_flagged_and_the_cells_are_not():
    from cte_kit.data.synthetic import DENSE_TISSUE, generate_tissue
    from cte_kit.estimators.tasks import TASKS

    tissue = generate_tissue(DENSE_TISSUE, 3, shape=(192, 192), seed=4)
    cells = [c.astype(np.int32) for c in tissue.cells]
    clumped = []
    for c in cells:  # in the left half, the cells whose centres share a 64 px block become one clump
        centres = ndi.center_of_mass(np.ones_like(c), c, np.arange(1, c.max() + 1))
        block = np.arange(c.max() + 1)
        for index, (cy, cx) in enumerate(centres, start=1):
            if cx < 96:
                block[index] = c.max() + 1 + int(cy // 64) * 2 + int(cx // 64)
        clumped.append(measure.label(block[c], connectivity=1))
    predictions = {"cells": [(c > 0, c) for c in cells], "clumps": [(c > 0, c) for c in clumped],
                   "cells_again": [(c > 0, c) for c in cells]}
    images = list(tissue.names)
    guards = compute_guards(list(predictions), images, _loader(predictions, images), TASKS["cells"].guards)
    assert _codes(guards) == {"cells": [], "clumps": ["clumps"], "cells_again": []}


def test_a_lone_model_no_consensus_checked_is_not_recommended():
    truth = _discs()
    flooding = (np.ones_like(truth, bool), np.ones_like(truth))
    predictions = {"lone": (truth > 0, truth), **{f"floods{i}": flooding for i in range(3)}}
    guards = compute_guards(list(predictions), ["a"], lambda model, image: predictions[model])
    assert [name for name, g in guards.items() if g.plausible] == ["lone"]
    verdict = bank_verdict(guards, "hard")
    assert verdict.startswith("only lone passes the guards") and "none can be recommended" in verdict
    rows = [{"model": model, "image": "a", "perturbation": "gamma:0.7", "consistency": "hard", "seed": 0, "n_pert": 1,
             "cte": 0.9, "f1": np.nan, "iou": np.nan, "map": np.nan, "ap50": np.nan} for model in predictions]
    summary = summarize_results(rows, n_boot=0, guards=guards)[0]
    assert summary["recommended"] is None and summary["verdict"] == verdict
    # two survivors: CTE chooses between them; a bank too small for a consensus keeps its one model
    predictions["second"] = (truth > 0, truth)
    rows.append({**rows[0], "model": "second", "cte": 0.95})
    guards = compute_guards(list(predictions), ["a"], lambda model, image: predictions[model])
    assert bank_verdict(guards, "hard") is None
    assert summarize_results(rows, n_boot=0, guards=guards)[0]["recommended"] == "second"
    small = {name: predictions[name] for name in ("lone", "floods0")}
    assert bank_verdict(compute_guards(list(small), ["a"], lambda model, image: small[model]), "hard") is None


def test_a_bank_split_into_camps_has_no_foreground_consensus_to_flag_either_camp():
    """Dense tissue ranked by two cell models (all foreground, right) and two models of cells on a background
    (6 % and 28 %, wrong): the median, 64 %, is nobody's answer; before, both camps were flagged against it
    ('floods' and 'empty') and no model could be recommended. A clear majority still flags its outlier."""
    from cte_kit.data.synthetic import DENSE_TISSUE, generate_tissue
    from cte_kit.estimators.tasks import TASKS

    tissue = generate_tissue(DENSE_TISSUE, 2, shape=(96, 96), seed=2)
    cells = [c.astype(np.int32) for c in tissue.cells]
    sparse = {f: [_sparse_objects(seed, f, shape=(96, 96), radius=3) for seed in range(2)] for f in (0.06, 0.3)}
    predictions = {"tissue_a": [(c > 0, c) for c in cells], "tissue_b": [(c > 0, c) for c in cells],
                   "sparse_6": sparse[0.06], "sparse_28": sparse[0.3]}
    assert [np.mean([m.mean() for m, _ in predictions[n]]) > 0.2 for n in ("sparse_6", "sparse_28")] == [False, True]
    images = list(tissue.names)
    config = TASKS["cells"].guards
    guards = compute_guards(list(predictions), images, _loader(predictions, images), config)
    assert all(g.plausible for g in guards.values())
    assert _codes(guards) == {name: [] for name in predictions}
    assert np.isnan(guards["tissue_a"].consensus_fraction)
    # three tissue models against one sparse model: a majority, whose outlier is flagged
    predictions["tissue_c"] = predictions["tissue_a"]
    del predictions["sparse_28"]
    guards = compute_guards(list(predictions), images, _loader(predictions, images), config)
    assert guards["tissue_a"].consensus_fraction == pytest.approx(1.0)
    assert "empty" in _codes(guards)["sparse_6"] and _codes(guards)["tissue_a"] == []

import csv
import json

import numpy as np
import pytest
import tifffile

from cte_kit.cli import main
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.runs.sweep import RESULT_COLUMNS, read_results


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A small labelled target folder pair from the synthetic target domain."""
    root = tmp_path_factory.mktemp("target")
    data = generate(DEMO_TARGET, 5, shape=(96, 96), seed=3)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for name, image, label in zip(data.names, data.images, data.labels):
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
        tifffile.imwrite(root / "labels" / f"{name}.tif", label)
    return root


def _bank(path, names=("near_target", "sharp_clean", "very_noisy"), extra=""):
    lines = ["models:"]
    for name in names:
        lines += [f"  - name: {name}", "    kind: unet", f"    pretrained: demo/{name}"]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_rank_writes_rows_summary_and_resumes(tmp_path, target, capsys):
    bank = _bank(tmp_path / "bank.yaml")
    out, summary = tmp_path / "results.csv", tmp_path / "summary.json"
    argv = ["rank", "--bank", str(bank), "--images", str(target / "images"), "--labels", str(target / "labels"),
            "--perturbation", "dropout:0.2", "--consistency", "hard", "--consistency", "instance",
            "--out", str(out), "--summary", str(summary), "--plot", str(tmp_path / "scatter.png"), "--no-progress"]
    assert main(argv) == 0
    rows = read_results(out)
    assert len(rows) == 3 * 5 * 2
    document = json.loads(summary.read_text())
    assert {m["name"] for m in document["models"]} == {"near_target", "sharp_clean", "very_noisy"}
    assert all({"cte", "performance", "rank_cte"} <= set(m) for m in document["models"])
    assert -1 <= document["kendall"] <= 1 and "spearman" in document and "pearson" in document
    assert (tmp_path / "scatter.png").stat().st_size > 1000
    first = {(r["model"], r["image"], r["consistency"]): r["cte"] for r in rows}

    # crash simulation: keep the header, 7 rows and half of the 8th row
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:8]) + lines[8][: len(lines[8]) // 2])
    capsys.readouterr()
    assert main(argv) == 0
    assert "Resumed: 7 rows" in capsys.readouterr().out
    resumed = read_results(out)
    assert len(resumed) == 30
    assert {(r["model"], r["image"], r["consistency"]): r["cte"] for r in resumed} == pytest.approx(first)

    # a complete file: nothing recomputed
    assert main(argv) == 0
    assert len(read_results(out)) == 30


def test_rank_defaults_pair_each_consistency_with_its_perturbation(tmp_path, target):
    from cte_kit.scoring.consistency import DEFAULT_STATISTIC
    from cte_kit.estimators.cte import DEFAULT_PERTURBATIONS

    bank = _bank(tmp_path / "bank.yaml", names=("near_target", "sharp_clean"))
    out, summary = tmp_path / "r.csv", tmp_path / "s.json"
    assert main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--labels", str(target / "labels"),
                 "--consistency", "hard", "--consistency", "instance", "--out", str(out), "--summary", str(summary),
                 "--no-progress"]) == 0
    pairs = {(r["perturbation"], r["consistency"]) for r in read_results(out)}
    assert pairs == {(DEFAULT_PERTURBATIONS["hard"], "hard"), (DEFAULT_PERTURBATIONS["instance"], "instance")}
    assert len(read_results(out)) == 2 * 5 * 2
    settings = json.loads(summary.read_text())["settings"]
    assert {(s["perturbation"], s["consistency"], s["statistic"]) for s in settings} == {
        (DEFAULT_PERTURBATIONS["hard"], "hard", DEFAULT_STATISTIC), (DEFAULT_PERTURBATIONS["instance"], "instance", DEFAULT_STATISTIC)}
    # the per-model score is the mean over images of the rows written
    rows = [r for r in read_results(out) if r["consistency"] == "hard" and r["model"] == "near_target"]
    hard = next(s for s in settings if s["consistency"] == "hard")
    assert next(m["cte"] for m in hard["models"] if m["name"] == "near_target") == pytest.approx(
        np.mean([r["cte"] for r in rows]))


def test_rank_without_labels_reports_cte_only(tmp_path, target):
    bank = _bank(tmp_path / "bank.yaml", names=("near_target", "large_nuclei"))
    summary = tmp_path / "s.json"
    code = main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--perturbation", "noise:0.05",
                 "--consistency", "soft", "--out", str(tmp_path / "r.csv"), "--summary", str(summary), "--no-progress"])
    assert code == 0
    document = json.loads(summary.read_text())
    assert "kendall" not in document and all("performance" not in m for m in document["models"])
    with open(tmp_path / "r.csv") as handle:
        assert tuple(next(csv.reader(handle))) == RESULT_COLUMNS


def test_failing_model_is_reported_and_others_kept(tmp_path, target, capsys):
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",),
                 extra="  - name: broken\n    kind: unet\n    path: missing.pt\n")
    out = tmp_path / "r.csv"
    with pytest.warns(UserWarning, match="broken"):
        code = main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--out", str(out), "--no-progress"])
    assert code == 1
    assert "FAILED broken" in capsys.readouterr().err
    assert {r["model"] for r in read_results(out)} == {"near_target"}


def _run_rank_on(tmp_path, images_dir, labels_dir=None):
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",))
    argv = ["rank", "--bank", str(bank), "--images", str(images_dir), "--out", str(tmp_path / "r.csv"), "--no-progress"]
    if labels_dir is not None:
        argv += ["--labels", str(labels_dir)]
    return main(argv)


def test_bad_inputs_give_clear_errors(tmp_path, target, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run_rank_on(tmp_path, empty) == 2
    assert "error" in capsys.readouterr().err.lower()

    labels = tmp_path / "labels_mismatch"
    labels.mkdir()
    tifffile.imwrite(labels / "other_stem.tif", np.zeros((96, 96), np.uint16))
    assert _run_rank_on(tmp_path, target / "images", labels) == 2
    assert "stem" in capsys.readouterr().err.lower()

    for name, array, message in [("nan", np.full((64, 64), np.nan, np.float32), "nan"),
                                 ("stack", np.zeros((3, 40, 64, 64), np.uint16), "2d")]:
        folder = tmp_path / name
        folder.mkdir()
        tifffile.imwrite(folder / f"{name}.tif", array)
        assert _run_rank_on(tmp_path, folder) == 2, name
        assert message in capsys.readouterr().err.lower(), name

    # colour images are valid input, but not for a grey model: that model fails with advice
    folder = tmp_path / "rgb"
    folder.mkdir()
    tifffile.imwrite(folder / "rgb.tif", np.zeros((64, 64, 3), np.uint8))
    with pytest.warns(UserWarning, match="grey image"):
        assert _run_rank_on(tmp_path, folder) == 1
    assert "rgb: grey" in capsys.readouterr().err


def test_warnings_are_printed_as_sentences(tmp_path, target, capsys, warnings_shown):
    import shutil
    import warnings

    labels = tmp_path / "labels"
    shutil.copytree(target / "labels", labels)
    tifffile.imwrite(labels / "orphan.tif", np.zeros((8, 8), np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        before = warnings.showwarning
        assert _run_rank_on(tmp_path, target / "images", labels) == 0
        err = capsys.readouterr().err
        assert "Warning: 1 label file(s) in" in err and "orphan." in err
        assert ".py:" not in err and "UserWarning" not in err
        # main() puts the caller's warning display back when it returns (whatever another package,
        # such as StarDist on import, made of Python's format before)
        assert warnings.showwarning is before


def test_missing_bank_and_bad_perturbation(tmp_path, target, capsys):
    assert main(["rank", "--bank", str(tmp_path / "nope.yaml"), "--images", str(target / "images"),
                 "--out", str(tmp_path / "r.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",))
    assert main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--perturbation", "blur:2",
                 "--out", str(tmp_path / "r.csv")]) == 2
    assert "unknown input perturbation" in capsys.readouterr().err


def test_train_then_rank(tmp_path, target):
    model = tmp_path / "m.pt"
    assert main(["train", "--images", str(target / "images"), "--labels", str(target / "labels"), "--task", "instance",
                 "--out", str(model), "--steps", "20", "--width", "8", "--patch-size", "64", "--batch-size", "2",
                 "--no-progress"]) == 0
    (tmp_path / "bank.yaml").write_text(f"models:\n  - name: mine\n    kind: unet\n    path: {model.name}\n")
    assert main(["rank", "--bank", str(tmp_path / "bank.yaml"), "--images", str(target / "images"),
                 "--consistency", "instance", "--out", str(tmp_path / "r.csv"), "--no-progress"]) == 0
    assert len(read_results(tmp_path / "r.csv")) == 5


def test_demo_runs_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n-images", "4", "--no-real", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Kendall tau" in printed and "near_target" in printed
    assert (tmp_path / "scatter_synthetic_target.png").is_file()
    document = json.loads((tmp_path / "summary_synthetic_target.json").read_text())
    assert len(document["models"]) >= 5

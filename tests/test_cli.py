import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from cte_kit.cli import main
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.evaluation.sweep import read_results
from cte_kit.runs.store import ResultStore


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
    out, summary = tmp_path / "results.sqlite", tmp_path / "summary.json"
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

    # a complete store: nothing recomputed, the same table
    capsys.readouterr()
    assert main(argv) == 0
    assert "Resumed: 30 rows" in capsys.readouterr().out
    assert {(r["model"], r["image"], r["consistency"]): r["cte"] for r in read_results(out)} == first


def test_rank_defaults_pair_each_consistency_with_its_perturbation(tmp_path, target):
    from cte_kit.scoring.consistency import DEFAULT_STATISTIC
    from cte_kit.estimators.cte import DEFAULT_PERTURBATIONS

    bank = _bank(tmp_path / "bank.yaml", names=("near_target", "sharp_clean"))
    out, summary = tmp_path / "r.sqlite", tmp_path / "s.json"
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
                 "--consistency", "soft", "--out", str(tmp_path / "r.sqlite"), "--summary", str(summary), "--no-progress",
                 "--export", str(tmp_path / "r.csv")])
    assert code == 0
    document = json.loads(summary.read_text())
    assert "kendall" not in document and all("performance" not in m for m in document["models"])
    with open(tmp_path / "r.csv") as handle:
        exported = list(csv.DictReader(handle))
    assert len(exported) == 2 * 5 and {r["estimator_key"] for r in exported} == {"noise:0.05|soft|n_pert=1"}


def test_failing_model_is_reported_and_others_kept(tmp_path, target, capsys):
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",),
                 extra="  - name: broken\n    kind: unet\n    path: missing.pt\n")
    out = tmp_path / "r.sqlite"
    with pytest.warns(UserWarning, match="broken"):
        code = main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--out", str(out), "--no-progress"])
    assert code == 1
    assert "FAILED broken" in capsys.readouterr().err
    assert {r["model"] for r in read_results(out)} == {"near_target"}


def _run_rank_on(tmp_path, images_dir, labels_dir=None):
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",))
    argv = ["rank", "--bank", str(bank), "--images", str(images_dir), "--out", str(tmp_path / "r.sqlite"), "--no-progress"]
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
    assert "FAILED near_target on rgb" in capsys.readouterr().err


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
                 "--out", str(tmp_path / "r.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",))
    assert main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--perturbation", "blur:2",
                 "--out", str(tmp_path / "r.sqlite")]) == 2
    assert "unknown input perturbation" in capsys.readouterr().err


def test_train_then_rank(tmp_path, target):
    model = tmp_path / "m.pt"
    assert main(["train", "--images", str(target / "images"), "--labels", str(target / "labels"), "--task", "instance",
                 "--out", str(model), "--steps", "20", "--width", "8", "--patch-size", "64", "--batch-size", "2",
                 "--no-progress"]) == 0
    (tmp_path / "bank.yaml").write_text(f"models:\n  - name: mine\n    kind: unet\n    path: {model.name}\n")
    assert main(["rank", "--bank", str(tmp_path / "bank.yaml"), "--images", str(target / "images"),
                 "--consistency", "instance", "--out", str(tmp_path / "r.sqlite"), "--no-progress"]) == 0
    assert len(read_results(tmp_path / "r.sqlite")) == 5


def test_demo_runs_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n-images", "4", "--no-real", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Kendall tau" in printed and "near_target" in printed
    assert (tmp_path / "scatter_synthetic_target.png").is_file()
    document = json.loads((tmp_path / "summary_synthetic_target.json").read_text())
    assert len(document["models"]) >= 5


def _count_rows(path) -> int:
    if not path.exists():
        return 0
    try:
        with ResultStore(path) as store:
            return store.count("scores")
    except Exception:  # the writer is creating the file
        return 0


def test_a_killed_rank_resumes_to_the_uninterrupted_table(tmp_path):
    # enough work that the kill lands mid-way: 3 models x 40 images, chunks of 16 images
    data = generate(DEMO_TARGET, 40, shape=(96, 96), seed=11)
    (tmp_path / "images").mkdir()
    for name, image in zip(data.names, data.images):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
    bank = _bank(tmp_path / "bank.yaml")
    command = [sys.executable, "-m", "cte_kit", "rank", "--bank", str(bank), "--images", str(tmp_path / "images"),
               "--consistency", "hard", "--consistency", "instance", "--no-progress", "--out"]
    killed = tmp_path / "killed.sqlite"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command + [str(killed)], env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _count_rows(killed) == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = _count_rows(killed)
    assert 0 < partial < 3 * 40 * 2, "the kill did not land mid-way"
    assert subprocess.run(command + [str(killed)], env=environment, capture_output=True).returncode == 0
    whole = tmp_path / "whole.sqlite"
    assert subprocess.run(command + [str(whole)], env=environment, capture_output=True).returncode == 0
    with ResultStore(killed) as resumed, ResultStore(whole) as reference:
        assert resumed.count("scores") == reference.count("scores") == 3 * 40 * 2  # nothing lost or duplicated
        assert resumed.scores() == reference.scores()  # the same keys and the same bits


def test_a_corrupt_or_foreign_store_is_bad_input_and_stays_untouched(tmp_path, target, capsys):
    bank = _bank(tmp_path / "bank.yaml", names=("near_target",))
    out = tmp_path / "r.sqlite"
    out.write_text("model,image,cte\n")  # last year's CSV under the same name
    assert main(["rank", "--bank", str(bank), "--images", str(target / "images"), "--out", str(out),
                 "--no-progress"]) == 2
    assert "not a cte_kit result store" in capsys.readouterr().err
    assert out.read_text() == "model,image,cte\n"


def test_a_bug_is_not_bad_input(tmp_path, monkeypatch, capsys):
    import cte_kit.cli as cli

    def broken(args):
        return {}["missing"]  # a KeyError from a bug

    monkeypatch.setitem(cli._COMMANDS, "datasets", broken)
    assert main(["datasets"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "internal error" in err


def _sweep_config(folder, target_yaml: str, rest: str):
    """A sweep config over two demo U-Nets and one target (``target_yaml``: its lines after ``- ``)."""
    bank = _bank(folder / "bank.yaml", names=("near_target", "sharp_clean"))
    config = folder / "sweep.yaml"
    config.write_text(f"bank: {bank.name}\ntargets:\n  - {target_yaml}\n{rest}")
    return config


def test_sweep_config_on_a_local_cluster_equals_the_serial_sweep(tmp_path, target, capsys):
    config = _sweep_config(tmp_path, f"""name: small
    images: {target / "images"}
    labels: {target / "labels"}""", """perturbations:
  - kind: gamma
    strengths: [0.5, 0.7]
  - dropout:0.2
consistencies: [hard, instance]
""")
    assert main(["sweep", str(config), "--out", str(tmp_path / "serial.sqlite"), "--no-progress",
                 "--summary", str(tmp_path / "serial.json")]) == 0
    assert main(["sweep", str(config), "--out", str(tmp_path / "dask.sqlite"), "--workers", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "dashboard http" in printed and "[small] gamma:0.5" in printed
    with ResultStore(tmp_path / "serial.sqlite") as serial, ResultStore(tmp_path / "dask.sqlite") as dask:
        assert serial.count("scores") == dask.count("scores") == 2 * 5 * 3 * 2
        pairs = [(a.image_key, a.estimator_key, b.value, a.value) for a, b in zip(serial.scores(), dask.scores())]
        assert all(a == b or abs(a - b) < 1e-6 for *_, a, b in pairs)  # a worker's 1 thread sums floats its own way
    document = json.loads((tmp_path / "serial.json").read_text())
    assert len(document["targets"][0]["settings"]) == 6 and "kendall" in document["targets"][0]["settings"][0]


def test_sweep_without_labels_ranks_and_reports_no_correlation(tmp_path, target, capsys):
    config = _sweep_config(tmp_path, f"""name: unlabelled
    images: {target / "images"}""", "perturbations: [gamma:0.7]\nconsistencies: [hard]\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "s.sqlite"), "--no-progress",
                 "--summary", str(tmp_path / "s.json")]) == 0
    assert "[unlabelled] gamma:0.7" in capsys.readouterr().out
    (setting,) = json.loads((tmp_path / "s.json").read_text())["targets"][0]["settings"]
    assert setting.get("kendall") is None and {row["name"] for row in setting["models"]} == {"near_target", "sharp_clean"}


def test_a_resumed_rank_reports_the_guards_and_exports_of_its_own_images(tmp_path, capsys):
    # every demo U-Net floods inverted fluorescence images; the same file names then hold the original
    # images under the same --out; the inverted images again must be judged from their own predictions
    data = generate(DEMO_TARGET, 4, shape=(96, 96), seed=3)
    for folder in ("original", "inverted"):
        (tmp_path / folder).mkdir()
    for name, image in zip(data.names, data.images):
        tifffile.imwrite(tmp_path / "original" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "inverted" / f"{name}.tif", (image.max() - image).astype(image.dtype))
    bank = _bank(tmp_path / "bank.yaml")

    def rank(folder):
        summary = tmp_path / f"{folder}.json"
        code = main(["rank", "--bank", str(bank), "--images", str(tmp_path / folder), "--out", str(tmp_path / "r.sqlite"),
                     "--summary", str(summary), "--export", str(tmp_path / f"{folder}.csv"), "--no-progress"])
        return code, json.loads(summary.read_text())

    code, first = rank("inverted")
    assert code == 0 and first["recommended"] is None and all(m["flags"] for m in first["models"])
    code, original = rank("original")
    assert code == 0 and original["recommended"] is not None
    capsys.readouterr()
    code, again = rank("inverted")
    assert code == 0 and "Resumed: 12 rows" in capsys.readouterr().out
    assert again["recommended"] is None and again["verdict"]
    assert [m["flags"] for m in again["models"]] == [m["flags"] for m in first["models"]]
    assert [m["guards"] for m in again["models"]] == [m["guards"] for m in first["models"]]
    with open(tmp_path / "inverted.csv") as handle:
        exported = list(csv.DictReader(handle))
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.count("scores") == 2 * 3 * 4  # both runs' rows are kept ...
    with open(tmp_path / "original.csv") as handle:
        original_keys = {row["image_key"] for row in csv.DictReader(handle)}
    # ... and the export holds this run's alone
    assert len(exported) == 3 * 4 and not {row["image_key"] for row in exported} & original_keys


# -- qc ------------------------------------------------------------------------------------------------
def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_qc_runs_on_the_embedded_default(tmp_path, capsys):
    out = tmp_path / "qc"
    assert main(["qc", "--bank", "demo", "--model", "near_target", "--images", "demo", "--n-images", "3", "--out",
                 str(out), "--worst", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Quality control of near_target on synthetic_target: 3 images" in printed
    images, objects = _csv(out / "images.csv"), _csv(out / "objects.csv")
    assert len(images) == 3 and [float(r["score"]) for r in images] == sorted(float(r["score"]) for r in images)
    assert {"image", "object", "centroid_y", "centroid_x", "area", "score"} <= set(objects[0])
    assert all(0 <= float(r["score"]) <= 1 for r in objects)
    assert (out / "report.html").is_file() and (out / "objects.parquet").is_file()
    assert len(list((out / "napari").glob("*_labels.tif"))) == 3
    # labels only judge: with them, the same scores and a judgement
    judged = tmp_path / "judged"
    assert main(["qc", "--bank", "demo", "--model", "near_target", "--images", "demo", "--n-images", "3", "--out",
                 str(judged), "--labels", "demo", "--store", str(out / "results.sqlite"), "--no-progress"]) == 0
    assert "object score AUROC" in capsys.readouterr().out
    assert _csv(judged / "images.csv") == images and _csv(judged / "objects.csv") == objects
    assert json.loads((judged / "summary.json").read_text())["judgement"]["n_images"] == 3


def test_qc_never_reads_labels_it_is_not_given(tmp_path, target, capsys):
    images = tmp_path / "t" / "images"
    images.mkdir(parents=True)
    for path in sorted((target / "images").iterdir())[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    (tmp_path / "t" / "labels").mkdir()
    for path in images.iterdir():  # labels that cannot be read
        (tmp_path / "t" / "labels" / path.name).write_bytes(b"not a tiff")
    bank = _bank(tmp_path / "bank.yaml")
    arguments = ["qc", "--bank", str(bank), "--model", "sharp_clean", "--images", str(images), "--no-progress"]
    assert main(arguments + ["--out", str(tmp_path / "a")]) == 0
    assert main(arguments + ["--out", str(tmp_path / "b"), "--labels", str(tmp_path / "t" / "labels")]) == 2
    assert "qc: error" in capsys.readouterr().err
    assert main(arguments + ["--out", str(tmp_path / "c"), "--model", "nobody"]) == 2

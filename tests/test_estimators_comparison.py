"""compare() and `cte-kit compare` on the embedded demo bank: rows, n/a reasons, resuming, source data."""

import csv
import json

import numpy as np
import pytest
import yaml

from cte_kit.cli import main
from cte_kit.data.synthetic import DEMO_SOURCES, DEMO_TARGET, generate
from cte_kit.teaching.demo import demo_bank_entries
from cte_kit.evaluation.comparison import compare
from cte_kit.estimators import parse_estimator
from cte_kit.evaluation.comparison import ROW_COLUMNS, Target
from cte_kit.models.bank import read_bank


@pytest.fixture(scope="module")
def target():
    data = generate(DEMO_TARGET, 3, shape=(64, 64), seed=9)
    return Target("synthetic", data.images, data.labels, data.names)


def test_compare_rows_and_resume(tmp_path, target, monkeypatch):
    bank = demo_bank_entries()[:4]
    comparison = compare(bank, [target], ["cte", "entropy", "agreement", "otce"], out=tmp_path, n_boot=20, progress=False)
    assert [row["estimator"] for row in comparison.rows] == ["cte", "entropy", "agreement", "otce"]
    assert all(set(ROW_COLUMNS) == set(row) for row in comparison.rows)
    cte = comparison.rows[0]
    assert cte["n_models"] == 4 and -1 <= cte["kendall"] <= 1 and cte["needs"] == "images" and cte["cost"] > 0
    otce = comparison.rows[3]
    assert otce["n_models"] == 0 and "source:" in otce["not_applicable"] and otce["needs"] == "images+labels+source"

    import cte_kit.runs.units as module

    def fail(*args, **kwargs):
        raise AssertionError("a rerun must read the cache, not score again")

    monkeypatch.setattr(module, "run_estimator", fail)
    again = compare(bank, [target], ["cte", "entropy", "agreement"], out=tmp_path, n_boot=20, progress=False)
    assert again.scores[("cte", "synthetic")] == comparison.scores[("cte", "synthetic")]


def test_otce_reads_the_source_folder_of_a_bank_entry(tmp_path, target):
    import tifffile

    entries = []
    for entry, domain in zip(demo_bank_entries()[:3], DEMO_SOURCES):
        data = generate(domain, 2, shape=(64, 64), seed=1)
        for sub in ("images", "labels"):
            (tmp_path / domain.name / sub).mkdir(parents=True)
        for image, labels, name in zip(data.images, data.labels, data.names):
            tifffile.imwrite(tmp_path / domain.name / "images" / f"{name}.tif", image)
            tifffile.imwrite(tmp_path / domain.name / "labels" / f"{name}.tif", labels.astype(np.uint16))
        entries.append({**entry.to_dict(), "source": domain.name})
    bank = tmp_path / "bank.yaml"
    bank.write_text(yaml.safe_dump({"models": entries}))
    assert read_bank(bank)[0].source == str((tmp_path / DEMO_SOURCES[0].name).resolve())
    estimator = parse_estimator("otce")
    small = type(estimator)(n_pixels=64, repeats=1)
    comparison = compare(bank, [target], {"otce": small}, n_boot=0, progress=False)
    assert comparison.rows[0]["n_models"] == 3


def test_parse_estimator_builds_cte_variants():
    variant = parse_estimator("cte:hard:dropout:0.1@sym1:median")
    assert (variant.consistency, variant.perturbation, variant.statistic) == ("hard", "dropout:0.1@sym1", "median")
    assert "dropout:0.1@sym1" in variant.key and "median" in variant.key
    with pytest.raises(ValueError, match="unknown estimator"):
        parse_estimator("oracle")


def test_cli_compare_on_the_demo_bank(tmp_path, capsys):
    code = main(["compare", "--bank", "demo", "--targets", "demo", "--max-images", "3", "--estimators", "cte",
                 "confidence", "agreement", "leep", "--out", str(tmp_path), "--n-boot", "10", "--no-progress"])
    assert code == 0
    with (tmp_path / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["estimator"], r["target"]) for r in rows] == [(e, "synthetic_target") for e in ("cte", "confidence", "agreement", "leep")]
    assert all(r["kendall"] not in ("", "nan") for r in rows)
    assert json.loads((tmp_path / "comparison.json").read_text())["rows"][0]["estimator"] == "cte"
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "Kendall" in capsys.readouterr().out
    assert main(["compare", "--bank", "demo", "--targets", "demo", "--estimators", "oracle", "--out", str(tmp_path)]) == 2


def test_a_model_that_cannot_load_is_a_failure_the_others_are_compared(tmp_path, capsys):
    entries = [entry.to_dict() for entry in demo_bank_entries()[:3]]
    entries.append({"name": "broken", "kind": "unet", "path": str(tmp_path / "missing.pt")})
    bank = tmp_path / "bank.yaml"
    bank.write_text(yaml.safe_dump({"models": entries}))
    code = main(["compare", "--bank", str(bank), "--targets", "demo", "--max-images", "3", "--estimators", "confidence",
                 "--out", str(tmp_path / "out"), "--n-boot", "0", "--no-progress"])
    assert code == 1
    assert "FAILED broken (load)" in capsys.readouterr().err
    with (tmp_path / "out" / "comparison.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["n_models"] == "3" and "failed" in row["not_applicable"] and "does not exist" in row["not_applicable"]

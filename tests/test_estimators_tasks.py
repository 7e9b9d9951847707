"""Task-aware defaults: one place per task, read by every client, and never assumed silently."""

import json

import numpy as np
import pytest
import tifffile

from cte_kit.cli import main
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.estimators.cte import CTE, default_perturbation, default_settings
from cte_kit.estimators.guards import GuardConfig, ModelGuards
from cte_kit.estimators.registry import estimators_for_task, parse_estimator
from cte_kit.estimators.tasks import TASKS, resolve_task, task_defaults, task_hint
from cte_kit.evaluation.config import read_sweep_config
from cte_kit.evaluation.sweep import read_results
from cte_kit.models.bank import bank_task
from cte_kit.perturb import FeatureDropout, InputPerturbation


def test_each_task_has_its_defaults_and_the_papers_setting():
    assert set(TASKS) == {"nuclei", "mitochondria", "cells"}
    assert task_defaults(None) is TASKS["nuclei"] and task_defaults(" Cells ") is TASKS["cells"]
    # seed 001: dropout 0.2 for nuclei, 0.05 for mitochondria, the median over images, no guards
    assert (TASKS["nuclei"].paper_perturbation, TASKS["nuclei"].paper_statistic) == ("dropout:0.2", "median")
    assert (TASKS["mitochondria"].paper_perturbation, TASKS["mitochondria"].paper_statistic) == ("dropout:0.05", "median")
    # hard consistency of dense tissue is 1 for every model that fills it: cells rank by instance consistency
    assert TASKS["cells"].consistencies == ("instance",) and TASKS["nuclei"].consistencies == ("hard",)
    # dense tissue is all foreground: the cells task does not call that flooding, the nuclei task does
    assert TASKS["cells"].guards.flood_fraction is None and TASKS["nuclei"].guards.flood_fraction == 0.8
    with pytest.raises(ValueError, match="unknown task 'membranes'; choose from nuclei, mitochondria, cells"):
        task_defaults("membranes")


def test_every_client_gets_the_task_defaults_through_one_function():
    cells, mito = TASKS["cells"], TASKS["mitochondria"]
    assert default_settings(task="cells") == {cells.perturbations["instance"]: ["instance"]}
    assert default_settings(["hard", "instance"]) == default_settings(["hard", "instance"], "nuclei")
    assert default_perturbation("hard", "mitochondria").label == mito.perturbations["hard"]
    estimator = CTE.for_task("hard", "mitochondria")
    assert (estimator.perturbation, estimator.statistic) == (mito.perturbations["hard"], mito.statistic)
    assert CTE.for_task("hard", "cells", statistic="median").statistic == "median"
    assert estimators_for_task("cells")["cte_instance"] == CTE.for_task("instance", "cells")
    assert parse_estimator("cte", task="mitochondria") == estimator


def test_a_task_of_other_settings_changes_what_the_estimator_computes():
    # a task is data: a changed default reaches the estimator without a branch on the task's name
    nuclei = TASKS["nuclei"]
    from dataclasses import replace

    custom = replace(nuclei, name="custom", perturbations={**nuclei.perturbations, "hard": "dropout:0.05"},
                     statistic="median")
    assert default_perturbation("hard", custom) == FeatureDropout(0.05)
    assert CTE.for_task("hard", custom).statistic == "median"
    assert default_perturbation("hard", nuclei) == InputPerturbation("gamma", 0.7)
    with pytest.raises(ValueError, match="no default perturbation"):
        replace(nuclei, perturbations={"hard": "gamma:0.7"})


def test_the_task_is_never_assumed_silently():
    assumed = resolve_task(("--task", None), ("bank.yaml", None))
    assert assumed.task.name == "nuclei" and assumed.source == "assumed"
    assert assumed.message.startswith("Task: nuclei (assumed: no task declared in --task or bank.yaml")
    assert "'mitochondria' or 'cells'" in assumed.message and "dropout:0.2, median, no guards" in assumed.message
    declared = resolve_task(("--task", None), ("bank.yaml", "mitochondria"))
    assert declared.task.name == "mitochondria" and declared.message.startswith("Task: mitochondria (declared by bank.yaml)")
    overriding = resolve_task(("--task", "cells"), ("bank.yaml", "nuclei"))
    assert "declared by --task, overriding bank.yaml's task: nuclei" in overriding.message
    assert "instance consistency under" in overriding.message
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task(("bank.yaml", "tissue"))


def _guards(fraction):
    return ModelGuards(name="m", n_images=1, foreground_fraction=fraction, consensus_fraction=fraction,
                       empty_images=0.0, objects_per_image=1, consensus_objects=1, object_size=10,
                       consensus_object_size=10, largest_object_fraction=0.1, solidity=0.9, typical_object_size=10, size_spread=1.0,
                       agreement_iou=1.0, agreement_f1=1.0, bank_agreement_iou=1.0)


def test_an_assumed_task_that_looks_wrong_says_so():
    dense = {f"m{i}": _guards(f) for i, f in enumerate((0.97, 1.0, 0.99))}
    assert "declare the task: --task cells" in task_hint(resolve_task(), dense)
    # a declared task is the user's word: no second guess; a sparse bank needs no hint
    assert task_hint(resolve_task(("--task", "nuclei")), dense) is None
    assert task_hint(resolve_task(), {f"m{i}": _guards(0.1) for i in range(3)}) is None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("target")
    data = generate(DEMO_TARGET, 3, shape=(64, 64), seed=4)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for name, image, label in zip(data.names, data.images, data.labels):
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
        tifffile.imwrite(root / "labels" / f"{name}.tif", label)
    return root


def _bank(path, task=None):
    lines = [f"task: {task}"] if task else []
    lines.append("models:")
    for name in ("near_target", "sharp_clean"):
        lines += [f"  - name: {name}", "    kind: unet", f"    pretrained: demo/{name}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rank_uses_the_declared_task_and_says_where_it_came_from(tmp_path, folder, capsys):
    def rank(bank, *extra):
        out, summary = tmp_path / f"{len(list(tmp_path.iterdir()))}.sqlite", tmp_path / "summary.json"
        assert main(["rank", "--bank", str(bank), "--images", str(folder / "images"), "--out", str(out),
                     "--summary", str(summary), "--no-progress", *extra]) == 0
        return capsys.readouterr().out, read_results(out), json.loads(summary.read_text())

    printed, rows, summary = rank(_bank(tmp_path / "plain.yaml"), "--task", "cells")
    assert "Task: cells (declared by --task)" in printed
    cells = TASKS["cells"]
    assert {(r["perturbation"], r["consistency"]) for r in rows} == {(cells.perturbations["instance"], "instance")}
    assert summary["task"]["name"] == "cells" and summary["statistic"] == cells.statistic
    declared = _bank(tmp_path / "mito.yaml", task="mitochondria")
    assert bank_task(declared) == "mitochondria"
    printed, rows, summary = rank(declared)
    assert f"Task: mitochondria (declared by {declared})" in printed
    assert {r["consistency"] for r in rows} == {"hard"} and summary["task"]["source"] == str(declared)
    printed, _, summary = rank(_bank(tmp_path / "none.yaml"))
    assert "Task: nuclei (assumed: no task declared in --task or" in printed and summary["task"]["source"] == "assumed"


def test_a_bad_task_in_the_bank_is_bad_input(tmp_path, folder, capsys):
    bank = _bank(tmp_path / "bank.yaml", task="tissue")
    assert main(["rank", "--bank", str(bank), "--images", str(folder / "images"), "--out", str(tmp_path / "r.sqlite"),
                 "--no-progress"]) == 2
    assert "unknown task 'tissue'" in capsys.readouterr().err


def test_sweep_config_takes_the_task_and_its_perturbations(tmp_path, folder):
    bank = _bank(tmp_path / "bank.yaml", task="nuclei")
    config = tmp_path / "sweep.yaml"
    config.write_text(f"bank: {bank.name}\ntask: cells\ntargets:\n  - images: {folder / 'images'}\n")
    parsed = read_sweep_config(config)
    assert parsed.task.task.name == "cells" and f"overriding {bank}'s task: nuclei" in parsed.task.message
    assert [(s.perturbation.label, s.consistencies) for s in parsed.settings] == [
        (TASKS["cells"].perturbations["instance"], ("instance",))]
    assert read_sweep_config(config, task="mitochondria").task.task.name == "mitochondria"


def test_guard_config_checks_its_ranges():
    assert "objects the size of the image" in TASKS["cells"].guards.describe()
    with pytest.raises(ValueError, match="foreground must be a range"):
        GuardConfig(foreground=(0.5, 0.1))
    with pytest.raises(ValueError, match="region_foreground"):
        GuardConfig(region_foreground=1.0)
    assert np.isclose(GuardConfig(foreground=(0, 1)).foreground[1], 1.0)

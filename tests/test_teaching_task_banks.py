"""The small banks beyond nuclei that notebook 10 ranks: shipped, declared, reproducible."""

import numpy as np
import pytest

from cte_kit.models.bank import bank_task, read_bank
from cte_kit.models.training import TrainingConfig
from cte_kit.teaching.task_banks import TASK_BANKS, build_task_bank, task_bank_dir, task_bank_entries, task_target


@pytest.mark.parametrize("task", sorted(TASK_BANKS))
def test_each_shipped_bank_declares_its_task_and_holds_its_design(task):
    folder = task_bank_dir(task)
    assert bank_task(folder / "bank.yaml") == task
    assert [e.name for e in read_bank(folder / "bank.yaml")] == [m.name for m in TASK_BANKS[task].models]
    assert [e.name for e in task_bank_entries(task)] == [m.name for m in TASK_BANKS[task].models]


def test_targets_hold_the_tasks_objects():
    em = task_target("mitochondria", 2)  # the bank's shape: a few mitochondria of 200 px and more per section
    assert all(0 < (labels > 0).mean() < 0.2 for labels in em.labels)  # sparse mitochondria
    tissue = task_target("cells", 2, shape=(64, 64))
    assert all((labels > 0).all() for labels in tissue.labels)  # dense: every pixel is a cell
    assert np.array_equal(em.images[0], task_target("mitochondria", 1).images[0])


def test_build_writes_the_declared_bank_and_resumes(tmp_path):
    quick = TrainingConfig(batch_size=2, patch_size=32)
    entries = build_task_bank("mitochondria", tmp_path, training=quick, n_images=2, scale=0.005, progress=False)
    assert bank_task(tmp_path / "bank.yaml") == "mitochondria"
    assert [e.name for e in entries] == [m.name for m in TASK_BANKS["mitochondria"].models]
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    build_task_bank("mitochondria", tmp_path, training=quick, n_images=2, scale=0.005, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == stamps  # kept, not trained again
    assert [e.name for e in task_bank_entries("mitochondria", tmp_path)] == [e.name for e in entries]

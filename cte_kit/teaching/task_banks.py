"""Small banks beyond nuclei for the course: mitochondria in EM and cells in dense tissue, on synthetic data.

A notebook cannot read the shared data (its users do not have it), so notebook 10 ranks two banks
trained by the kit on the synthetic domains of :mod:`cte_kit.data.synthetic`, each with the
failure modes users meet: models of the right task from other domains, an under-trained one, one
that segments the wrong structure (the membranes), and a nuclei model of the demo bank. Their
weights ship with the package (``cte_kit/assets/task_banks/<task>``, a few hundred kB in all);
:func:`build_task_bank` reproduces them (a few minutes on 2 cores). The banks' YAML files declare
their task, so ``cte-kit rank --bank`` uses that task's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..data.synthetic import DENSE_TISSUE, EM_FIBSEM, EM_SSTEM, SyntheticTissueDomain, generate_tissue
from ..models.bank import BankEntry, bank_task, write_bank
from ..models.training import TrainingConfig, train_unet
from ..models.unet import UNetConfig
from .demo import DemoTarget

__all__ = ["TASK_BANKS", "TaskBank", "TaskBankModel", "build_task_bank", "task_bank_dir", "task_bank_entries",
           "task_target"]


@dataclass(frozen=True)
class TaskBankModel:
    """One model of a task bank: trained on ``domain``'s ``labels`` (``'mitochondria'``, ``'membranes'`` or
    ``'cells'``) for ``steps`` steps, or borrowed from the demo bank (``pretrained``)."""

    name: str
    domain: SyntheticTissueDomain | None = None
    labels: str = "mitochondria"
    steps: int = 400
    pretrained: str | None = None

    @property
    def output(self) -> str:
        # dense cells are split along the predicted boundaries; mitochondria and membranes are semantic masks
        return "foreground+boundary" if self.labels == "cells" else "foreground"


@dataclass(frozen=True)
class TaskBank:
    """A task's bank and the unseen target domain it is ranked on."""

    task: str
    target: SyntheticTissueDomain
    models: tuple[TaskBankModel, ...]
    labels: str
    description: str
    shape: tuple[int, int] = (128, 128)  # of the training and target images
    patch_size: int = 64


#: Small networks trained briefly: the banks are for teaching, and retrain in minutes.
TASK_BANK_ARCHITECTURE = dict(levels=3, width=8)
TASK_BANK_TRAINING = TrainingConfig(batch_size=8, patch_size=96)  # the steps are each model's, the patch at most the bank's
TASK_BANK_TRAIN_IMAGES = 24

_EM_TARGET = EM_SSTEM.with_(name="em_target", cell_size=70.0, wall_contrast=-0.55, mitochondria=2.0,
                            mito_radius=(11.0, 21.0), mito_contrast=-0.45, snr=6.0, blur=1.2, gamma=1.2)
_TISSUE_TARGET = DENSE_TISSUE.with_(name="tissue_target", cell_size=26.0, snr=5.0, blur=1.4, gamma=1.2)

#: The two banks of notebook 10.
TASK_BANKS = {
    "mitochondria": TaskBank(
        "mitochondria", _EM_TARGET,
        (TaskBankModel("mito_sstem", EM_SSTEM), TaskBankModel("mito_fibsem", EM_FIBSEM),
         TaskBankModel("mito_sstem_short", EM_SSTEM, steps=40), TaskBankModel("membranes", EM_SSTEM, "membranes"),
         TaskBankModel("nuclei", pretrained="demo/near_target")),
        "mitochondria", "synthetic EM sections of an unseen modality (larger cells, fainter membranes, gamma 1.2)",
        shape=(192, 192), patch_size=96),
    "cells": TaskBank(
        "cells", _TISSUE_TARGET,
        (TaskBankModel("cells_small", DENSE_TISSUE, "cells"),
         TaskBankModel("cells_large", DENSE_TISSUE.with_(name="large_cells", cell_size=34.0, wall=2.5), "cells"),
         TaskBankModel("cells_short", DENSE_TISSUE, "cells", steps=40),
         TaskBankModel("walls", DENSE_TISSUE, "membranes"),
         TaskBankModel("nuclei", pretrained="demo/near_target")),
        "cells", "synthetic dense tissue of an unseen sample (other cell size, noisier, gamma 1.2)"),
}


def task_bank_dir(task: str) -> Path:
    """Folder of a task bank's shipped weights and its ``bank.yaml``."""
    if task not in TASK_BANKS:
        raise ValueError(f"no task bank for {task!r}; available: {', '.join(TASK_BANKS)}")
    return Path(str(resources.files("cte_kit") / "assets" / "task_banks" / task))


def task_bank_entries(task: str, folder: str | Path | None = None) -> list[BankEntry]:
    """The bank entries of a task bank (shipped, or rebuilt in ``folder``), in design order."""
    folder = Path(folder) if folder is not None else task_bank_dir(task)
    entries = []
    for model in TASK_BANKS[task].models:
        if model.pretrained is not None:
            entries.append(BankEntry(model.name, "unet", pretrained=model.pretrained))
        elif (folder / f"{model.name}.pt").is_file():
            entries.append(BankEntry(model.name, "unet", str(folder / f"{model.name}.pt")))
    if len(entries) < len(TASK_BANKS[task].models):
        raise FileNotFoundError(f"the {task} bank in {folder} is incomplete; rebuild it with "
                                f"cte_kit.teaching.task_banks.build_task_bank({task!r}, folder)")
    if bank_task(folder / "bank.yaml") != task:
        raise ValueError(f"{folder / 'bank.yaml'} does not declare `task: {task}`")
    return entries


def task_target(task: str, n_images: int = 8, shape: tuple[int, int] | None = None, seed: int = 11) -> DemoTarget:
    """The unseen target of a task bank: images (default: of the bank's shape), the labels of the task's objects
    (kept aside to judge the ranking), names."""
    bank = TASK_BANKS[task]
    data = generate_tissue(bank.target, n_images, shape=shape or bank.shape, seed=seed)
    labels = data.cells if bank.labels == "cells" else data.mitochondria
    return DemoTarget(f"{task}_target", data.images, labels, data.names, f"{n_images} {bank.description} (seed {seed})")


def build_task_bank(task: str, out: str | Path, training: TrainingConfig = TASK_BANK_TRAINING,
                    n_images: int = TASK_BANK_TRAIN_IMAGES, scale: float = 1.0, progress: bool = True) -> list[BankEntry]:
    """Train the models of a task bank into ``out`` and write its ``bank.yaml`` (with ``task:``).

    Each model trains on its own domain's images (seed 100 + its position), never the target's;
    its training seed is its position: the bank is reproducible bit for bit on one machine. A model
    whose checkpoint is already in ``out`` is kept, so an interrupted build resumes. ``scale``
    multiplies every model's steps (a smoke run).
    """
    out = Path(out)
    bank = TASK_BANKS[task]
    entries = []
    for index, model in enumerate(bank.models):
        if model.pretrained is not None:
            entries.append(BankEntry(model.name, "unet", pretrained=model.pretrained))
            continue
        path = out / f"{model.name}.pt"
        if path.is_file():
            entries.append(BankEntry(model.name, "unet", path.name))
            continue
        data = generate_tissue(model.domain, n_images, shape=bank.shape, seed=100 + index)
        labels = {"mitochondria": data.mitochondria, "membranes": data.membranes, "cells": data.cells}[model.labels]
        train_unet(data.images, labels, UNetConfig(**TASK_BANK_ARCHITECTURE, output=model.output),
                   TrainingConfig(**{**training.__dict__, "steps": max(1, round(model.steps * scale)), "seed": index,
                                     "patch_size": min(training.patch_size, bank.patch_size)}), out=path,
                   name=model.name, source=f"synthetic {model.labels} of {model.domain}", progress=progress)
        entries.append(BankEntry(model.name, "unet", path.name))
    write_bank(entries, out / "bank.yaml", task=task)
    return entries

"""Train the cell bank: kit U-Nets and a Cellpose CPnet from the shared cell data, with nuclei and under-trained models.

Sources (``benchmarks/bank_training.py`` writes the held-out splits, as ``dsb_bank.py`` does):

* ``usiigaci`` - ``usiigaci_cells``, phase-contrast cells on a background (20 images of 1022 x 1024);
* ``ovules`` - ``ovules_mini``, dense plant tissue with no background (32 slices of one 128 x 128
  crop; split into contiguous blocks of slices, so that the test slices are not the neighbours of
  training slices);
* ``fluo_256``, ``fluo_520x696`` - DSB2018 fluorescence nuclei (the wrong task for cells).

The bank (``OUT/bank.yaml``): per cell source a kit U-Net with the recipe chosen for it, the same
recipe under-trained (a tenth of the steps) and the recipe the kit had before (``cte-kit train``
defaults, 400 steps); the two nuclei models; and a Cellpose 3 CPnet trained from scratch on the
same ``usiigaci`` images (``cellpose.train.train_seg``, offline: no pretrained weights). The kit
U-Nets are trained with the real ``cte-kit train --task instance`` and declare their own instance
method (``dt_watershed`` for the dense tissue, ``watershed`` otherwise).

Every model trains on the ``fit`` part of its source's training split. The recipe was chosen on the
``validation`` part (the rest of the training split), comparing this bank's models there with
``benchmarks/bench_cell_instances.py --part validation``; the ``test`` part is never read to choose
anything.

    python benchmarks/cells_bank.py [--data PATH] [--out results/cells_bank] [--scale 1.0] [--only NAME ...]
                                    [--device cuda] [--jobs 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bank_training import (REPO, ModelSpec, add_arguments, split_folder, train_bank,  # noqa: E402
                           write_bank_yaml, write_splits)
from dsb_bank import DOMAINS as DSB_DOMAINS, OPTIONS as DSB_OPTIONS  # noqa: E402

DEFAULT_OUT = REPO / "results" / "cells_bank"

#: Cell domains -> folder in the shared data; ``VOLUMES`` are slices of one volume.
CELL_DOMAINS = {"usiigaci": "usiigaci_cells", "ovules": "ovules_mini"}
VOLUMES = ("ovules",)
NUCLEI = ("fluo_256", "fluo_520x696")
DOMAINS = {**CELL_DOMAINS, **{name: DSB_DOMAINS[name] for name in NUCLEI}}

#: The chosen recipe per cell source: steps, architecture and ``cte-kit train`` options.
RECIPES = {
    "usiigaci": {"steps": 800, "levels": 4,
                 "options": ("--scale", "0.5", "--patch-size", "128", "--batch-size", "8", "--boundary-weight", "3")},
    "ovules": {"steps": 800, "levels": 3,
               "options": ("--patch-size", "64", "--batch-size", "16", "--boundary-weight", "3")},
}
#: The recipe of the cell models before this benchmark (``cte-kit train`` defaults, 400 steps as
#: the issue's report trained them); its models stay in the bank as under-trained models.
BASELINE = {"steps": 400, "levels": 3, "options": ("--patch-size", "128", "--batch-size", "8")}
NUCLEI_STEPS = 300
#: Cellpose from scratch: one batch of 8 tiles of 224 x 224 per epoch.
CELLPOSE_BATCH = 8
CELLPOSE_STEPS = 200
#: Every model trains on the ``fit`` part of its source's training split: the ``validation`` part
#: chose the recipe, the ``test`` part is for ``bench_cell_instances.py`` and the ranking only.
PART = "fit"


def _recipe(name: str, source: str, recipe: dict, steps: int | None = None) -> ModelSpec:
    return ModelSpec(name, source, steps or recipe["steps"], levels=recipe["levels"], options=recipe["options"],
                     part=PART)


BANK = (
    _recipe("usiigaci", "usiigaci", RECIPES["usiigaci"]),
    _recipe("usiigaci_short", "usiigaci", RECIPES["usiigaci"], RECIPES["usiigaci"]["steps"] // 10),
    _recipe("usiigaci_base", "usiigaci", BASELINE),
    _recipe("ovules", "ovules", RECIPES["ovules"]),
    _recipe("ovules_short", "ovules", RECIPES["ovules"], RECIPES["ovules"]["steps"] // 10),
    _recipe("ovules_base", "ovules", BASELINE),
    *(ModelSpec(name, name, NUCLEI_STEPS, options=DSB_OPTIONS, part=PART) for name in NUCLEI),
    ModelSpec("cellpose_usiigaci", "usiigaci", CELLPOSE_STEPS, kind="cellpose", part=PART),
)


def train_cellpose(spec: ModelSpec, out: Path, steps: int, device: str, threads: int, seed: int) -> int:
    """Train a Cellpose 3 CPnet from scratch on the spec's part (one batch per epoch); returns 0.

    Cellpose rescales every training image so that its objects have the network's mean diameter
    (30 pixels) and stores the training objects' mean diameter, which its ``eval`` uses to rescale
    new images: the bank entry needs no diameter.
    """
    import numpy as np
    import torch
    from cellpose import models, train

    from cte_kit.data.folder import load_folder

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = load_folder(*split_folder(out, spec.source, spec.part), progress=False)
    network = models.CellposeModel(gpu=device != "cpu", pretrained_model=False, diam_mean=30.0)
    final = out / spec.checkpoint
    partial = final.with_name(final.name + ".partial")
    # train_seg saves to save_path/models/model_name during and after training: a partial name,
    # renamed at the end, so that an interrupted training leaves no model a rerun would skip
    train.train_seg(network.net, train_data=[image.astype(np.float32) for image in data.images],
                    train_labels=[labels.astype(np.int32) for labels in data.labels], channels=[0, 0],
                    n_epochs=steps, nimg_per_epoch=CELLPOSE_BATCH, batch_size=CELLPOSE_BATCH, bsize=224,
                    learning_rate=0.005, min_train_masks=1, save_path=str(out), model_name=partial.name,
                    save_every=max(1, steps))
    os.replace(partial, final)
    return 0


def bank_entries(out: Path, bank=BANK) -> list[dict]:
    """Entries of the models trained so far; kit U-Nets use the instance method their checkpoint declares."""
    entries = []
    for spec in bank:
        if not (Path(out) / spec.checkpoint).exists():
            continue
        entry = {"name": spec.name, "kind": spec.kind, "path": spec.checkpoint}
        if spec.kind == "cellpose":
            entry["channels"] = [0, 0]
        entries.append({**entry, **spec.settings})
    return entries


def bank_info(out: Path, times: dict, bank=BANK) -> dict[str, dict]:
    """Per model: kind, source, training part, steps, architecture, options and training seconds."""
    return {spec.name: {"kind": spec.kind, "source": spec.source, "part": spec.part, "steps": spec.steps,
                        "width": spec.width, "levels": spec.levels, "options": list(spec.options),
                        "training_seconds": round(times.get(spec.name, math.nan), 1)}
            for spec in bank if (Path(out) / spec.checkpoint).exists()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    bank = BANK
    data, out = Path(args.data), Path(args.out)
    missing = [folder for folder in DOMAINS.values() if not (data / folder).is_dir()]
    if missing:
        print(f"no {', '.join(missing)} in {data}", file=sys.stderr)
        return 2
    counts = write_splits(data, out, DOMAINS, volumes=VOLUMES)
    print("splits (train/test, fit/validation):",
          ", ".join(f"{k} {v['train']}/{v['test']}, {v['fit']}/{v['validation']}" for k, v in counts.items()))
    (out / "splits.json").write_text(json.dumps(counts, indent=2))

    def write_bank_files(folder: Path, times: dict) -> None:
        write_bank_yaml(folder, bank_entries(folder, bank))
        (folder / "bank_info.json").write_text(json.dumps(bank_info(folder, times, bank), indent=2))

    code = train_bank(bank, args, write_bank_files, trainers={"cellpose": train_cellpose})
    print(f"bank: {out / 'bank.yaml'} ({len(bank_entries(out, bank))} models)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

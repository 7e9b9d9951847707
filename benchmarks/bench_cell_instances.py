"""Instances of cells from each model of the cell bank: connected components against the boundary watersheds.

For every model of a bank built by ``benchmarks/cells_bank.py`` and every cell target (the held-out
``test`` part of ``usiigaci`` and ``ovules`` by default, or the ``validation`` part with which the
recipe was chosen), a kit U-Net's network runs once per image and its foreground and boundary maps
become instances three ways:

* ``components`` - connected components of the foreground;
* ``watershed`` - the boundary watershed seeded by the predicted interiors (nuclei, cells on a
  background);
* ``dt_watershed`` - the boundary watershed seeded by the maxima of the distance to the predicted
  boundary (dense tissue, PlantSeg-like).

A Cellpose model gives its own masks (flows) and connected components of its cell probability. Per
model and target it prints the mean mAP (DSB2018 definition, IoU 0.5..0.95) and the mean ratio of
predicted to true objects per image, marks the method the model declares (``*``), says where the
declared method's objects go wrong (:func:`object_errors`: true cells matched at IoU 0.5, inside
merged objects, or cut; objects that touch no cell), and writes the rows to
``OUT/cell_instances_<part>.json``. Images are scored whole (a U-Net's network runs on the whole
image, not in the adapter's tiles). It ends with the two checks of the recipe: on ``ovules``
the declared method of the ovules-trained models against connected components, and on ``usiigaci``
the kit U-Net against Cellpose trained on the same images.

    python benchmarks/bench_cell_instances.py [--bank results/cells_bank] [--part test] [--targets usiigaci ovules]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banks import REPO, split_folder  # noqa: E402
from bench_instances import output_maps  # noqa: E402
from cells_bank import DOMAINS as CELL_DOMAINS  # noqa: E402

METHODS = ("components", "watershed", "dt_watershed")


#: A predicted object merges true cells when it holds at least this share of two of them or more.
MERGE_SHARE = 0.2


def object_errors(truth: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Where the objects of one image go wrong: true cells matched at IoU >= 0.5, inside a merge (their
    most-overlapping predicted object holds :data:`MERGE_SHARE` of two true cells or more), or matched worse
    for another reason (a cut cell, a wrong border); predicted objects touching no true cell (specks)."""
    from cte_kit.scoring.metrics import contingency

    table = contingency(truth, predicted)
    true_area, predicted_area = table.row_sums(), table.col_sums()
    cells = (table.rows > 0) & (table.cols > 0)
    rows, cols, overlap = table.rows[cells], table.cols[cells], table.counts[cells]
    iou = overlap / (true_area[rows] + predicted_area[cols] - overlap)
    held = overlap >= MERGE_SHARE * true_area[rows]
    merges = np.flatnonzero(np.bincount(cols[held], minlength=table.shape[1]) >= 2)
    true_ids, predicted_ids = np.flatnonzero(true_area[1:]) + 1, np.flatnonzero(predicted_area[1:]) + 1
    best_iou = np.zeros(table.shape[0])
    np.maximum.at(best_iou, rows, iou)
    # each true cell's most-overlapping predicted object
    order = np.lexsort((overlap, rows))
    main = dict(zip(rows[order], cols[order]))
    matched = best_iou[true_ids] >= 0.5
    in_merge = np.array([main.get(i, 0) in set(merges) for i in true_ids]) & ~matched
    touching = np.zeros(table.shape[1], bool)
    touching[cols] = True
    return {"true": int(true_ids.size), "matched": int(matched.sum()), "in_merge": int(in_merge.sum()),
            "other": int((~matched & ~in_merge).sum()), "predicted": int(predicted_ids.size),
            "merges": int(merges.size), "specks": int((~touching[predicted_ids]).sum())}


def score(truth: list[np.ndarray], predicted: list[np.ndarray]) -> dict[str, float]:
    """Mean mAP, AP at IoU 0.5 and ratio of predicted to true objects over images, and :func:`object_errors`
    summed over images."""
    from cte_kit.scoring.metrics import average_precision

    precisions = [average_precision(t, p) for t, p in zip(truth, predicted)]
    # objects are the non-zero labels: dense tissue may have no background label at all
    ratios = [len(np.unique(p[p > 0])) / max(len(np.unique(t[t > 0])), 1) for t, p in zip(truth, predicted)]
    errors = [object_errors(t, p) for t, p in zip(truth, predicted)]
    return {"mAP": float(np.mean([ap.mean for ap in precisions])),
            "AP50": float(np.mean([ap.precision[0] for ap in precisions])), "ratio": float(np.mean(ratios)),
            **{key: int(sum(e[key] for e in errors)) for key in errors[0]}}


def model_rows(model, images, labels) -> dict[str, dict[str, float]]:
    """Scores per instance method: every method for a kit U-Net, Cellpose's own masks and components otherwise."""
    from cte_kit.models.instances import connected_components, instances_from_probability
    from cte_kit.models.unet import UNetModel

    rows = {}
    if isinstance(model, UNetModel):
        maps = output_maps(model, images)
        for method in METHODS:
            started = time.perf_counter()
            predicted = [instances_from_probability(p, b, method, model.threshold, model.min_size) for p, b in maps]
            rows[method] = {**score(labels, predicted), "seconds_per_image": (time.perf_counter() - started) / len(maps)}
        return rows
    predictions = model.predict(images)
    rows["own"] = score(labels, [p.labels for p in predictions])
    rows["components"] = score(labels, [connected_components(p.probability, model.threshold) for p in predictions])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", default=str(REPO / "results" / "cells_bank"), help="folder of cells_bank.py")
    parser.add_argument("--part", default="test", choices=("test", "validation"))
    parser.add_argument("--targets", nargs="*", default=list(CELL_DOMAINS))
    parser.add_argument("--models", nargs="*", help="only these models")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from cte_kit.data.folder import load_folder
    from cte_kit.models.bank import load_model, read_bank

    bank = Path(args.bank)
    if not (bank / "bank.yaml").is_file():
        print(f"no bank in {bank}: run benchmarks/cells_bank.py first", file=sys.stderr)
        return 2
    entries = [e for e in read_bank(bank / "bank.yaml") if not args.models or e.name in args.models]
    results = []
    header = f"{'target':<9} {'model':<20} " + " ".join(f"{m + ' mAP':>16} {'ratio':>6}" for m in ("own", *METHODS))
    print(header)
    for target in args.targets:
        data = load_folder(*split_folder(bank, target, args.part), progress=False)
        for entry in entries:
            model = load_model(entry)
            declared = getattr(model, "instances", "own")
            rows = model_rows(model, data.images, data.labels)
            results.append({"target": target, "model": entry.name, "declared": declared, "n_images": len(data.images),
                            "rows": rows})
            cells = []
            for method in ("own", *METHODS):
                row = rows.get(method)
                mark = "*" if method == declared else " "
                cells.append(f"{row['mAP']:15.3f}{mark} {row['ratio']:6.2f}" if row else f"{'-':>16} {'-':>6}")
            print(f"{target:<9} {entry.name:<20} " + " ".join(cells), flush=True)
            row = rows[declared]
            print(f"{'':<30}{declared}: AP50 {row['AP50']:.3f}; of {row['true']} true cells {row['matched']} matched "
                  f"at IoU 0.5, {row['in_merge']} inside {row['merges']} merged objects, {row['other']} cut or "
                  f"misdrawn; {row['specks']} of {row['predicted']} objects touch no cell", flush=True)
    out = bank / f"cell_instances_{args.part}.json"
    out.write_text(json.dumps(results, indent=2))

    print(f"\n(* = the method the model declares; rows in {out})")
    for result in results:
        if result["target"] == "ovules" and result["model"].startswith("ovules"):
            own, components = result["rows"][result["declared"]]["mAP"], result["rows"]["components"]["mAP"]
            verdict = "at least" if own >= components else "BELOW"
            print(f"ovules: {result['model']} declares {result['declared']}: mAP {own:.3f}, {verdict} connected "
                  f"components ({components:.3f})")
    same_images = {r["model"]: r["rows"][r["declared"]]["mAP"] for r in results
                   if r["target"] == "usiigaci" and "usiigaci" in r["model"]}
    if same_images:
        print("usiigaci, models trained on its training images (declared method): "
              + ", ".join(f"{name} {value:.3f}" for name, value in same_images.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

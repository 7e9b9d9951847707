"""Benchmark of SelfAdapt-style adaptation: true F1 / mAP before and after, per checkpoint.

For each (model, target) pair the run records, at every evaluation, the two label-free stopping
signals and the true instance F1 and mAP (labels used only here, to judge), then reports the
checkpoint each criterion picks against the best one, and the seconds per step. Variants of the
settings the seed omits (EMA decay, L2-SP weight) show their effect.

    python benchmarks/bench_adapt.py demo --steps 120 --out results/adapt_demo.json
    python benchmarks/bench_adapt.py folder --checkpoint model.pt --images T/images --labels T/labels \\
        --out results/adapt_pair.json
    python benchmarks/bench_adapt.py train-cellpose --images S/images --labels S/labels --steps 40 \\
        --out results/cp_models/cp_source.json
    python benchmarks/bench_adapt.py folder --kind cellpose --checkpoint results/cp_models/models/cp_source ...
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cte_kit.adapt import AdaptConfig, adapt, adapt_target, load_step
from cte_kit.data.folder import load_folder
from cte_kit.data.synthetic import DEMO_SOURCES, DEMO_TARGET, generate
from cte_kit.teaching.demo import demo_checkpoint
from cte_kit.scoring.metrics import average_precision, match_instances
from cte_kit.models.unet import UNetModel

VARIANTS = {
    "default": {},
    "ema_0.9": {"ema_decay": 0.9},
    "ema_0.999": {"ema_decay": 0.999},
    "l2sp_0": {"l2sp": 0.0},
    "l2sp_10": {"l2sp": 10.0},
}


def true_scores(model, images, labels) -> tuple[float, float]:
    """Mean instance F1 (IoU 0.5) and mAP over images."""
    predictions = model.predict(images)
    f1 = np.mean([match_instances(t, p.labels).f1 for t, p in zip(labels, predictions)])
    ap = np.mean([average_precision(t, p.labels).mean for t, p in zip(labels, predictions)])
    return float(f1), float(ap)


def judged_run(target, images, labels, config: AdaptConfig) -> dict:
    """One adaptation; the true scores of every checkpoint and of the criteria's picks."""
    started = time.perf_counter()
    run = adapt(target, images, config, progress=False)
    rows = []
    for point in run.curve:
        load_step(target, run, point.step)
        f1, ap = true_scores(target.model, images, labels)
        rows.append({"step": point.step, "fn_rate": point.fn_rate, "embedding": point.embedding,
                     "weight_distance": point.weight_distance, "f1": f1, "map": ap})
    by_step = {row["step"]: row for row in rows}
    best = max(rows, key=lambda row: row["f1"])
    report = {"curve": rows, "before": {"f1": rows[0]["f1"], "map": rows[0]["map"]},
              "last": {"f1": rows[-1]["f1"], "map": rows[-1]["map"]},
              "best": {"step": best["step"], "f1": best["f1"], "map": best["map"]},
              "seconds_per_step": run.seconds_per_step, "seconds": time.perf_counter() - started}
    for name, stop in run.stops.items():
        report[f"stop_{name}"] = {"step": stop.step, "crossed": stop.crossed, "f1": by_step[stop.step]["f1"],
                                  "map": by_step[stop.step]["map"]}
    return report


def _print(label: str, report: dict) -> None:
    print(f"{label:<40} before F1 {report['before']['f1']:.3f} mAP {report['before']['map']:.3f} | "
          f"last F1 {report['last']['f1']:.3f} mAP {report['last']['map']:.3f} | best step {report['best']['step']} "
          f"F1 {report['best']['f1']:.3f} | FN stop {report['stop_fn_rate']['step']} F1 {report['stop_fn_rate']['f1']:.3f} "
          f"| emb stop {report['stop_embedding']['step']} F1 {report['stop_embedding']['f1']:.3f} | "
          f"{report['seconds_per_step']:.3f} s/step", flush=True)


def run_demo(args) -> dict:
    data = generate(DEMO_TARGET, args.n_images, shape=(128, 128), seed=7)
    scores = {d.name: true_scores(UNetModel.from_checkpoint(demo_checkpoint(d.name)), data.images, data.labels)[0]
              for d in DEMO_SOURCES}
    worst, best = min(scores, key=scores.get), max(scores, key=scores.get)
    results = {"true_f1_before": scores}
    base = AdaptConfig(steps=args.steps, eval_every=max(1, args.steps // 6), seed=args.seed)
    for name in (worst, best):
        for variant, changes in VARIANTS.items():
            if name == best and variant != "default":
                continue
            target = adapt_target(UNetModel.from_checkpoint(demo_checkpoint(name)))
            report = judged_run(target, data.images, data.labels, replace(base, **changes))
            results[f"{name}/{variant}"] = report
            _print(f"{name}/{variant}", report)
    return results


def run_folder(args) -> dict:
    data = load_folder(args.images, args.labels, progress=False)
    images, labels = data.images[: args.n_images], data.labels[: args.n_images]
    if args.crop:
        images = [image[: args.crop, : args.crop] for image in images]
        labels = [label[: args.crop, : args.crop] for label in labels]
    if args.kind == "cellpose":
        from cte_kit.models.cellpose import CellposeModel

        model = CellposeModel.from_file(args.checkpoint)
    else:
        model = UNetModel.from_checkpoint(args.checkpoint, rgb="grey", instances="watershed")
    report = judged_run(adapt_target(model), images, labels,
                        AdaptConfig(steps=args.steps, eval_every=max(1, args.steps // 6), seed=args.seed))
    pair = [Path(args.checkpoint).stem, "/".join(Path(args.images).parts[-3:-1])]
    _print(" -> ".join(pair), report)
    return {"pair": pair, **report}


def train_cellpose(args) -> dict:
    """A Cellpose 3 CPnet trained from scratch on a labelled source folder (``cellpose.train.train_seg``)."""
    from cellpose import models, train

    data = load_folder(args.images, args.labels, progress=False)
    images = [image[: args.crop, : args.crop] if args.crop else image for image in data.images][: args.n_images]
    labels = [label[: args.crop, : args.crop] if args.crop else label for label in data.labels][: args.n_images]
    torch.manual_seed(args.seed)
    network = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=17.0)
    started = time.perf_counter()
    path, _, _ = train.train_seg(network.net, train_data=[i.astype(np.float32) for i in images], train_labels=labels,
                                 channels=[0, 0], n_epochs=args.steps, batch_size=8, bsize=128, learning_rate=0.005,
                                 min_train_masks=1, save_path=str(Path(args.out).parent), model_name=Path(args.out).stem)
    print(f"trained {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return {"model": str(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("demo", "folder", "train-cellpose"))
    parser.add_argument("--steps", type=int, default=120, help="adaptation steps (train-cellpose: epochs)")
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="folder mode: model file (kit U-Net checkpoint or Cellpose file)")
    parser.add_argument("--kind", default="unet", choices=("unet", "cellpose"))
    parser.add_argument("--images", help="folder mode: target images")
    parser.add_argument("--labels", help="folder mode: target labels (only to judge)")
    parser.add_argument("--crop", type=int, help="folder mode: crop images to CROP x CROP (top left)")
    parser.add_argument("--out", required=True, help="JSON report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"demo": run_demo, "folder": run_folder, "train-cellpose": train_cellpose}[args.mode](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Instance extraction on the real DSB2018 bank: connected components, the kit's earlier watershed, the fixed one.

For every model of the bank (``benchmarks/dsb_bank.py``) and every sub-domain's held-out test
split (a seeded subset of ``--max-images``, centre-cropped to ``--max-side`` as in
``bench_dsb_ranking.py``), the network is run once and its foreground and boundary maps are
turned into instances three ways:

* ``components`` - connected components of the foreground (the CTE reference code);
* ``watershed (before)`` - the kit's extraction before the fix: every connected interior
  ``foreground & boundary < 0.5`` is a seed (kept here only as the reference it is compared with);
* ``watershed`` - :func:`cte_kit.models.instances.seeded_watershed` as it is now.

It prints, per method, the mean ratio of predicted to true objects per image and the mean mAP
(DSB2018 definition) per model and target, and the same averaged over all (model, target) pairs
where the model is usable (true F1 >= 0.5), with the seconds each method takes per image.

    python benchmarks/bench_instances.py [--bank results/dsb_bank] [--max-images 16] [--max-side 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import measure, segmentation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dsb_ranking import USABLE_F1, load_target  # noqa: E402
from dsb_bank import DOMAINS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def watershed_before_fix(probability: np.ndarray, boundary: np.ndarray, threshold: float) -> np.ndarray:
    """The reference: the kit's boundary watershed before the fix (every connected interior seeds)."""
    mask = probability > threshold
    seeds = measure.label(mask & (boundary < 0.5), connectivity=1)
    return segmentation.watershed(boundary, seeds, mask=mask).astype(np.int32)


def output_maps(model, images) -> list[tuple[np.ndarray, np.ndarray]]:
    """(foreground, boundary) probability maps of a foreground+boundary kit U-Net, one image at a time."""
    maps = []
    for array in model._prepare_all(images, None):
        # an image above the adapter's tile size comes lazily normalised: read it whole (one image in memory)
        array = array if isinstance(array, np.ndarray) else array[...]
        tensor, size = model._to_tensor([array])
        with torch.inference_mode():
            sample = model.probability_maps(model.network(tensor), size)[0]
        maps.append((sample[0], sample[1]))
    return maps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", default=str(REPO / "results" / "dsb_bank"))
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--targets", nargs="*", default=list(DOMAINS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from cte_kit.scoring.metrics import average_precision, f1_score
    from cte_kit.models.bank import load_bank
    from cte_kit.models.instances import connected_components, seeded_watershed

    bank_dir = Path(args.bank)
    models = load_bank(bank_dir / "bank.yaml")
    methods = {
        "components": lambda p, b, t: connected_components(p, t),
        "watershed (before)": watershed_before_fix,
        "watershed": lambda p, b, t: seeded_watershed(p, b, t),
    }
    seconds = {name: 0.0 for name in methods}
    calls = {name: 0 for name in methods}
    usable_rows = {name: [] for name in methods}
    print(f"{'model':<20} {'target':<13} {'F1':>5} " + " ".join(f"{m + ' ratio':>24} {'mAP':>5}" for m in methods))
    for domain in args.targets:
        images, labels, _ = load_target(bank_dir, domain, args.max_images, args.max_side)
        for model in models:
            maps = output_maps(model, images)
            f1 = float(np.median([f1_score(truth, p, model.threshold) for (p, _), truth in zip(maps, labels)]))
            cells = []
            for name, method in methods.items():
                ratios, scores = [], []
                for (probability, boundary), truth in zip(maps, labels):
                    started = time.perf_counter()
                    predicted = method(probability, boundary, model.threshold)
                    seconds[name] += time.perf_counter() - started
                    calls[name] += 1
                    n_true = len(np.unique(truth)) - 1
                    ratios.append((len(np.unique(predicted)) - 1) / max(n_true, 1))
                    scores.append(average_precision(truth, predicted).mean)
                ratio, score = float(np.mean(ratios)), float(np.mean(scores))
                cells.append(f"{ratio:24.2f} {score:5.3f}")
                if f1 >= USABLE_F1:
                    usable_rows[name].append((ratio, score))
            print(f"{model.name:<20} {domain:<13} {f1:5.2f} " + " ".join(cells), flush=True)
    print(f"\nMean over usable (model, target) pairs (true F1 >= {USABLE_F1}):")
    for name, rows in usable_rows.items():
        values = np.asarray(rows)
        print(f"  {name:<20} objects predicted / true {values[:, 0].mean():6.2f} (median {np.median(values[:, 0]):.2f}), "
              f"mAP {values[:, 1].mean():.3f}; {1000 * seconds[name] / max(calls[name], 1):.1f} ms per image "
              f"({len(values)} pairs)")
    better = sum(w >= c - 1e-9 for (_, c), (_, w) in zip(usable_rows["components"], usable_rows["watershed"]))
    print(f"  watershed at least as good as components (mAP) on {better} of {len(usable_rows['watershed'])} usable pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

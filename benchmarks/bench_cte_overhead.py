"""CTE time per adapter against the fastest plain prediction of the same images (same run).

For a kit U-Net (a demo model), StarDist, Cellpose and a bioimage.io export of a kit U-Net, the
same images are predicted

* plainly (``model.predict``) at batch sizes 1, 2, 4, 8, 16: the best time per image is the
  reference, one *plain pass* (the library adapters predict image by image, so for them the
  batch size changes little);
* for the U-Net also as a bare network forward of the normalised images (no normalisation, no
  instance labels) at the same batch sizes: the least any pass can cost;
* as CTE pairs at the adapter's default batch size: ``predict_pairs`` and the hard, soft and
  instance consistencies (``pair_scores``), for an input perturbation (``noise:0.1``, two passes
  it cannot avoid) and feature dropout at the bottleneck (``dropout:0.2``);
* as dropout pairs without sharing (clean and dropout prediction run separately, the path of
  Cellpose, StarDist and bioimage.io before their forked passes), for comparison.

Every figure is the median of ``--repeats`` timings after one warm-up call (Keras traces its
graphs, Cellpose converts its network to MKL-DNN on first use). Goals (issue 13): noise CTE at
most 1.15 x two plain passes; a dropout pair well under 2 plain passes.

Without ``--bank``, tiny StarDist and Cellpose models are trained first on synthetic nuclei (the
tests' tiny_models), so the benchmark runs offline; with ``--bank`` the models of a bank YAML are
measured instead.

    OMP_NUM_THREADS=2 python benchmarks/bench_cte_overhead.py [--images 8] [--size 192] [--repeats 5] [--bank bank.yaml]
"""

import argparse
import functools
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from cte_kit.estimators.cte import pair_scores
from cte_kit.models import BankEntry, SegmentationModel, load_bank, load_model
from cte_kit.models.unet import UNetModel, demo_checkpoint
from cte_kit.perturb import FeatureDropout, InputPerturbation
from _timing import median_of

# the tiny models the tests train live with the tests, not in the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import training_data  # noqa: E402

BATCH_SIZES = (1, 2, 4, 8, 16)
KINDS = ("hard", "soft", "instance")


def tiny_bank(folder: Path) -> list:
    """A demo kit U-Net, tiny StarDist and Cellpose models trained into ``folder``, and the U-Net as a bioimage.io export."""
    from tiny_models import train_tiny_cellpose, train_tiny_stardist
    from cte_kit.models.bioimageio import export_unet

    unet = demo_checkpoint("near_target")
    entries = [
        BankEntry("unet", "unet", path=str(unet)),
        BankEntry("stardist", "stardist", path=str(train_tiny_stardist(folder))),
        BankEntry("cellpose", "cellpose", path=str(train_tiny_cellpose(folder)), settings={"channels": [0, 0]}),
        BankEntry("bioimageio", "bioimageio", path=str(export_unet(unet, folder / "unet_bioimageio.zip"))),
    ]
    return [load_model(entry) for entry in entries]


def best_per_image(run, images, repeats: int) -> tuple[float, int]:
    """(seconds per image, batch size) of the fastest batch size for ``run(images, batch_size)``."""
    times = {}
    for batch_size in BATCH_SIZES:
        if batch_size > len(images) and batch_size > 1 and times:
            break
        run(images[:batch_size], batch_size)  # warm-up: a new batch shape traces or allocates anew
        times[batch_size] = median_of(lambda: run(images, batch_size), repeats) / len(images)
    best = min(times, key=times.get)
    return times[best], best


def plain_run(model):
    def run(images, batch_size):
        default, model.batch_size = model.batch_size, batch_size
        try:
            model.predict(images)
        finally:
            model.batch_size = default
    return run


def bare_unet_run(model: UNetModel):
    """The U-Net's network on normalised, padded tensors (prepared outside the timing): no labels."""
    prepared = {}

    def run(images, batch_size):
        key = (len(images), batch_size)
        if key not in prepared:
            prepared[key] = [model._to_tensor([model.prepare(image) for image in images[i:i + batch_size]])[0]
                             for i in range(0, len(images), batch_size)]
        with torch.inference_mode():
            for tensor in prepared[key]:
                model.network(tensor)
    return run


def cte_seconds(model, images, perturbation, repeats: int) -> float:
    def run():
        pair_scores(model.predict_pairs(images, perturbation), KINDS, threshold=model.threshold)
    run()
    return median_of(run, repeats) / len(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--bank", help="bank YAML to measure instead of the demo U-Net and freshly trained tiny models")
    args = parser.parse_args()

    images, _ = training_data(n_images=args.images, size=args.size, seed=1)
    dropout, noise = FeatureDropout(args.rate), InputPerturbation("noise", 0.1)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        models = load_bank(args.bank) if args.bank else tiny_bank(Path(scratch))
        for model in models:
            references = {"plain predict": best_per_image(plain_run(model), images, args.repeats)}
            if isinstance(model, UNetModel):
                references["bare network"] = best_per_image(bare_unet_run(model), images, args.repeats)
            noisy = cte_seconds(model, images, noise, args.repeats)
            shared = separate = float("nan")
            if model.grey_box:
                shared = cte_seconds(model, images, dropout, args.repeats)
                # the pair as two separate predictions: plain, then with dropout
                unshared = functools.partial(SegmentationModel._predict_feature_pairs, model)
                with mock.patch.object(model, "_predict_feature_pairs", unshared):
                    separate = cte_seconds(model, images, dropout, args.repeats)
            for kind, (reference, batch) in references.items():
                rows.append((model.name, kind, reference, batch, noisy, shared, separate))

    print(f"\n{args.images} synthetic images of {args.size} x {args.size} px, {torch.get_num_threads()} torch threads; "
          f"medians of {args.repeats}; CTE = predict_pairs + {'/'.join(KINDS)} consistencies")
    header = (f"{'model':<11} {'reference':<14} {'ms/image':>9} {'batch':>6} {'noise CTE / 2 ref':>18} "
              f"{'dropout CTE / ref':>18} {'unshared / ref':>15}")
    print(header)
    print("-" * len(header))
    for name, kind, reference, batch, noisy, shared, separate in rows:
        grey = [f"{shared / reference:18.2f}", f"{separate / reference:15.2f}"] if np.isfinite(shared) else \
            [f"{'black box':>18}", f"{'-':>15}"]
        print(f"{name:<11} {kind:<14} {1000 * reference:9.1f} {batch:6d} {noisy / (2 * reference):18.2f} " + " ".join(grey))
    print("\nnoise CTE / 2 ref: one image's noise CTE (clean + noisy prediction, three consistencies) in units of two "
          "reference passes (goal <= 1.15); dropout CTE / ref: one image's dropout CTE in reference passes (goal well "
          "under 2); unshared: the same with the clean and the dropout prediction run separately")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

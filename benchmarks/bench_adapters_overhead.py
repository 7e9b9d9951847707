"""Grey-box overhead per adapter: a clean + dropout prediction pair against the plain prediction.

For each adapter (kit U-Net, StarDist, Cellpose, bioimage.io) the same images are predicted
plainly (``model.predict``) and as grey-box CTE pairs (``model.predict_pairs`` with
``dropout:0.2`` at the bottleneck), in the same run, after one warm-up call each (Keras traces
its graphs, Cellpose converts its network to MKL-DNN on first use). A ratio of 2 means the
pair costs exactly two plain predictions; the kit U-Net forks the batch at the bottleneck and
stays below 2; StarDist, Cellpose and bioimage.io predict image by image and run the network
twice, plus the per-image mask set-up.

Without ``--bank``, tiny models are trained first on synthetic nuclei (tiny_models),
so the benchmark runs offline; with ``--bank`` the models of a bank YAML are measured.

    python benchmarks/bench_adapters_overhead.py [--images 8] [--size 128] [--repeats 3] [--bank bank.yaml]
"""

import argparse
import sys
import tempfile
from pathlib import Path

from cte_kit.models import BankEntry, load_bank, load_model
from cte_kit.perturb import FeatureDropout
from _timing import best_of

# the tiny models the tests train live with the tests, not in the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import training_data  # noqa: E402


def tiny_bank(folder: Path) -> list:
    """One tiny model per adapter kind, trained into ``folder``."""
    from tiny_models import train_tiny_cellpose, train_tiny_stardist, train_tiny_unet
    from cte_kit.models.bioimageio import export_unet

    unet = train_tiny_unet(folder / "unet.pt")
    entries = [
        BankEntry("unet", "unet", path=str(unet)),
        BankEntry("stardist", "stardist", path=str(train_tiny_stardist(folder))),
        BankEntry("cellpose", "cellpose", path=str(train_tiny_cellpose(folder)), settings={"channels": [0, 0]}),
        BankEntry("bioimageio", "bioimageio", path=str(export_unet(unet, folder / "unet_bioimageio.zip"))),
    ]
    return [load_model(entry) for entry in entries]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--bank", help="bank YAML to measure instead of freshly trained tiny models")
    args = parser.parse_args()

    images, _ = training_data(n_images=args.images, size=args.size, seed=1)
    dropout = FeatureDropout(args.rate)
    with tempfile.TemporaryDirectory() as scratch:
        models = load_bank(args.bank) if args.bank else tiny_bank(Path(scratch))
        rows = []
        for model in models:
            model.predict(images[:1])
            model.predict_pairs(images[:1], dropout)
            plain = best_of(lambda: model.predict(images), args.repeats)
            pair = best_of(lambda: model.predict_pairs(images, dropout), args.repeats)
            rows.append((model.name, type(model).__name__, plain, pair))

    print(f"\n{args.images} images of {args.size} x {args.size} px, dropout {args.rate:g} at the bottleneck, "
          f"best of {args.repeats}")
    header = f"{'model':<12} {'adapter':<16} {'plain [s]':>10} {'grey pair [s]':>14} {'pair / plain':>13} {'per image [ms]':>15}"
    print(header)
    print("-" * len(header))
    for name, kind, plain, pair in rows:
        print(f"{name:<12} {kind:<16} {plain:>10.3f} {pair:>14.3f} {pair / plain:>13.2f} "
              f"{1000 * (pair - plain) / args.images:>15.1f}")
    print("\npair / plain: cost of one grey-box CTE pair (clean + perturbed) in plain predictions; "
          "per image: extra time of the pair over the plain prediction")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CTE time against the bare forward passes it needs (same run, same images).

For a kit U-Net, a grey-box CTE pair (clean + dropout prediction, forked at the bottleneck) is
compared with the bare network forward of the clean images alone, and with two bare forwards
(what a naive clean + perturbed evaluation costs). An input-perturbation pair is measured too.
The full CTE time includes normalisation, instance labelling and the consistency measures.

    python benchmarks/bench_cte_overhead.py [--size 256] [--images 16] [--levels 3] [--width 16]
"""

import argparse

import numpy as np
import torch

from cte_kit.estimators.cte import pair_scores
from cte_kit.models.unet import UNetConfig, UNetModel
from cte_kit.perturb import FeatureDropout, InputPerturbation
from _timing import best_of


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = UNetConfig(levels=args.levels, width=args.width)
    model = UNetModel(name="bench", network=config.build(), config=config, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4000, (args.size, args.size)).astype(np.uint16) for _ in range(args.images)]
    tensors = [torch.from_numpy(np.stack([model.prepare(im) for im in images[i:i + args.batch_size]])[:, None])
               for i in range(0, len(images), args.batch_size)]

    def bare_forward():
        with torch.inference_mode():
            for batch in tensors:
                model.network(batch)

    def cte(perturbation, kinds):
        pairs = model.predict_pairs(images, perturbation)
        pair_scores(pairs, kinds)

    bare = best_of(bare_forward, args.repeats)
    rows = [
        ("bare forward, clean only (reference)", bare),
        ("bare forward x2 (naive clean + perturbed)", 2 * bare),
        ("CTE dropout:0.2, hard", best_of(lambda: cte(FeatureDropout(0.2), ["hard"]), args.repeats)),
        ("CTE dropout:0.2, hard+soft+instance", best_of(lambda: cte(FeatureDropout(0.2), ["hard", "soft", "instance"]), args.repeats)),
        ("CTE noise:0.1, hard", best_of(lambda: cte(InputPerturbation("noise", 0.1), ["hard"]), args.repeats)),
    ]
    print(f"{args.images} images of {args.size}x{args.size}, U-Net levels={args.levels} width={args.width}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'what':<42} {'seconds':>8} {'/ bare forward':>15}")
    for name, seconds in rows:
        print(f"{name:<42} {seconds:8.3f} {seconds / bare:15.2f}")


if __name__ == "__main__":
    main()

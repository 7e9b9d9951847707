"""instance_consistency against the same computation done with scikit-image (same run).

The reference follows the official implementation step by step: boundary band from
``skimage.morphology.dilation != erosion`` of the clean labels, mask = union of foregrounds
minus the band, background pixels of the masked arrays given fresh singleton ids, then
``skimage.metrics.adapted_rand_error(..., ignore_labels=None)``. Both must give the same value
(to 1e-12). The label images are synthetic nuclei: many touching ellipses, and a perturbed
version in which objects are shifted and resized, some merged with a neighbour, some split in
two, some lost and a few spurious ones added.

    python benchmarks/bench_instance_consistency.py [--sizes 512 2048] [--repeats 5]
"""

import argparse
import time

import numpy as np
from scipy.spatial import cKDTree
from skimage.draw import ellipse
from skimage.metrics import adapted_rand_error
from skimage.morphology import dilation, erosion

from cte_kit.scoring.consistency import instance_consistency

#: Nuclei per megapixel (about 25 % foreground with the radii below).
DENSITY = 800


def draw(shape, objects, labels):
    """Label image with ellipse ``k`` of ``objects`` (cy, cx, ry, rx, angle) drawn as ``labels[k]``."""
    image = np.zeros(shape, dtype=np.int32)
    for (cy, cx, ry, rx, angle), label in zip(objects, labels):
        rows, cols = ellipse(cy, cx, ry, rx, shape=shape, rotation=angle)
        image[rows, cols] = label
    return image


def split(image, objects, labels, which, first_new_label):
    """Give the half (x > centre) of each object in ``which`` a new label, in place."""
    for offset, k in enumerate(which):
        cy, cx, ry, rx, angle = objects[k]
        rows, cols = ellipse(cy, cx, ry, rx, shape=image.shape, rotation=angle)
        half = (cols > cx) & (image[rows, cols] == labels[k])
        image[rows[half], cols[half]] = first_new_label + offset


def make_pair(size, rng):
    """A clean label image and a perturbed one, (size, size) int32 each."""
    shape = (size, size)
    n = max(4, int(DENSITY * size * size / 1e6))
    radii = rng.uniform(6, 16, size=(n, 2))
    objects = np.column_stack([rng.uniform(0, size, size=(n, 2)), radii, rng.uniform(0, np.pi, n)])
    clean = draw(shape, objects, np.arange(1, n + 1))

    moved = objects.copy()
    moved[:, :2] += rng.normal(0, 1.5, size=(n, 2))
    moved[:, 2:4] *= rng.uniform(0.85, 1.15, size=(n, 2))
    labels = np.arange(1, n + 1)
    # Merge 5 % of the objects into their nearest neighbour.
    merged = rng.choice(n, size=n // 20, replace=False)
    labels[merged] = labels[cKDTree(objects[:, :2]).query(objects[merged, :2], k=2)[1][:, 1]]
    # Lose 5 %, add 5 % spurious objects.
    kept = np.ones(n, dtype=bool)
    kept[rng.choice(n, size=n // 20, replace=False)] = False
    extra = n // 20
    spurious = np.column_stack(
        [rng.uniform(0, size, size=(extra, 2)), rng.uniform(4, 10, size=(extra, 2)), rng.uniform(0, np.pi, extra)]
    )
    moved, labels = np.concatenate([moved[kept], spurious]), np.concatenate([labels[kept], n + 1 + np.arange(extra)])
    perturbed = draw(shape, moved, labels)
    # Split 5 % in two.
    split(perturbed, moved, labels, rng.choice(len(moved), size=n // 20, replace=False), n + extra + 1)
    return clean, perturbed


def reference(labels_u, labels_v):
    """1 - adapted Rand error the official way, with scikit-image."""
    band = dilation(labels_u) != erosion(labels_u)
    mask = ((labels_u > 0) | (labels_v > 0)) & ~band
    u, v = singletons(labels_u[mask].astype(np.int64), labels_v[mask].astype(np.int64))
    return 1.0 - adapted_rand_error(u, v, ignore_labels=None)[0]


def singletons(u, v):
    """Copies of the masked arrays whose background pixels each get a fresh id."""
    u, v = u.copy(), v.copy()
    fresh = max(u.max(initial=0), v.max(initial=0)) + 1
    for array in (u, v):
        background = array == 0
        array[background] = fresh + np.arange(np.count_nonzero(background))
        fresh += np.count_nonzero(background)
    return u, v


def best_of(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return value, min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    print(f"{'size':>6} {'objects':>8} {'fg %':>5} {'ours ms':>9} {'skimage ms':>11} {'speed-up':>9} "
          f"{'ARE call ms':>12} {'value':>10}")
    for size in args.sizes:
        clean, perturbed = make_pair(size, rng)
        ours, ours_time = best_of(lambda: instance_consistency(clean, perturbed), args.repeats)
        theirs, theirs_time = best_of(lambda: reference(clean, perturbed), args.repeats)
        if abs(ours - theirs) > 1e-12:
            raise AssertionError(f"size {size}: instance_consistency {ours!r} != scikit-image {theirs!r}")
        # The scikit-image call alone, on arrays already masked and given singletons.
        mask = ((clean > 0) | (perturbed > 0)) & ~(dilation(clean) != erosion(clean))
        u, v = singletons(clean[mask].astype(np.int64), perturbed[mask].astype(np.int64))
        _, call_time = best_of(lambda: adapted_rand_error(u, v, ignore_labels=None), args.repeats)
        print(f"{size:>6} {clean.max():>8} {100 * np.mean(clean > 0):>5.1f} {1e3 * ours_time:>9.2f} "
              f"{1e3 * theirs_time:>11.2f} {theirs_time / ours_time:>8.1f}x {1e3 * call_time:>12.2f} {ours:>10.6f}")


if __name__ == "__main__":
    main()

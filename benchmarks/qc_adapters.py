"""Train the StarDist and Cellpose models of the quality-control benchmark on a real training split, offline.

No pretrained weights can be downloaded here, so the benchmark trains its own, as ``tests/tiny_models.py``
does for the tests but on real data and with larger networks: a StarDist2D (32 rays, depth-3 U-Net) and a
Cellpose 3 CPnet from scratch, both on the training split of one DSB2018 sub-domain (default ``fluo_256``;
the splits are the ones ``benchmarks/dsb_bank.py`` writes, symlinks into the shared data). The target
splits are never read. Models already trained are kept.

    python benchmarks/qc_adapters.py [--data PATH] [--out results/qc_adapters] [--source fluo_256]
                                     [--stardist-epochs 40] [--cellpose-epochs 8]

Writes ``OUT/stardist_<source>/`` (config + weights), ``OUT/cellpose_<source>`` (a Cellpose model file) and
``OUT/adapters.yaml``, bank entries for both (``kind: stardist`` / ``kind: cellpose``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dsb_bank import DEFAULT_DATA, DOMAINS, split_folder, write_splits  # noqa: E402
from tiny_models import train_tiny_cellpose, train_tiny_stardist  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _diameter(labels) -> float:
    """Median equivalent diameter (pixels) of the objects of a training split."""
    areas = np.concatenate([np.bincount(np.asarray(l).ravel())[1:] for l in labels])
    return float(np.sqrt(4 * np.median(areas[areas > 0]) / np.pi))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "results" / "qc_adapters"))
    parser.add_argument("--source", default="fluo_256", choices=sorted(DOMAINS))
    parser.add_argument("--stardist-epochs", type=int, default=40)
    parser.add_argument("--cellpose-epochs", type=int, default=8)
    parser.add_argument("--only", choices=("stardist", "cellpose"))
    args = parser.parse_args(argv)
    from cte_kit.data.folder import load_folder

    out = Path(args.out)
    write_splits(Path(args.data), out)
    data = load_folder(*split_folder(out, args.source, "train"), progress=False)
    images, labels = list(data.images), [np.asarray(l, dtype=np.int32) for l in data.labels]
    diameter = _diameter(labels)
    print(f"{args.source}: {len(images)} training images, median object diameter {diameter:.1f} px", flush=True)
    entries = []
    stardist = out / f"stardist_{args.source}"
    if args.only in (None, "stardist"):
        if not (stardist / "weights_best.h5").exists():
            started = time.perf_counter()
            train_tiny_stardist(out, stardist.name, epochs=args.stardist_epochs, steps_per_epoch=50, data=(images, labels),
                                n_rays=32, depth=3, width=16, patch=128)
            print(f"StarDist trained in {time.perf_counter() - started:.0f} s", flush=True)
    if (stardist / "weights_best.h5").exists():
        entries.append({"name": stardist.name, "kind": "stardist", "path": stardist.name})
    cellpose = out / "models" / f"cellpose_{args.source}"
    if args.only in (None, "cellpose"):
        if not cellpose.exists():
            started = time.perf_counter()
            train_tiny_cellpose(out, cellpose.name, epochs=args.cellpose_epochs, data=(images, labels),
                                diameter=round(diameter, 1), patch=128)
            print(f"Cellpose trained in {time.perf_counter() - started:.0f} s", flush=True)
    if cellpose.exists():
        entries.append({"name": cellpose.name, "kind": "cellpose", "path": str(cellpose.relative_to(out)),
                        "channels": [0, 0]})
    (out / "adapters.yaml").write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    print(f"bank entries: {out / 'adapters.yaml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

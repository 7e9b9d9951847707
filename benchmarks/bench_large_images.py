"""Large images through the runner: peak memory and time, tiled against whole, and what tiling changes in CTE.

One synthetic EM-like section (a mosaic of one 2048 px synthetic nuclei image in its eight flips and
rotations, cut to SIZE x SIZE) is ranked by two demo U-Nets with ``run_sweep`` - the pipeline of
``cte-kit rank``: clean and perturbed predictions, consistency, the result store with the clean
masks - under the kit's default setting (``gamma:0.7``, hard consistency) and bottleneck dropout
(``dropout:0.2``: the forked pair that shares the encoder). Every case runs in a fresh process, so
its peak resident memory (``ru_maxrss``) is its own:

* ``tiled``: ``--tile-size`` px tiles (default: the U-Net's default, 1024; margin = receptive-field radius);
* ``whole``: ``tile_size: null``, the image through the network at once (only where it fits:
  ``--whole`` sizes);
* the reference: the same pipeline on 256 px crops of the section (16 of them), measured in the
  same run: time is reported per megapixel against it, memory above the process's memory after
  loading the kit and the models.

Goal (issue 19): an 8192 x 8192 section through 2 U-Nets under 2 GB peak, and tiles that change CTE
by less than 1e-3 against a whole-image run where that fits in memory.

    python benchmarks/bench_large_images.py [--sizes 4096 8192] [--whole 2048 4096] [--settings gamma:0.7 dropout:0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("near_target", "sharp_clean")


def section(size: int) -> np.ndarray:
    """A SIZE x SIZE uint16 mosaic of one 2048 px synthetic image in its eight flips and rotations."""
    from cte_kit.data.synthetic import DEMO_TARGET, generate

    block = generate(DEMO_TARGET, 1, shape=(2048, 2048), seed=19).images[0]
    variants = [np.rot90(b, k) for b in (block, block[::-1]) for k in range(4)]
    blocks = -(-size // 2048)
    rows = [np.concatenate([variants[(r * blocks + c) % 8] for c in range(blocks)], axis=1) for r in range(blocks)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(path: Path, tile_size: int | None, settings: list[str], crops: int) -> dict:
    """One case in this process, on the section saved at ``path``: ``crops`` > 0 ranks that many 256 px crops."""
    from cte_kit.evaluation.sweep import read_results, run_sweep
    from cte_kit.models.bank import BankEntry, load_model
    from cte_kit.perturb import parse_perturbation
    from cte_kit.teaching.demo import demo_checkpoint

    image = np.load(path)
    size = image.shape[0]
    if crops:
        images = [np.ascontiguousarray(image[256 * (i // 4): 256 * (i // 4 + 1), 256 * (i % 4): 256 * (i % 4 + 1)])
                  for i in range(crops)]
    else:
        images = [image]
    names = [f"crop{i}" for i in range(len(images))] if crops else ["section"]
    bank = [BankEntry(name, "unet", str(demo_checkpoint(name)), settings={"tile_size": tile_size}) for name in MODELS]
    for entry in bank:
        load_model(entry)  # imports and the first load, outside the measured part
    baseline = _rss_mb()  # the kit, the models and the image in memory
    with tempfile.TemporaryDirectory() as folder:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run_sweep(bank, images, names, Path(folder) / "r.sqlite", [parse_perturbation(s) for s in settings],
                           ["hard"], progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rows = read_results(result)
    cte = {f"{r['model']} {r['perturbation']}": float(np.nanmean([q["cte"] for q in rows if q["model"] == r["model"]
                                                                   and q["perturbation"] == r["perturbation"]]))
           for r in rows}
    return {"size": size, "tile_size": tile_size, "crops": crops, "seconds": seconds, "cpu_seconds": cpu, "megapixels": sum(i.size for i in images) / 1e6,
            "peak_mb": _rss_mb(), "baseline_mb": baseline, "cte": cte, "failures": len(result.failures)}


def spawn(path: Path, tile_size: int | None, settings: list[str], crops: int = 0, memory_gb: float | None = None) -> dict | None:
    """One case in a fresh process; None when it ran out of the ``memory_gb`` address space it was given."""
    command = [sys.executable, __file__, "--case", str(path), str(tile_size), "--crops", str(crops), "--settings", *settings]

    def limit():  # a whole image that does not fit fails here, instead of calling the machine's OOM killer
        if memory_gb is not None:
            size = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                          preexec_fn=limit)
    if done.returncode != 0:
        if memory_gb is not None and ("MemoryError" in done.stderr or "alloc" in done.stderr.lower()):
            return None
        raise RuntimeError(f"case {path.name} tile {tile_size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="tiled sections (default: 4096 8192)")
    parser.add_argument("--whole", type=int, nargs="*", default=[2048, 4096],
                        help="sections also run whole, to compare CTE (default: 2048 4096)")
    parser.add_argument("--settings", nargs="+", default=["gamma:0.7", "dropout:0.2"])
    from cte_kit.models.unet import UNetModel

    parser.add_argument("--tile-size", type=int, nargs="+", default=[UNetModel.tile_size],
                        help=f"tile sizes to run (default: the U-Net's, {UNetModel.tile_size})")
    parser.add_argument("--whole-memory", type=float, default=12.0,
                        help="address space (GB) a whole-image case may use; beyond it, it is reported as not fitting")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--crops", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case[0]), None if args.case[1] == "None" else int(args.case[1]),
                                  args.settings, args.crops)))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="cte_large_"))

    def saved(size: int) -> Path:
        path = folder / f"section_{size}.npy"
        if not path.exists():
            np.save(path, section(size))  # made here: the cases measure the run, not the making of the image
        return path

    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; models {', '.join(MODELS)}; "
          f"settings {', '.join(args.settings)} (hard)")
    reference = spawn(saved(1024), None, args.settings, crops=16)
    per_mp = reference["seconds"] / reference["megapixels"]
    print(f"reference: 16 crops of 256 px, {reference['seconds']:.1f} s = {per_mp:.2f} s per megapixel, "
          f"peak {reference['peak_mb']:.0f} MB ({reference['peak_mb'] - reference['baseline_mb']:.0f} MB above the "
          f"{reference['baseline_mb']:.0f} MB after loading)")
    cpu_per_mp = reference["cpu_seconds"] / reference["megapixels"]
    print(f"  CPU time {reference['cpu_seconds']:.1f} s = {cpu_per_mp:.2f} s per megapixel (all threads; fairer than wall "
          "time on a loaded machine)")
    print(f"\n{'section':>9} {'tile':>6} {'time s':>8} {'s/MP vs ref':>11} {'CPU s':>8} {'CPU/MP vs ref':>13} {'peak MB':>8} "
          f"{'above load':>10}  CTE")
    results = {}
    for size in sorted(set(args.sizes) | set(args.whole)):
        for tile in list(args.tile_size) + ([None] if size in args.whole else []):
            case = spawn(saved(size), tile, args.settings, memory_gb=args.whole_memory if tile is None else None)
            if case is None:
                print(f"{size:>9} {'whole':>6}  does not fit in {args.whole_memory:.0f} GB of address space", flush=True)
                continue
            results[size, tile] = case
            ratio = case["seconds"] / case["megapixels"] / per_mp
            print(f"{size:>9} {tile or 'whole':>6} {case['seconds']:8.1f} {ratio:11.2f} {case['cpu_seconds']:8.1f} "
                  f"{case['cpu_seconds'] / case['megapixels'] / cpu_per_mp:13.2f} "
                  f"{case['peak_mb']:8.0f} {case['peak_mb'] - case['baseline_mb']:10.0f}  "
                  + ", ".join(f"{k} {v:.5f}" for k, v in case["cte"].items()), flush=True)
    for (size, tile), tiled in results.items():
        whole = results.get((size, None))
        if tile is not None and whole:
            difference = max(abs(tiled["cte"][k] - whole["cte"][k]) for k in whole["cte"])
            print(f"{size} px, tiles of {tile}: largest |CTE tiled - CTE whole| over models and settings = "
                  f"{difference:.2e} (goal < 1e-3); per setting: " + ", ".join(
                      f"{setting} {max(abs(tiled['cte'][k] - whole['cte'][k]) for k in whole['cte'] if k.endswith(' ' + setting)):.2e}"
                      for setting in args.settings))
        if size == 8192 and tile is not None:
            print(f"8192 px, tiles of {tile}: peak {tiled['peak_mb']:.0f} MB (goal < 2048 MB)")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

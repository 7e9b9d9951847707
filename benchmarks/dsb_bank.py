"""Train the real-data bank: kit U-Nets from the DSB2018 sub-domains, with the real ``cte-kit train``.

Each DSB2018 sub-domain of the shared data folder is split deterministically into train (75 %)
and held-out test (25 %) by a seeded permutation of its sorted file stems; the splits are
written as folders of symlinks under ``OUT/splits/<domain>/{train,test}/{images,labels}`` (the
data itself is never copied). One or more U-Nets are trained per source with
``cte_kit.cli.main(["train", ...])`` (``--task instance``: foreground + boundary); some sources
get a short training, a narrower, wider or deeper network, so that the good models differ by a
little. A bank YAML ``OUT/bank.yaml`` lists every model (``cte-kit rank --bank``), and
``OUT/bank_info.json`` records each model's source, steps, width, levels and training time.

The script is rerunnable: a model whose checkpoint exists is not trained again (its recorded
training time is kept in ``OUT/training_times.json``).

    python benchmarks/dsb_bank.py [--data PATH] [--out results/dsb_bank] [--scale 1.0] [--only NAME ...]
                                  [--device cuda] [--jobs 14] [--seed 0]

The full bank (14 models, 3000 steps of 16 patches of 128 x 128 for most) trains in a few
minutes on one GPU with ``--device cuda --jobs 14`` (one process per model); on a CPU, ``--scale``
multiplies every model's steps (0.05 for a smoke run). The ranking protocol that uses this bank
is ``benchmarks/bench_dsb_ranking.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = REPO / "results" / "dsb_bank"

#: Sub-domain short name -> folder in the shared data.
DOMAINS = {
    "fluo_256": "dsb2018_fluo_256",
    "fluo_360": "dsb2018_fluo_360",
    "fluo_520x696": "dsb2018_fluo_520x696",
    "fluo_other": "dsb2018_fluo_other",
    "histo": "dsb2018_histo",
    "brightfield": "dsb2018_brightfield",
}
TEST_FRACTION = 0.25
PATCH = 128
BATCH = 16
#: Instance method written into the bank for ranking: the boundary watershed that ``cte-kit train
#: --task instance`` saves as the default. Before its fix it over-segmented (every thin rim outside a
#: blurred boundary ring became a seed: ~7x too many objects, mAP ~0.07 where connected components gave
#: ~0.43 on fluo_256) and this bank used connected components; ``benchmarks/bench_instances.py``
#: compares the three.
INSTANCES = "watershed"
SPLIT_SEED = 2018


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    steps: int
    width: int = 16
    levels: int = 3
    seed: int = 0


FULL, SHORT = 3000, 300
#: The bank: every source once fully trained; most also short-trained (a tenth of the steps) or
#: with another width or depth, so that models of one source differ by a little.
BANK = (
    ModelSpec("fluo_256", "fluo_256", FULL),
    ModelSpec("fluo_256_short", "fluo_256", SHORT),
    ModelSpec("fluo_256_w8", "fluo_256", FULL, width=8),
    ModelSpec("fluo_360", "fluo_360", FULL),
    ModelSpec("fluo_360_short", "fluo_360", SHORT),
    ModelSpec("fluo_360_l4", "fluo_360", FULL, levels=4),
    ModelSpec("fluo_520x696", "fluo_520x696", FULL),
    ModelSpec("fluo_520x696_short", "fluo_520x696", SHORT),
    ModelSpec("fluo_520x696_w32", "fluo_520x696", FULL, width=32),
    ModelSpec("fluo_other", "fluo_other", FULL),
    ModelSpec("fluo_other_short", "fluo_other", SHORT),
    ModelSpec("histo", "histo", FULL),
    ModelSpec("histo_short", "histo", SHORT),
    ModelSpec("brightfield", "brightfield", FULL),
)


def split_stems(stems: list[str], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """Deterministic (train, test) stems: a seeded permutation of the sorted stems, the first part is test."""
    stems = sorted(stems)
    order = np.random.default_rng(seed).permutation(len(stems))
    n_test = max(1, int(round(test_fraction * len(stems))))
    test = sorted(stems[i] for i in order[:n_test])
    train = sorted(stems[i] for i in order[n_test:])
    return train, test


def write_splits(data: Path, out: Path) -> dict[str, dict[str, int]]:
    """Symlink folders ``out/splits/<domain>/<part>/{images,labels}``; returns the counts."""
    counts = {}
    for short, folder in DOMAINS.items():
        images = {p.stem: p for p in (data / folder / "images").iterdir() if p.suffix in (".tif", ".tiff", ".png")}
        labels = {p.stem: p for p in (data / folder / "labels").iterdir() if p.suffix in (".tif", ".tiff", ".png")}
        train, test = split_stems([s for s in images if s in labels])
        counts[short] = {"train": len(train), "test": len(test)}
        for part, stems in (("train", train), ("test", test)):
            for kind, files in (("images", images), ("labels", labels)):
                target = out / "splits" / short / part / kind
                target.mkdir(parents=True, exist_ok=True)
                wanted = {files[s].name for s in stems}
                for existing in target.iterdir():
                    if existing.name not in wanted:
                        existing.unlink()
                for stem in stems:
                    link = target / files[stem].name
                    if not link.exists():
                        link.symlink_to(files[stem].resolve())
    return counts


def split_folder(out: Path, domain: str, part: str) -> tuple[Path, Path]:
    base = Path(out) / "splits" / domain / part
    return base / "images", base / "labels"


def bank_entries(out: Path) -> list[dict]:
    """Entries of the models trained so far (only keys the U-Net adapter reads)."""
    entries = []
    for spec in BANK:
        if not (Path(out) / "models" / f"{spec.name}.pt").exists():
            continue
        entry = {"name": spec.name, "kind": "unet", "path": f"models/{spec.name}.pt", "instances": INSTANCES}
        if spec.source != "histo":
            entry["rgb"] = "grey"  # grey models read colour targets as luminance
        entries.append(entry)
    return entries


def bank_info(out: Path, times: dict | None = None) -> dict[str, dict]:
    """Per model: source sub-domain, steps, width, levels, training seconds (``bank_info.json``)."""
    info = {}
    for spec in BANK:
        if (Path(out) / "models" / f"{spec.name}.pt").exists():
            info[spec.name] = {"source": spec.source, "steps": spec.steps, "width": spec.width,
                               "levels": spec.levels, "patch": PATCH, "batch": BATCH,
                               "training_seconds": round((times or {}).get(spec.name, float("nan")), 1)}
    return info


def write_bank_files(out: Path, times: dict) -> None:
    (out / "bank.yaml").write_text(yaml.safe_dump({"models": bank_entries(out)}, sort_keys=False))
    (out / "bank_info.json").write_text(json.dumps(bank_info(out, times), indent=2))


def train_one(spec: ModelSpec, out: Path, steps: int, device: str, threads: int, seed: int) -> tuple[str, int, float]:
    """Train one model of the bank through the real CLI; returns (name, exit code, seconds)."""
    import torch

    torch.set_num_threads(threads)
    from cte_kit.cli import main as cli_main

    images, labels = split_folder(out, spec.source, "train")
    started = time.perf_counter()
    code = cli_main(["train", "--images", str(images), "--labels", str(labels), "--task", "instance",
                     "--out", str(out / "models" / f"{spec.name}.pt"), "--steps", str(steps),
                     "--width", str(spec.width), "--levels", str(spec.levels), "--patch-size", str(PATCH),
                     "--batch-size", str(BATCH), "--seed", str(seed), "--device", device, "--no-progress"])
    return spec.name, code, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (default: ../shared/data)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every model's steps")
    parser.add_argument("--only", nargs="*", help="train only these models")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="added to every model's training seed: a second bank of the same design (default: 0)")
    args = parser.parse_args(argv)

    data, out = Path(args.data), Path(args.out)
    if not (data / DOMAINS["fluo_256"]).is_dir():
        print(f"no DSB2018 data in {data}", file=sys.stderr)
        return 2
    counts = write_splits(data, out)
    print("splits (train/test):", ", ".join(f"{k} {v['train']}/{v['test']}" for k, v in counts.items()))
    (out / "models").mkdir(parents=True, exist_ok=True)
    times_path = out / "training_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    todo = []
    for spec in BANK:
        if args.only and spec.name not in args.only:
            continue
        if (out / "models" / f"{spec.name}.pt").exists():
            print(f"{spec.name}: exists, skipped")
            continue
        todo.append((spec, max(10, int(round(spec.steps * args.scale)))))
    # longest first, so that parallel jobs finish together
    todo.sort(key=lambda item: -item[1] * item[0].width ** 2 * item[0].levels)
    failed = 0
    # spawn, not fork: a forked child must not inherit a parent's CUDA or thread-pool state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = [pool.submit(train_one, spec, out, steps, args.device, args.threads, spec.seed + args.seed)
                   for spec, steps in todo]
        for future, (spec, steps) in zip(futures, todo):
            name, code, seconds = future.result()
            if code != 0:
                print(f"{name}: training failed ({code})", file=sys.stderr)
                failed += 1
                continue
            times[name] = seconds
            times_path.write_text(json.dumps(times, indent=2))
            write_bank_files(out, times)
            print(f"{name}: {steps} steps in {seconds:.0f} s", flush=True)
    write_bank_files(out, times)
    (out / "splits.json").write_text(json.dumps(counts, indent=2))
    print(f"bank: {out / 'bank.yaml'} ({len(bank_entries(out))} models)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

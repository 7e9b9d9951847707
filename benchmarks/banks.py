"""Real-data banks for the leave-one-domain-out protocols, described by data and trained with ``cte-kit train``.

A :class:`BankDesign` names the source domains (folders of the shared data), the models trained on
each (:class:`ModelSpec`: steps, width, depth, ``--task semantic|instance``, further ``cte-kit train``
options, or another trainer such as Cellpose's) and the models borrowed from another bank (a nuclei
model in a mitochondria bank is the wrong-task model users meet). Each domain is split
deterministically into train (75 %) and held-out test (25 %) by a seeded permutation of its sorted
file stems, or, for the slices of one volume (neighbouring slices are nearly the same image), by a
seeded contiguous block, so that no test slice has training slices on both sides; the train part is
split again the same way into ``fit`` and ``validation`` (20 %), on which a training recipe can be
chosen without looking at the test labels. The splits are folders of symlinks under
``OUT/splits/<domain>/{train,test,fit,validation}/{images,labels}`` (the data itself is never
copied). The bank YAML ``OUT/bank.yaml`` declares the design's task and lists every model
(``cte-kit rank --bank``); ``OUT/bank_info.json`` records each model's source, steps, width, levels,
options and training time.

:func:`main` trains a design and is rerunnable: a model whose checkpoint exists is not trained again
(its recorded training time is kept in ``OUT/training_times.json``). The designs: ``dsb_bank.py``
(nuclei), ``mito_bank.py`` (mitochondria in EM), ``cells_bank.py`` (cells, dense tissue included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_FRACTION = 0.25
#: Fraction of a domain's training part held out as validation, to choose a recipe on.
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 2018
SUFFIXES = (".tif", ".tiff", ".png")


@dataclass(frozen=True)
class ModelSpec:
    """One model: trained here on ``source`` (a domain of the design), or borrowed (``borrow``: bank folder name
    and model name, e.g. ``('dsb_bank', 'fluo_256')``, resolved beside this bank's folder).

    ``options`` are further ``cte-kit train`` arguments (they override the design's patch and batch
    size); ``kind`` is the bank entry's adapter and names the trainer (``'unet'``: ``cte-kit train``,
    others are passed to :func:`main`); ``part`` is the part of the source's split it trains on
    (``'train'``, or ``'fit'`` when ``'validation'`` chooses a recipe).
    """

    name: str
    source: str
    steps: int = 0
    width: int = 16
    levels: int = 3
    seed: int = 0
    task: str = "instance"
    borrow: tuple[str, str] | None = None
    options: tuple[str, ...] = ()
    kind: str = "unet"
    part: str = "train"


@dataclass(frozen=True)
class BankDesign:
    """A bank: its kit task, source domains (short name -> shared data folder), models and training settings.

    ``colour`` names the domains whose models read colour; every other model reads colour targets as
    luminance. ``instances`` is the instance method written into the entries of foreground+boundary
    models (the boundary watershed that ``cte-kit train --task instance`` saves as the default), or
    None to keep the method each checkpoint declares (``dt_watershed`` for dense tissue).
    ``volumes`` names the domains whose images are the slices of one volume (split in blocks).
    """

    name: str
    task: str
    domains: Mapping[str, str]
    models: tuple[ModelSpec, ...]
    patch: int = 128
    batch: int = 16
    instances: str | None = "watershed"
    colour: frozenset = field(default_factory=frozenset)
    volumes: frozenset = field(default_factory=frozenset)

    def own(self, domain: str) -> set[str]:
        """The models trained on ``domain`` (left out when it is the target)."""
        return {spec.name for spec in self.models if spec.source == domain}


def split_stems(stems, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
                contiguous: bool = False) -> tuple[list[str], list[str]]:
    """Deterministic (train, test) stems of the sorted stems; at least one goes to test.

    Without ``contiguous`` test is the first part of a seeded permutation; with it, a block of
    consecutive sorted stems (the slices of one volume) whose start is drawn with the seed.
    """
    stems = sorted(stems)
    n_test = max(1, int(round(test_fraction * len(stems))))
    rng = np.random.default_rng(seed)
    if contiguous:
        start = int(rng.integers(0, len(stems) - n_test + 1))
        chosen = set(range(start, start + n_test))
    else:
        chosen = set(rng.permutation(len(stems))[:n_test].tolist())
    return ([stem for i, stem in enumerate(stems) if i not in chosen],
            [stem for i, stem in enumerate(stems) if i in chosen])


def _link(out: Path, domain: str, part: str, stems, images: dict, labels: dict) -> None:
    for kind, files in (("images", images), ("labels", labels)):
        target = out / "splits" / domain / part / kind
        target.mkdir(parents=True, exist_ok=True)
        wanted = {files[s].name for s in stems}
        for existing in target.iterdir():
            if existing.name not in wanted:
                existing.unlink()
        for stem in stems:
            link = target / files[stem].name
            if not link.exists():
                link.symlink_to(files[stem].resolve())


def write_splits(design: BankDesign, data: Path, out: Path) -> dict[str, dict[str, int]]:
    """Symlink folders ``out/splits/<domain>/{train,test,fit,validation}/{images,labels}``; returns the counts."""
    counts = {}
    for short, folder in design.domains.items():
        images, labels = ({p.stem: p for p in (data / folder / kind).iterdir() if p.suffix in SUFFIXES}
                          for kind in ("images", "labels"))
        contiguous = short in design.volumes
        train, test = split_stems([s for s in images if s in labels], contiguous=contiguous)
        fit, validation = split_stems(train, VALIDATION_FRACTION, SPLIT_SEED + 1, contiguous=contiguous)
        parts = {"train": train, "test": test, "fit": fit, "validation": validation}
        for part, stems in parts.items():
            _link(out, short, part, stems, images, labels)
        counts[short] = {part: len(stems) for part, stems in parts.items()}
    return counts


def split_folder(out: Path, domain: str, part: str) -> tuple[Path, Path]:
    base = Path(out) / "splits" / domain / part
    return base / "images", base / "labels"


def checkpoint(out: Path, spec: ModelSpec) -> Path:
    """Where a model's weights are: this bank's ``models/`` or the lending bank's, beside it."""
    if spec.borrow is not None:
        return Path(out).parent / spec.borrow[0] / "models" / f"{spec.borrow[1]}.pt"
    return Path(out) / "models" / f"{spec.name}.pt"


def bank_entries(design: BankDesign, out: Path) -> list[dict]:
    """Entries of the models that exist so far (only keys the U-Net adapter reads)."""
    entries = []
    for spec in design.models:
        path = checkpoint(out, spec)
        if not path.exists():
            continue
        entry = {"name": spec.name, "kind": spec.kind, "path": str(Path("..") / spec.borrow[0] / "models" / path.name)
                 if spec.borrow else f"models/{path.name}"}
        if spec.kind == "cellpose":
            entry["channels"] = [0, 0]  # grey: cytoplasm in the first channel, no nuclear channel
        elif spec.source not in design.colour:
            entry["rgb"] = "grey"  # grey models read colour targets as luminance
        if spec.kind == "unet" and spec.task == "instance" and design.instances is not None:
            entry["instances"] = design.instances
        entries.append(entry)
    return entries


def bank_info(design: BankDesign, out: Path, times: dict | None = None) -> dict[str, dict]:
    """Per model: source, steps, width, levels, training seconds (``bank_info.json``)."""
    info = {}
    for spec in design.models:
        if checkpoint(out, spec).exists():
            info[spec.name] = {"kind": spec.kind, "source": spec.source, "part": spec.part, "task": spec.task,
                               "steps": spec.steps, "width": spec.width, "levels": spec.levels,
                               "patch": design.patch, "batch": design.batch, "options": list(spec.options),
                               "borrowed_from": "/".join(spec.borrow) if spec.borrow else None,
                               "training_seconds": round((times or {}).get(spec.name, float("nan")), 1)}
    return info


def write_bank_files(design: BankDesign, out: Path, times: dict) -> None:
    (out / "bank.yaml").write_text(yaml.safe_dump({"task": design.task, "models": bank_entries(design, out)},
                                                  sort_keys=False))
    (out / "bank_info.json").write_text(json.dumps(bank_info(design, out, times), indent=2))


def train_unet_cli(design: BankDesign, spec: ModelSpec, out: Path, steps: int, device: str, seed: int) -> int:
    """Train one kit U-Net through the real ``cte-kit train``; returns its exit code."""
    from cte_kit.cli import main as cli_main

    images, labels = split_folder(out, spec.source, spec.part)
    # the spec's options come last: argparse keeps the last value, so they override the design's
    return cli_main(["train", "--images", str(images), "--labels", str(labels), "--task", spec.task,
                     "--out", str(checkpoint(out, spec)), "--steps", str(steps),
                     "--width", str(spec.width), "--levels", str(spec.levels), "--patch-size", str(design.patch),
                     "--batch-size", str(design.batch), "--seed", str(seed), "--device", device, "--no-progress",
                     *spec.options])


def train_one(trainer: Callable, design: BankDesign, spec: ModelSpec, out: Path, steps: int, device: str,
              threads: int, seed: int) -> tuple[str, int, float]:
    """Train one model of the bank with ``trainer`` (in a worker process); returns (name, exit code, seconds)."""
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    code = trainer(design, spec, out, steps, device, seed)
    return spec.name, code, time.perf_counter() - started


def main(design: BankDesign, default_out: Path, argv=None, description: str = "",
         trainers: Mapping[str, Callable] | None = None) -> int:
    """Train the models of ``design`` that are missing (the command line of every bank builder).

    ``trainers`` maps a :attr:`ModelSpec.kind` other than ``'unet'`` (:func:`train_unet_cli`) to
    ``trainer(design, spec, out, steps, device, seed) -> exit code``, run in its own process.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (default: ../shared/data)")
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every model's steps")
    parser.add_argument("--only", nargs="*", help="train only these models")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="added to every model's training seed: a second bank of the same design (default: 0)")
    args = parser.parse_args(argv)

    data, out = Path(args.data), Path(args.out)
    missing = [folder for folder in design.domains.values() if not (data / folder).is_dir()]
    if missing:
        print(f"no {', '.join(missing)} in {data}", file=sys.stderr)
        return 2
    counts = write_splits(design, data, out)
    print("splits (train/test, fit/validation):",
          ", ".join(f"{k} {v['train']}/{v['test']}, {v['fit']}/{v['validation']}" for k, v in counts.items()))
    trainers = {"unet": train_unet_cli, **(trainers or {})}
    (out / "models").mkdir(parents=True, exist_ok=True)
    times_path = out / "training_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    todo = []
    for spec in design.models:
        if args.only and spec.name not in args.only:
            continue
        if spec.borrow is not None:
            if not checkpoint(out, spec).exists():
                print(f"{spec.name}: borrowed from {'/'.join(spec.borrow)}, which is not trained yet: left out",
                      file=sys.stderr)
            continue
        if checkpoint(out, spec).exists():
            print(f"{spec.name}: exists, skipped")
            continue
        todo.append((spec, max(10, int(round(spec.steps * args.scale)))))
    # longest first, so that parallel jobs finish together
    todo.sort(key=lambda item: -item[1] * item[0].width ** 2 * item[0].levels)
    failed = 0
    # spawn, not fork: a forked child must not inherit a parent's CUDA or thread-pool state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = [pool.submit(train_one, trainers[spec.kind], design, spec, out, steps, args.device, args.threads,
                               spec.seed + args.seed) for spec, steps in todo]
        for future, (spec, steps) in zip(futures, todo):
            name, code, seconds = future.result()
            if code != 0:
                print(f"{name}: training failed ({code})", file=sys.stderr)
                failed += 1
                continue
            times[name] = seconds
            times_path.write_text(json.dumps(times, indent=2))
            write_bank_files(design, out, times)
            print(f"{name}: {steps} steps in {seconds:.0f} s", flush=True)
    write_bank_files(design, out, times)
    (out / "splits.json").write_text(json.dumps(counts, indent=2))
    print(f"bank: {out / 'bank.yaml'} ({len(bank_entries(design, out))} models)")
    return 1 if failed else 0

"""What the bank builders share (``dsb_bank.py``, ``cells_bank.py``): held-out splits and the training of a bank.

* :func:`split_stems` - a deterministic (train, test) split of a dataset's sorted file stems by a
  seeded permutation, or, for the slices of one volume (neighbouring slices are nearly the same
  image), a seeded contiguous block, so that no test slice has a training slice next to it on
  both sides;
* :func:`write_splits` - the splits as folders of symlinks ``OUT/splits/<domain>/<part>/{images,labels}``
  (the data itself is never copied), with parts ``train`` and ``test``, and ``fit`` and
  ``validation`` (the train part split again), on which a training recipe is chosen without
  looking at the test labels;
* :class:`ModelSpec` and :func:`train_bank` - the models of a bank trained one process each
  through the real ``cte-kit train`` (or any other trainer the spec names), rerunnable: a model
  whose checkpoint exists is not trained again, its training time is kept in
  ``OUT/training_times.json``, and the bank files are rewritten after every model.
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
from typing import Callable, Mapping, Sequence

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_FRACTION = 0.25
#: Fraction of a domain's training part held out as validation, to choose a recipe on.
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 2018
SUFFIXES = (".tif", ".tiff", ".png")


def split_stems(stems: Sequence[str], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
                contiguous: bool = False) -> tuple[list[str], list[str]]:
    """Deterministic (train, test) stems of the sorted stems.

    Parameters
    ----------
    stems : sequence of str
    test_fraction : float
        At least one stem goes to test.
    seed : int
    contiguous : bool
        False: test is the first part of a seeded permutation. True: test is a block of
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
    test = [stem for i, stem in enumerate(stems) if i in chosen]
    train = [stem for i, stem in enumerate(stems) if i not in chosen]
    return train, test


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix in SUFFIXES}


def _link(out: Path, domain: str, part: str, stems: Sequence[str], images: dict, labels: dict) -> None:
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


def write_splits(data: Path, out: Path, domains: Mapping[str, str], volumes: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """Symlink folders ``out/splits/<domain>/{train,test,fit,validation}/{images,labels}``; returns the counts.

    Parameters
    ----------
    data : Path
        Shared data folder with ``<folder>/images`` and ``<folder>/labels``.
    out : Path
    domains : mapping of str to str
        Short domain name -> folder in ``data``.
    volumes : sequence of str
        Domains whose images are the slices of one volume: split into contiguous blocks.
    """
    counts = {}
    for short, folder in domains.items():
        images, labels = _files(data / folder / "images"), _files(data / folder / "labels")
        contiguous = short in volumes
        train, test = split_stems([s for s in images if s in labels], contiguous=contiguous)
        fit, validation = split_stems(train, VALIDATION_FRACTION, SPLIT_SEED + 1, contiguous=contiguous)
        parts = {"train": train, "test": test, "fit": fit, "validation": validation}
        for part, stems in parts.items():
            _link(out, short, part, stems, images, labels)
        counts[short] = {part: len(stems) for part, stems in parts.items()}
    return counts


def split_folder(out: Path, domain: str, part: str) -> tuple[Path, Path]:
    """(images, labels) folders of one part of a domain's split."""
    base = Path(out) / "splits" / domain / part
    return base / "images", base / "labels"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a bank: its name, source domain, steps and how it is trained.

    Attributes
    ----------
    name, source : str
        Model name (checkpoint ``models/<name>.pt``) and the domain its training part comes from.
    steps : int
    width, levels : int
        Kit U-Net architecture.
    seed : int
    options : tuple of str
        Further ``cte-kit train`` arguments (patch and batch size, boundary weight, ...).
    kind : str
        ``'unet'`` (the kit's ``cte-kit train``) or another trainer the bank builder knows.
    settings : mapping
        Extra keys of the model's bank entry.
    part : str
        The part of the source's split it trains on: ``'train'`` for a bank, ``'fit'`` for a
        recipe trial scored on ``'validation'``.
    """

    name: str
    source: str
    steps: int
    width: int = 16
    levels: int = 3
    seed: int = 0
    options: tuple[str, ...] = ()
    kind: str = "unet"
    settings: Mapping = field(default_factory=dict)
    part: str = "train"

    @property
    def checkpoint(self) -> str:
        return f"models/{self.name}.pt"

    def cost(self, steps: int) -> float:
        """A rough relative training cost, to start the longest trainings first."""
        return steps * self.width ** 2 * self.levels


def train_unet_cli(spec: ModelSpec, out: Path, steps: int, device: str, threads: int, seed: int) -> int:
    """Train one kit U-Net of a bank with ``cte-kit train --task instance``; returns its exit code."""
    import torch

    torch.set_num_threads(threads)
    from cte_kit.cli import main as cli_main

    images, labels = split_folder(out, spec.source, spec.part)
    return cli_main(["train", "--images", str(images), "--labels", str(labels), "--task", "instance",
                     "--out", str(out / spec.checkpoint), "--steps", str(steps), "--width", str(spec.width),
                     "--levels", str(spec.levels), "--seed", str(seed), "--device", device, "--no-progress",
                     *spec.options])


def _timed(trainer: Callable, spec: ModelSpec, *args) -> tuple[str, int, float]:
    started = time.perf_counter()
    code = trainer(spec, *args)
    return spec.name, code, time.perf_counter() - started


def add_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    """The options every bank builder takes."""
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (default: ../shared/data)")
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every model's steps")
    parser.add_argument("--only", nargs="*", help="train only these models")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="added to every model's training seed: a second bank of the same design (default: 0)")


def train_bank(bank: Sequence[ModelSpec], args: argparse.Namespace, write_bank_files: Callable[[Path, dict], None],
               trainers: Mapping[str, Callable] | None = None) -> int:
    """Train the models of ``bank`` not yet in ``args.out/models`` and write the bank files after each.

    Parameters
    ----------
    bank : sequence of ModelSpec
    args : argparse.Namespace
        With the options of :func:`add_arguments`.
    write_bank_files : callable
        ``write_bank_files(out, times)`` writes ``bank.yaml`` and the bank's records.
    trainers : mapping of str to callable, optional
        Trainer per :attr:`ModelSpec.kind` besides ``'unet'`` (:func:`train_unet_cli`); each is
        called ``trainer(spec, out, steps, device, threads, seed)`` in its own process and returns
        an exit code.

    Returns
    -------
    int
        0 when every model trained, 1 when some failed.
    """
    out = Path(args.out)
    trainers = {"unet": train_unet_cli, **(trainers or {})}
    (out / "models").mkdir(parents=True, exist_ok=True)
    times_path = out / "training_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    todo = []
    for spec in bank:
        if args.only and spec.name not in args.only:
            continue
        if (out / spec.checkpoint).exists():
            print(f"{spec.name}: exists, skipped")
            continue
        todo.append((spec, max(10, int(round(spec.steps * args.scale)))))
    # longest first, so that parallel jobs finish together
    todo.sort(key=lambda item: -item[0].cost(item[1]))
    failed = 0
    # spawn, not fork: a forked child must not inherit a parent's CUDA or thread-pool state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = [pool.submit(_timed, trainers[spec.kind], spec, out, steps, args.device, args.threads,
                               spec.seed + args.seed) for spec, steps in todo]
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
    return 1 if failed else 0


def write_bank_yaml(out: Path, entries: list[dict]) -> None:
    (Path(out) / "bank.yaml").write_text(yaml.safe_dump({"models": entries}, sort_keys=False))

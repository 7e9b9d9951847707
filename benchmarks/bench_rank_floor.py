"""CTE at its floor: ``cte-kit rank`` with the defaults against one plain ``predict`` of the same bank and images.

The default ranking (``gamma:0.7`` for hard and instance consistency) needs exactly two predictions
per model and image, the clean one and the perturbed one, each with its post-processing: its floor
is 2 plain passes. For each bank this script measures, in one process and interleaved (``--repeats``
rounds, medians; wall and CPU time, i.e. the process time of all its threads):

* the reference: every model of the bank predicts the images once (``model.predict``; models loaded
  before the clock starts, afresh each round, so first-call costs such as TensorFlow's graph
  tracing count as they count in a rank);
* the rank: ``cte-kit rank --bank BANK --images DIR --consistency hard --consistency instance``
  run in this process (``cte_kit.cli.main``) into a fresh result store: reading the images,
  loading the models, both passes, consistency, the store, the guards and the summary;

and prints ``rank / predict``. Then one more round of each runs with timers on the pipeline's
steps (exclusive seconds: a step's time excludes the timed steps it calls), which shows where
the time beyond the two passes goes.

Banks (``--banks``):

* ``unet`` - the kit U-Net bank: the first ``--unet-models`` (default 6) kit U-Nets of the embedded
  demo bank, with the instance method they store (connected components) or the one ``--instances``
  names (``watershed``: the seeded watershed, on the distance transform for these foreground-only
  networks), or the bank YAML ``--unet-bank`` (e.g. ``results/dsb_bank/bank.yaml`` of
  ``benchmarks/dsb_bank.py``: boundary U-Nets with the boundary watershed);
* ``mixed`` - the first two models of that bank, a StarDist and a Cellpose model: tiny ones trained
  offline on synthetic nuclei as ``tests/tiny_models.py`` trains them (kept under ``--cache``), or
  ``--stardist FOLDER`` / ``--cellpose FILE``.

The images are ``--images`` images of ``--size`` px of the demo's synthetic target, or the first
``--images`` files of ``--image-dir`` (e.g. a DSB2018 folder of the shared data).

    python benchmarks/bench_rank_floor.py [--banks unet,mixed] [--images 100] [--size 256] [--repeats 3]
        [--unet-models 6] [--instances watershed] [--unet-bank YAML] [--image-dir DIR] [--cache results/bench_rank_floor]

On a shared machine compare variants by CPU time with ``OMP_NUM_THREADS=1`` (one torch thread: every
step's CPU time is then its own thread's).

``--short`` runs tiny sizes in seconds (CI runs it; no figure of a short run means anything).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import io
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
import tifffile
import torch

from cte_kit.cli import main as cli_main
from cte_kit.data.folder import load_folder
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.models.bank import BankEntry, load_model, read_bank, write_bank
from cte_kit.models.instances import INSTANCE_METHODS
from cte_kit.teaching.demo import demo_bank_entries

REPO = Path(__file__).resolve().parents[1]
# the shared timing helpers beside this file; the tiny StarDist and Cellpose models live with the tests
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests")]
from _timing import wall_and_cpu  # noqa: E402

#: Timed steps: (label, module or class path, attribute). A step's seconds exclude the timed steps it calls.
STEPS = (
    ("read images (TIFF)", "cte_kit.data.folder", "load_folder"),
    ("load models", "cte_kit.runs.backends", "load_model"),
    ("model keys (hash weights)", "cte_kit.runs.runner", "model_identity"),
    ("image keys (hash pixels)", "cte_kit.runs.runner", "image_key"),
    ("plan (resume check)", "cte_kit.runs.runner", "plan"),
    ("normalisation", "cte_kit.models.base.SegmentationModel", "prepare"),
    ("perturbation (gamma)", "cte_kit.perturb.input.InputPerturbation", "apply"),
    ("network (forward pass, adapter)", "cte_kit.models.unet.UNetModel", "_predict_normalised"),
    ("network (forward pass, adapter)", "cte_kit.models.stardist.StarDistModel", "_predict_normalised"),
    ("network (forward pass, adapter)", "cte_kit.models.cellpose.CellposeModel", "_predict_normalised"),
    ("instance post-processing", "cte_kit.models.unet", "instances_from_probability"),
    ("instance post-processing", "stardist.models.StarDist2D", "_instances_from_prediction"),
    ("instance post-processing", "cellpose.models.CellposeModel", "_compute_masks"),
    ("consistency", "cte_kit.runs.units", "pair_scores"),
    ("per-object values (best IoU)", "cte_kit.runs.units", "mean_best_iou"),
    ("clean predictions kept", "cte_kit.runs.units", "_kept"),
    ("store writes", "cte_kit.runs.store.ResultStore", "write"),
    ("read results", "cte_kit.evaluation.sweep", "read_results"),
    ("guards", "cte_kit.evaluation.sweep", "sweep_guards"),
    ("guards: solidity (convex hulls)", "cte_kit.estimators.guards", "_solidity"),
    ("summary", "cte_kit.evaluation.summary", "summarize_results"),
)
#: The steps that make up a plain pass (the reference is made of them alone).
PASS_STEPS = ("normalisation", "network (forward pass, adapter)", "instance post-processing")
CONSISTENCIES = ("hard", "instance")


def _resolve(path: str):
    """A module, or a class inside a module, from its dotted path (None when its library is absent)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    return None


class StepTimers:
    """Exclusive wall and CPU seconds of the :data:`STEPS` while :meth:`active`.

    CPU seconds are the process's (every thread's: torch's intra-op threads count); the nesting is
    tracked per thread.
    """

    def __init__(self, libraries: bool):
        self.seconds: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2))
        self.libraries = libraries
        self._local = threading.local()

    def _wrap(self, label: str, function):
        timers = self

        @functools.wraps(function)
        def timed(*args, **kwargs):
            stack = timers._local.__dict__.setdefault("stack", [])
            stack.append(np.zeros(2))
            start = np.array([time.perf_counter(), time.thread_time()])
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = np.array([time.perf_counter(), time.thread_time()]) - start
                inner = stack.pop()
                timers.seconds[label] += elapsed - inner
                if stack:
                    stack[-1] += elapsed
        return timed

    @contextlib.contextmanager
    def active(self):
        with contextlib.ExitStack() as stack:
            for label, path, attribute in STEPS:
                if not self.libraries and path.split(".")[0] in ("stardist", "cellpose"):
                    continue
                if not self.libraries and path.endswith(("StarDistModel", "CellposeModel")):
                    continue
                owner = _resolve(path)
                if owner is None:
                    continue
                # a missing attribute raises here: a renamed step must be renamed in STEPS too
                stack.enter_context(mock.patch.object(owner, attribute, self._wrap(label, getattr(owner, attribute))))
            yield self


# -- banks and images --------------------------------------------------------------------------------------------
def unet_bank(n_models: int, instances: str | None) -> list[BankEntry]:
    """The first ``n_models`` kit U-Nets of the embedded demo bank, with another instance method if asked."""
    entries = demo_bank_entries()[:n_models]
    if instances is not None:
        entries = [dataclasses.replace(entry, settings={**entry.settings, "instances": instances}) for entry in entries]
    return entries


def mixed_bank(unets: list[BankEntry], cache: Path, stardist: str | None, cellpose: str | None) -> list[BankEntry]:
    """Two U-Nets of the U-Net bank, a StarDist and a Cellpose model (tiny ones trained offline when not given)."""
    from tiny_models import train_tiny_cellpose, train_tiny_stardist

    if stardist is None:
        stardist = cache / "tiny_stardist"
        if not (stardist / "weights_best.h5").is_file():
            train_tiny_stardist(cache)
    if cellpose is None:
        cellpose = cache / "models" / "tiny_cellpose"
        if not cellpose.is_file():
            cellpose = train_tiny_cellpose(cache)
    return unets[:2] + [BankEntry("stardist", "stardist", str(stardist)),
                        BankEntry("cellpose", "cellpose", str(cellpose), settings={"channels": [0, 0]})]


def target_folder(folder: Path, n_images: int, size: int, source: str | None) -> Path:
    """A folder of ``n_images`` TIFF images: the demo's synthetic target, or the first files of ``source``."""
    folder.mkdir(parents=True, exist_ok=True)
    if source is None:
        data = generate(DEMO_TARGET, n_images, shape=(size, size), seed=7)
        images, names = data.images, data.names
    else:
        found = load_folder(source, progress=False)
        images, names = found.images[:n_images], found.names[:n_images]
    for image, name in zip(images, names):
        tifffile.imwrite(folder / f"{name}.tif", np.asarray(image))
    return folder


# -- measuring ---------------------------------------------------------------------------------------------------
def predict_all(entries: list[BankEntry], images: list, names: list) -> tuple[float, float]:
    """Wall and CPU seconds of one plain predict by every model (each loaded before its clock starts)."""
    wall = cpu = 0.0
    for entry in entries:
        model = load_model(entry)
        seconds = wall_and_cpu(lambda: model.predict(images, names))
        wall, cpu = wall + seconds[0], cpu + seconds[1]
    return wall, cpu


def rank(bank_file: Path, image_dir: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``cte-kit rank`` with the default settings, in this process, into a fresh store."""
    arguments = ["rank", "--bank", str(bank_file), "--images", str(image_dir), "--out", str(out), "--no-progress"]
    arguments += [a for c in CONSISTENCIES for a in ("--consistency", c)]
    codes, said = [], io.StringIO()
    # the CLI's table and its warnings (the guards flag the under-trained models of a short run) are not measured
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
        seconds = wall_and_cpu(lambda: codes.append(cli_main(arguments)))
    if codes[0] != 0:
        raise RuntimeError(f"cte-kit {' '.join(arguments)} exited {codes[0]}:\n{said.getvalue()}")
    return seconds


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def measure(label: str, entries: list[BankEntry], image_dir: Path, folder: Path, repeats: int) -> dict:
    """Interleaved rounds of the reference and the rank, then one timed round of each; prints the tables."""
    bank_file = write_bank(entries, folder / f"{label}.yaml")
    target = load_folder(image_dir, progress=False)
    images, names = list(target.images), list(target.names)
    libraries = any(entry.kind != "unet" for entry in entries)
    before = load()
    # imports, oneDNN's kernel choice and first calls happen here, not in the first timed round
    rank(bank_file, image_dir, folder / f"{label}_warm-up.sqlite")
    predicts, ranks = [], []
    for repeat in range(repeats):
        predicts.append(predict_all(entries, images, names))
        ranks.append(rank(bank_file, image_dir, folder / f"{label}_{repeat}.sqlite"))
    timers = {}
    for what, function in (("predict", lambda: predict_all(entries, images, names)),
                           ("rank", lambda: rank(bank_file, image_dir, folder / f"{label}_timed.sqlite"))):
        with StepTimers(libraries).active() as timer:
            total = np.array(function())
        timers[what] = (total, dict(timer.seconds))
    after = load()

    predict, ranked = np.median(predicts, axis=0), np.median(ranks, axis=0)
    ratio = ranked / predict
    shape = "x".join(str(s) for s in np.shape(images[0])[:2])
    print(f"\nbank '{label}': {len(entries)} models ({', '.join(sorted({e.kind for e in entries}))}) x {len(images)} "
          f"images of {shape} px; cte-kit rank with the defaults (gamma:0.7, hard + instance consistency); "
          f"{torch.get_num_threads()} torch threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"medians of {repeats} interleaved rounds; load average (1/5/15 min) {before} before, {after} after")
    print(f"{'what':<38} {'wall s':>8} {'CPU s':>8}   rounds (wall s / CPU s)")
    for name, median, rounds in (("one plain predict, every model (ref)", predict, predicts),
                                 ("cte-kit rank, defaults", ranked, ranks)):
        print(f"{name:<38} {median[0]:8.2f} {median[1]:8.2f}   " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in rounds))
    print(f"RATIO rank / predict [{label}]: {ratio[0]:.2f} wall, {ratio[1]:.2f} CPU "
          "(floor 2.00: the clean and the perturbed pass; goal <= 2.30 for the U-Net bank)")

    (predict_total, predict_steps), (rank_total, rank_steps) = timers["predict"], timers["rank"]
    print(f"\nWhere the time goes [{label}]: one more round of each with timers on its steps (exclusive seconds: a "
          "step's time excludes the timed steps it calls); '/ ref': CPU s in units of this round's plain predict")
    print(f"{'step':<38} {'predict wall':>12} {'CPU':>7} {'rank wall':>10} {'CPU':>7} {'/ ref':>7}")
    zero = np.zeros(2)
    rows = [(step, predict_steps.get(step, zero), rank_steps.get(step, zero))
            for step in dict.fromkeys(step for step, _, _ in STEPS) if step in predict_steps or step in rank_steps]
    rows.append(("rest (untimed; other torch threads)", predict_total - sum(predict_steps.values(), zero),
                 rank_total - sum(rank_steps.values(), zero)))
    rows.append(("total", predict_total, rank_total))
    for step, in_predict, in_rank in rows:
        print(f"{step:<38} {in_predict[0]:12.2f} {in_predict[1]:7.2f} {in_rank[0]:10.2f} {in_rank[1]:7.2f} "
              f"{in_rank[1] / predict_total[1]:7.3f}")
    passes = sum((rank_steps.get(step, zero) for step in PASS_STEPS), zero)
    beyond = rank_total - passes
    print(f"the two passes in the rank (normalisation, network, instances): {passes[1]:.2f} CPU s = "
          f"{passes[1] / predict_total[1]:.2f} ref; everything else: {beyond[1]:.2f} CPU s = "
          f"{beyond[1] / predict_total[1]:.2f} ref")
    return {"bank": label, "predict": predict, "rank": ranked, "ratio": ratio}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", default="unet,mixed", help="comma-separated subset of unet, mixed")
    parser.add_argument("--images", type=int, default=100, help="target images (default: 100)")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic target images (default: 256)")
    parser.add_argument("--image-dir", help="take the first --images files of this folder instead of synthetic ones")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of predict and rank (default: 3)")
    parser.add_argument("--unet-bank", help="bank YAML of kit U-Nets instead of the demo bank's")
    parser.add_argument("--unet-models", type=int, default=6, help="kit U-Nets of the demo bank (default: 6)")
    parser.add_argument("--instances", choices=INSTANCE_METHODS,
                        help="instance method of the demo bank's U-Nets (default: the one they store, components)")
    parser.add_argument("--stardist", help="StarDist model folder for the mixed bank (default: a tiny one trained here)")
    parser.add_argument("--cellpose", help="Cellpose model file for the mixed bank (default: a tiny one trained here)")
    parser.add_argument("--cache", default=str(REPO / "results" / "bench_rank_floor"),
                        help="where models trained here are kept between runs (default: results/bench_rank_floor)")
    parser.add_argument("--short", action="store_true",
                        help="tiny sizes that run in seconds (CI): 4 images of 64 px, 2 U-Nets, 1 round")
    args = parser.parse_args(argv)
    banks = args.banks.split(",")
    unknown = set(banks) - {"unet", "mixed"}
    if unknown:
        parser.error(f"unknown banks {sorted(unknown)}")
    if args.short:
        args.images, args.size, args.repeats, args.unet_models = 4, 64, 1, 2
    cache = Path(args.cache).resolve()  # bank files resolve relative paths against their own folder
    cache.mkdir(parents=True, exist_ok=True)

    if args.unet_bank:
        unets = read_bank(args.unet_bank)
        source = f"the bank {args.unet_bank}"
    else:
        unets = unet_bank(args.unet_models, args.instances)
        source = (f"the first {len(unets)} kit U-Nets of the demo bank (instances: "
                  f"{args.instances or 'as stored, connected components'})")
    print(f"{os.cpu_count()} CPUs; U-Nets: {source}; images: "
          + (f"the first {args.images} of {args.image_dir}" if args.image_dir else
             f"{args.images} synthetic nuclei images of {args.size} px (the demo's target domain)"))
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        image_dir = target_folder(folder / "images", args.images, args.size, args.image_dir)
        for label in banks:
            entries = unets if label == "unet" else mixed_bank(unets, cache, args.stardist, args.cellpose)
            results.append(measure(label, entries, image_dir, folder, args.repeats))
    print("\nsummary: " + "; ".join(f"{r['bank']} rank / predict {r['ratio'][0]:.2f} wall, {r['ratio'][1]:.2f} CPU"
                                    for r in results) + f"; load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

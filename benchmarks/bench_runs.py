"""The runner at scale: serial against Dask, the result store's cost per row, ranking 10 models x 100
images end to end, and resuming a complete store.

Every figure is a ratio against a reference measured in the same run, and the median of
``--repeats`` runs (the machine may be shared). The bank is the embedded demo bank (7 kit U-Nets)
and the images are synthetic nuclei of the demo's target domain at ``--size`` pixels, scored with the
kit's default settings (``default_settings(("hard", "instance"))``: one ``gamma:0.7`` setting with
hard and instance consistency).

1. ``dask``: the same sweep (7 models x ``--dask-images``) on the serial runner (torch with
   ``--threads`` threads, 2 by default; after a one-image warm-up) and on a ``LocalCluster`` of 1
   and 2 process workers (1 torch thread each: Dask's nanny sets ``OMP_NUM_THREADS=1`` and each
   worker is told so again). The cluster's start-up (spawned workers import this script, hence
   torch and the kit) is timed apart from the sweep, whose time includes the workers' model
   loading and first calls. The Dask scores must equal the serial ones.
2. ``store``: :meth:`ResultStore.write` of the serial sweep's rows again, one transaction per unit
   (a model and 16 images) as the runner writes them, with and without the clean-prediction blobs,
   against the sweep's compute time per row; file size per row.
3. ``rank``: ``cte-kit rank`` of 10 models (the 7 plus 3 copies with other thresholds, hence other
   model keys) on ``--images`` TIFF files, as a subprocess: wall time, CPU time (user + system,
   which other load on a shared machine inflates less than wall time) and peak RSS (``os.wait4``
   gives the rusage of that child alone). Where its time goes, against a plain ``predict`` of the
   same bank and images, is ``benchmarks/bench_rank_floor.py``'s.
4. ``resume``: ``cte-kit rank`` again on the complete store (only keys are checked).

    python benchmarks/bench_runs.py [--parts dask,store,rank,resume] [--images 100] [--dask-images 32]
                                    [--size 256] [--repeats 3] [--threads 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import tifffile
import torch

from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.estimators.cte import default_settings
from cte_kit.models.bank import BankEntry, write_bank
from cte_kit.runs.backends import DaskBackend, SerialBackend
from cte_kit.runs.runner import CHUNK, RunTarget, run
from cte_kit.runs.store import ResultStore
from cte_kit.runs.units import Setting
from cte_kit.teaching.demo import demo_bank_entries

REPO = Path(__file__).resolve().parents[1]
CONSISTENCIES = ("hard", "instance")
#: Extra bank entries: demo models under other thresholds (other settings, other model keys).
EXTRA_THRESHOLDS = (0.3, 0.4, 0.6)

def bank10() -> list[BankEntry]:
    demo = demo_bank_entries()
    extra = [BankEntry(f"{entry.name}_t{threshold}", entry.kind, entry.path, settings={"threshold": threshold})
             for entry, threshold in zip(demo, EXTRA_THRESHOLDS)]
    return demo + extra


def settings() -> list[Setting]:
    return [Setting(label, tuple(kinds)) for label, kinds in default_settings(CONSISTENCIES).items()]


def median(values) -> float:
    return statistics.median(values)


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def score_table(store: ResultStore) -> dict:
    return {(s.model_key, s.image_key, s.estimator_key, s.seed): s.value for s in store.scores()}


def bench_dask(bank, target, repeats: int, threads: int, folder: Path) -> tuple[float, int, Path]:
    """Part 1; returns the serial sweep's median time, its rows, and one of its stores."""
    times = defaultdict(list)
    starts = defaultdict(list)
    same = True
    torch.set_num_threads(threads)
    # imports, oneDNN kernel choice and first calls happen once here, not in the first timed serial run
    with ResultStore(":memory:") as scratch:
        run(bank, RunTarget("warm-up", target.images[:1], target.names[:1]), settings(), scratch, progress=False)
    for repeat in range(repeats):
        torch.set_num_threads(threads)
        serial_path = folder / f"serial_{repeat}.sqlite"
        with ResultStore(serial_path) as store:
            seconds, report = timed(lambda: run(bank, target, settings(), store, SerialBackend(), progress=False))
            times["serial"].append(seconds)
            reference = score_table(store)
        for workers in (1, 2):
            start, backend = timed(lambda: DaskBackend(workers=workers))
            backend.client.run(torch.set_num_threads, 1)
            starts[workers].append(start)
            with backend, ResultStore(folder / f"dask{workers}_{repeat}.sqlite") as store:
                seconds, _ = timed(lambda: run(bank, target, settings(), store, backend, progress=False))
                times[workers].append(seconds)
                table = score_table(store)
            same &= table.keys() == reference.keys() and all(
                np.isclose(table[k], reference[k], equal_nan=True) for k in reference)
    serial = median(times["serial"])
    print(f"\n1. The same sweep: {len(bank)} models x {len(target.images)} images of {target.images[0].shape[0]} px, "
          f"{report.n_written} score rows, {len(settings())} setting (gamma:0.7, hard + instance); "
          f"medians of {repeats}")
    print(f"{'backend':<44} {'start-up s':>10} {'sweep s':>8} {'/ serial':>9}")
    print(f"{'serial runner, ' + str(threads) + ' torch threads (reference)':<44} {'-':>10} {serial:8.2f} {1:9.2f}")
    for workers in (1, 2):
        name = f"Dask LocalCluster, {workers} worker(s) x 1 thread"
        print(f"{name:<44} {median(starts[workers]):10.2f} {median(times[workers]):8.2f} "
              f"{median(times[workers]) / serial:9.2f}")
    print(f"Dask scores equal the serial ones: {'yes' if same else 'NO'}; load average {os.getloadavg()[0]:.1f}")
    return serial, report.n_written, serial_path


def _units(store: ResultStore):
    """The store's rows cut back into the runner's units: (model key, 16 images) per transaction."""
    scores = defaultdict(list)
    for score in store.scores():
        scores[score.model_key].append(score)
    for model_key, found in scores.items():
        images = sorted({s.image_key for s in found})
        for start in range(0, len(images), CHUNK):
            chunk = set(images[start:start + CHUNK])
            yield (model_key, [s for s in found if s.image_key in chunk],
                   {(model_key, key): store.clean_prediction(model_key, key) for key in sorted(chunk)})


def bench_store(source: Path, compute_per_row: float, repeats: int, folder: Path) -> None:
    """Part 2."""
    with ResultStore(source) as store:
        units = list(_units(store))
    n_rows = sum(len(scores) for _, scores, _ in units)
    n_blobs = sum(len(predictions) for _, _, predictions in units)
    figures = {}
    for blobs in (False, True):
        times, sizes = [], []
        for repeat in range(repeats):
            path = folder / f"store_{blobs}_{repeat}.sqlite"
            with ResultStore(path) as target:
                def write_all():
                    for _, scores, predictions in units:
                        target.write(scores=scores, predictions=predictions if blobs else {})
                times.append(timed(write_all)[0])
            sizes.append(sum(p.stat().st_size for p in folder.glob(path.name + "*")))
        figures[blobs] = (median(times) / n_rows, median(sizes) / n_rows)
    print(f"\n2. Store overhead: {n_rows} score rows ({n_blobs} clean predictions) written again in {len(units)} "
          f"transactions (one per unit); medians of {repeats}")
    print(f"{'what':<48} {'ms / row':>9} {'/ compute':>10} {'bytes / row':>12}")
    print(f"{'sweep compute per score row (serial, reference)':<48} {compute_per_row * 1e3:9.3f} {1:10.2f} {'-':>12}")
    for blobs, label in ((False, "ResultStore.write, scores only"), (True, "ResultStore.write, scores + clean blobs")):
        seconds, size = figures[blobs]
        print(f"{label:<48} {seconds * 1e3:9.3f} {seconds / compute_per_row:10.4f} {size:12.0f}")


def rank_command(bank_file: Path, images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cte_kit", "rank", "--bank", str(bank_file), "--images", str(images),
            "--out", str(out), "--no-progress"] + [arg for c in CONSISTENCIES for arg in ("--consistency", c)]


def run_child(command: list[str]) -> tuple[float, float, float]:
    """Wall time, CPU time (user + system, s) and peak RSS (MiB) of one subprocess (its own rusage, from wait4)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    error = child.stderr.read().decode()
    child.stderr.close()
    if child.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {child.returncode}:\n{error}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def write_target(images, names, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        tifffile.imwrite(folder / f"{name}.tif", image)
    return folder


def bench_rank(bank, images, names, repeats: int, folder: Path, parts: set) -> None:
    """Parts 3 and 4."""
    bank_file = write_bank(bank, folder / "bank.yaml")
    image_dir = write_target(images, names, folder / "images")
    runs, resumes = [], []
    print(f"\n3./4. cte-kit rank: {len(bank)} models x {len(images)} images of {images[0].shape[0]} px (TIFF), "
          f"gamma:0.7 hard + instance, torch default threads ({torch.get_num_threads()}); medians of {repeats}")
    print(f"{'what':<40} {'wall s':>7} {'CPU s':>7} {'peak RSS MiB':>13} {'/ first run':>12}")
    out = folder / "rank_0.sqlite"
    if "rank" in parts:
        for repeat in range(repeats):
            out = folder / f"rank_{repeat}.sqlite"
            runs.append(run_child(rank_command(bank_file, image_dir, out)))
        first = median(r[0] for r in runs)
        print(f"{'rank, empty store (reference)':<40} {first:7.1f} {median(r[1] for r in runs):7.1f} "
              f"{median(r[2] for r in runs):13.0f} {1:12.2f}  (wall of each: {', '.join(f'{r[0]:.1f}' for r in runs)} s; "
              f"goal < 90 s; load {os.getloadavg()[0]:.1f})")
    if "resume" in parts:
        if not out.exists():
            run_child(rank_command(bank_file, image_dir, out))
        for _ in range(repeats):
            resumes.append(run_child(rank_command(bank_file, image_dir, out)))
        again = median(r[0] for r in resumes)
        ratio = f"{again / first:12.3f}" if runs else f"{'-':>12}"
        print(f"{'rank again, complete store (resume)':<40} {again:7.1f} {median(r[1] for r in resumes):7.1f} "
              f"{median(r[2] for r in resumes):13.0f} {ratio}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="dask,store,rank,resume",
                        help="comma-separated subset of dask, store, rank, resume (store needs dask)")
    parser.add_argument("--images", type=int, default=100, help="images of the rank benchmark (default: 100)")
    parser.add_argument("--dask-images", type=int, default=32, help="images of the Dask sweep (default: 32)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the serial runner (default: 2)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"dask", "store", "rank", "resume"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")

    data = generate(DEMO_TARGET, max(args.images, args.dask_images), shape=(args.size, args.size), seed=7)
    print(f"{os.cpu_count()} CPUs; kit U-Nets of the demo bank; synthetic target images of {args.size} px")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if parts & {"dask", "store"}:
            target = RunTarget("synthetic", tuple(data.images[:args.dask_images]), tuple(data.names[:args.dask_images]))
            serial, n_rows, store = bench_dask(demo_bank_entries(), target, args.repeats, args.threads, folder)
            if "store" in parts:
                bench_store(store, serial / n_rows, args.repeats, folder)
        if parts & {"rank", "resume"}:
            torch.set_num_threads(os.cpu_count())  # as the CLI runs: torch's default
            bench_rank(bank10(), list(data.images[:args.images]), list(data.names[:args.images]), args.repeats,
                       folder, parts)


if __name__ == "__main__":
    main()

"""Command line: ``cte-kit demo | rank | qc | sweep | train | adapt | compare | datasets | fetch`` (also ``python -m cte_kit``).

Exit codes: 0 success, 1 some models failed (the others are ranked; tracebacks are in the result
store), 2 bad input (one line says what), 3 an internal error (a bug: the traceback is printed),
130 interrupted (Ctrl-C: what was written is kept, and a rerun resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

from .scoring.consistency import STATISTICS

__all__ = ["main", "build_parser"]


def _add_demo(subparsers):
    parser = subparsers.add_parser("demo", help="rank the embedded U-Net bank on synthetic and real targets (offline)",
                                   description="Rank a bank of U-Nets trained on synthetic source domains on "
                                               "unlabelled targets, then compare with their true performance.")
    parser.add_argument("--out", default="cte_demo", help="folder for result stores, summary JSON and plots (default: cte_demo)")
    parser.add_argument("--n-images", type=int, default=16, help="synthetic target images (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="perturbation seed (default: 0)")
    parser.add_argument("--no-real", action="store_true", help="skip the real DSB2018 target")
    parser.add_argument("--rebuild", action="store_true",
                        help="retrain the bank from its synthetic sources into OUT/bank instead of using the shipped weights")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


#: The tasks ``--task`` takes (cte_kit.estimators.tasks.TASKS; kept here so that --help needs no import of it).
TASK_NAMES = ("nuclei", "mitochondria", "cells")


def _add_task_option(parser) -> None:
    parser.add_argument("--task", choices=TASK_NAMES,
                        help="the segmentation problem, which sets the default consistency, perturbation, statistic "
                             "and guards (cte_kit.estimators.tasks): nuclei (light microscopy), mitochondria (electron "
                             "microscopy), cells (dense tissue included). Default: the bank's `task:`, else nuclei; "
                             "the run prints which it used and why")


def _add_backend_options(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, help="compute on N local Dask worker processes (default: this process)")
    group.add_argument("--scheduler", help="compute on a running Dask scheduler (tcp://host:8786), e.g. dask-jobqueue")


def _add_sweep(subparsers):
    parser = subparsers.add_parser("sweep", help="sweep a bank over targets, perturbations and strengths from a YAML config",
                                   description="Run a bank over several targets and perturbation strengths, as a YAML "
                                               "config describes, into one result store (see README, 'Sweeps').")
    parser.add_argument("config", help="YAML with bank, targets, perturbations (and strengths), consistencies")
    parser.add_argument("--out", help="result store (default: the config's `out`, else sweep.sqlite beside it)")
    parser.add_argument("--export", help="also write the scores as CSV or Parquet (by the file's suffix)")
    parser.add_argument("--summary", help="summary JSON of every target and setting")
    _add_task_option(parser)
    _add_backend_options(parser)
    parser.add_argument("--no-progress", action="store_true")


def _add_rank(subparsers):
    parser = subparsers.add_parser("rank", help="rank a model bank on a folder of images",
                                   description="Rank the models of a bank YAML on a folder of 2D images by CTE. "
                                               "Rows are written as they are computed; rerunning with the same --out resumes.")
    parser.add_argument("--bank", required=True, help="bank YAML (a `models:` list of name/kind/path|pretrained)")
    parser.add_argument("--images", required=True, help="folder of 2D images (tif/png, grey or RGB)")
    parser.add_argument("--labels", help="optional folder of label images with the same file stems (to report true performance)")
    parser.add_argument("--perturbation", action="append",
                        help="KIND:STRENGTH, repeatable: dropout:0.2, noise:0.05, noise:0.03-0.07, brightness:0.1, "
                             "contrast:0.8, gamma:0.7, dropout:0.1@encoder1+bottleneck, dropout:0.05@all. Each is "
                             "scored with every --consistency. Default: each consistency with the task's default "
                             "perturbation (see --task)")
    parser.add_argument("--consistency", action="append", choices=("hard", "soft", "instance"),
                        help="consistency measure, repeatable (default: the task's: instance for cells, hard otherwise)")
    _add_task_option(parser)
    parser.add_argument("--out", required=True, help="result store (SQLite; created, or resumed: only missing rows are computed)")
    parser.add_argument("--export", help="also write the scores as CSV or Parquet (by the file's suffix)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="rank models that lack rows for some images (a failure) with the others")
    _add_backend_options(parser)
    parser.add_argument("--summary", help="summary JSON (per-model CTE, ranks, and with labels the correlations)")
    parser.add_argument("--plot", help="PNG of CTE vs true performance (needs --labels)")
    parser.add_argument("--statistic", choices=STATISTICS,
                        help="aggregation of per-image CTE (default: the task's, the mean; the paper: median; "
                             "tie-aware: the median with exact ties broken by the mean)")
    parser.add_argument("--choose-strength", action="store_true",
                        help="with several --perturbation settings (strengths and/or layers): pick, per "
                             "consistency, the weakest setting that separates the bank while its best model "
                             "stays above --floor (label-free, cte_kit.estimators.selection.choose_strength)")
    parser.add_argument("--floor", type=float, default=0.5,
                        help="--choose-strength: the most consistent model must keep this CTE (default: 0.5)")
    parser.add_argument("--combine", action="store_true",
                        help="also rank by the mean normalised rank (Borda count) over all perturbation x "
                             "consistency settings (cte_kit.estimators.selection.aggregate_ranks)")
    parser.add_argument("--n-pert", type=int, default=1, help="perturbed predictions per image (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boundary", type=int, default=1, help="boundary band width for instance consistency (default: 1)")
    parser.add_argument("--no-guards", action="store_true",
                        help="rank by CTE alone: do not rank models whose outputs look degenerate or far from the "
                             "rest of the bank after the others (they are still reported)")
    parser.add_argument("--no-progress", action="store_true")


def _add_train(subparsers):
    from .models.instances import INSTANCE_METHODS

    parser = subparsers.add_parser("train", help="train one U-Net of a bank on a folder pair",
                                   description="Train a 2D U-Net (BCE+Dice, augmentations, dropout) on images and labels "
                                               "with matching file stems; the checkpoint reloads by path.")
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--task", required=True, choices=("semantic", "instance"),
                        help="semantic: foreground output; instance: foreground+boundary output with seeded watershed")
    parser.add_argument("--out", required=True, help="checkpoint path (.pt)")
    parser.add_argument("--epochs", type=int, default=50,
                        help="passes over the data, one pass = ceil(images / batch size) steps of random patches (default: 50)")
    parser.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--levels", type=int, default=3, choices=(3, 4))
    parser.add_argument("--width", type=int, default=16, help="channels at the first level (default: 16)")
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--percentiles", type=float, nargs=2, default=(1.0, 99.8), metavar=("LOW", "HIGH"))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="train (and later predict) on images shrunk by this factor in (0, 1], e.g. 0.5 for objects larger "
                             "than the network's field of view; stored with the model (default: 1)")
    parser.add_argument("--boundary-weight", type=float, default=1.0,
                        help="weight of the boundary output's loss against the foreground's (--task instance; default: 1)")
    parser.add_argument("--instances", choices=INSTANCE_METHODS,
                        help="instance method stored with the model (default: dt_watershed when the labels are dense "
                             "tissue with no background, watershed for other --task instance models, components for "
                             "--task semantic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda (default: cpu)")
    parser.add_argument("--no-progress", action="store_true")


def _add_adapt(subparsers):
    parser = subparsers.add_parser("adapt", help="adapt a bank model to unlabelled images, then keep the best checkpoint "
                                                 "by the kit's ranking (no labels)",
                                   description="Adapt one model of a bank (kit U-Net, Cellpose 3, bioimage.io export of a "
                                               "kit U-Net) to a folder of unlabelled images with an EMA teacher and L2-SP "
                                               "(settings: cte_kit.adapt.AdaptConfig), keeping a checkpoint at every "
                                               "evaluation. Every checkpoint, the starting weights included, is then "
                                               "ranked on the images with the kit's default estimator and guards, and "
                                               "the chosen one is written to --out; when no adapted checkpoint beats the "
                                               "starting weights, they are written and the report says so.")
    parser.add_argument("--bank", required=True, help="bank YAML")
    parser.add_argument("--model", required=True, help="name of the model in the bank")
    parser.add_argument("--images", required=True, help="folder of unlabelled target images")
    parser.add_argument("--out", required=True, help="weights of the chosen checkpoint; its report (which step and why, "
                                                     "the stopping curve) goes to OUT.adapt.json, every checkpoint and "
                                                     "the ranking's result store to OUT_STEM_checkpoints/")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (default: 200)")
    parser.add_argument("--eval-every", type=int,
                        help="steps between checkpoints (default: cte_kit.adapt.AdaptConfig.eval_every)")
    parser.add_argument("--margin", type=float,
                        help="an adapted checkpoint replaces the starting weights only when its score beats theirs by "
                             "more than this (default: cte_kit.runs.checkpoints.ChoiceRule.margin)")
    parser.add_argument("--no-guards", action="store_true",
                        help="rank the checkpoints by CTE alone (flagged checkpoints can then be chosen)")
    _add_task_option(parser)
    parser.add_argument("--no-bank-agreement", action="store_true",
                        help="do not compare the checkpoints with the consensus of the bank's other models (by "
                             "default an adapted checkpoint must agree with it at least as well as the starting "
                             "weights; each other model predicts the images once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--no-progress", action="store_true")


def _add_data_commands(subparsers):
    subparsers.add_parser("datasets", help="list the datasets of data_registry.yaml with sizes and licences")
    parser = subparsers.add_parser("fetch", help="download datasets into the cache (CTE_KIT_DATA_DIR)")
    parser.add_argument("name", nargs="?", help="dataset name (see `cte-kit datasets`)")
    parser.add_argument("--all", action="store_true", help="fetch every dataset that can be downloaded")


def _add_compare(subparsers):
    parser = subparsers.add_parser("compare", help="compare transferability estimators (CTE, baselines) on labelled targets",
                                   description="Score a bank with every estimator on targets with labels, and report how well "
                                               "each ranks the models (Kendall, Spearman, Pearson against true F1), what it "
                                               "needs and what it costs. Results are kept in OUT/comparison.sqlite; a rerun resumes.")
    parser.add_argument("--bank", required=True, help="bank YAML, or `demo` for the embedded demo bank")
    parser.add_argument("--targets", nargs="+", required=True,
                        help="folders with images/ and labels/, or `demo` for the embedded synthetic target")
    parser.add_argument("--estimators", nargs="+",
                        help="estimator names (default: every one; those that do not apply are listed with the reason): "
                             "cte, cte_soft, cte_instance, cte+agreement, entropy, confidence, ei_all, tta, nuno, mano, "
                             "dispersion, agreement, agreement_instance, leep, logme, ccfv, topology, otce, or "
                             "cte:<consistency>:<perturbation>[:<statistic>]")
    parser.add_argument("--out", required=True, help="folder for comparison.csv/json/png and the result store")
    parser.add_argument("--max-images", type=int, help="use at most this many images per target (seeded subset)")
    parser.add_argument("--crop", type=int, help="centre-crop images to at most CROP x CROP pixels")
    parser.add_argument("--usable", type=float, default=0.5, help="true F1 from which a model is usable (default: 0.5)")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates over images (default: 200)")
    _add_task_option(parser)
    _add_backend_options(parser)
    parser.add_argument("--no-progress", action="store_true")


def _bank_option(bank: str) -> tuple[list, str | None]:
    """The entries of ``--bank`` (a bank YAML, or `demo` for the embedded demo bank) and its file (None for `demo`)."""
    if bank == "demo":
        from .teaching.demo import demo_bank_entries

        return demo_bank_entries(), None
    from .models.bank import read_bank

    return read_bank(bank), bank


def _run_compare(args) -> int:
    from .data.outputs import check_outputs
    from .evaluation.comparison import compare
    from .reports.comparison import format_comparison, write_comparison

    bank, bank_file = _bank_option(args.bank)
    choice = _task_choice(args.task, bank_file)
    targets, folders = [], {}
    for target in args.targets:
        if target == "demo":
            from .teaching.demo import demo_targets

            targets += list(demo_targets(args.max_images or 16, include_real=False))
        else:
            targets.append(target)
            folders.update({f"the {part} folder of target {target}": Path(target) / part for part in ("images", "labels")})
    check_outputs({"the bank file": bank_file, **folders, **_bank_inputs(bank)}, folders={"compare --out": args.out})
    backend = _backend(args)
    try:
        comparison = compare(bank, targets, args.estimators, out=args.out, max_images=args.max_images, crop=args.crop,
                             usable=args.usable, n_boot=args.n_boot, progress=not args.no_progress, backend=backend,
                             task=choice.task)
    finally:
        if backend is not None:
            backend.close()
    print(format_comparison(comparison.rows))
    paths = write_comparison(comparison, args.out)
    print(f"Written: {', '.join(str(path) for path in paths.values())}")
    _print_failures(comparison.failures)
    return 1 if comparison.failures else 0


def _add_qc(subparsers):
    parser = subparsers.add_parser("qc", help="label-free quality control of a chosen model, per image and per object",
                                   description="After choosing a model: which images and which objects of its "
                                               "segmentation can be trusted, without labels (stability under the "
                                               "kit's default perturbation, agreement with the rest of the bank, the "
                                               "guards). Writes images.csv, objects.csv (and Parquet), napari/ label "
                                               "images with feature tables, and a self-contained report.html. A "
                                               "ranking run into the same --store is reused, not recomputed.")
    parser.add_argument("--bank", required=True, help="bank YAML, or `demo` for the embedded demo bank")
    parser.add_argument("--model", required=True, help="name of the chosen model in the bank")
    parser.add_argument("--images", required=True, help="folder of 2D images, or `demo` for the embedded synthetic target")
    parser.add_argument("--out", required=True, help="folder for the tables, napari/ files and report.html")
    parser.add_argument("--labels", help="optional folder of label images (same stems), only to judge the scores: "
                                         "adds the true F1 / AP per image, whether each object matches a true object, "
                                         "and how well the scores told them apart (`demo` with --images demo)")
    parser.add_argument("--store", help="result store to read and extend (default: OUT/results.sqlite); give the "
                                        "--out of `cte-kit rank` to reuse its predictions")
    parser.add_argument("--worst", type=int, default=8, help="least reliable images shown in the report (default: 8)")
    parser.add_argument("--n-images", type=int, default=16, help="--images demo: synthetic target images (default: 16)")
    _add_task_option(parser)
    _add_backend_options(parser)
    parser.add_argument("--no-progress", action="store_true")


def _run_qc(args) -> int:
    from .data.folder import load_folder
    from .data.outputs import check_outputs
    from .evaluation.quality import judge_quality
    from .reports.quality import write_napari, write_report, write_tables
    from .runs.quality import perturbed_foregrounds, quality
    from .runs.runner import RunTarget
    from .runs.store import ResultStore
    from .teaching.demo import demo_targets

    bank, bank_file = _bank_option(args.bank)
    choice = _task_choice(args.task, bank_file)
    check_outputs({"the bank file": bank_file,
                   "the images folder": None if args.images == "demo" else args.images,
                   "the labels folder": None if args.labels in (None, "demo") else args.labels, **_bank_inputs(bank)},
                  files={"--store (the result store)": args.store}, folders={"qc --out": args.out})
    if args.images == "demo":
        demo = demo_targets(args.n_images, include_real=False)[0]
        name, images, names = demo.name, demo.images, demo.names
        labels = demo.labels if args.labels == "demo" else None
    else:
        if args.labels == "demo":
            raise ValueError("--labels demo goes with --images demo")
        data = load_folder(args.images, args.labels, progress=not args.no_progress)
        name, images, names, labels = Path(args.images).name, data.images, data.names, data.labels
    target = RunTarget(name, tuple(images), tuple(names))
    out = Path(args.out)
    backend = _backend(args)
    try:
        with ResultStore(args.store or out / "results.sqlite") as store:
            qc = quality(bank, target, args.model, store, backend=backend, progress=not args.no_progress,
                         task=choice.task)
            judgement = judge_quality(qc, store, dict(zip(names, labels))) if labels is not None else None
            shown = [image.image for image in qc.ranked()[:args.worst]]
            chosen = next(item for item in bank if item.name == args.model)
            perturbed = perturbed_foregrounds(chosen, target, shown, store, qc.model_key, qc.settings[0])
            paths = list(write_tables(qc, out).values()) + write_napari(qc, store, out)
            report = write_report(qc, store, dict(zip(names, images)), out, perturbed, worst=args.worst,
                                  judgement=judgement)
    finally:
        if backend is not None:
            backend.close()
    _print_quality(qc, judgement, args.worst)
    document = {"model": qc.model, "target": qc.target, "compared_with": list(qc.compared_with),
                "left_out": qc.left_out, "images": qc.image_table(),
                "judgement": judgement.summary() if judgement is not None else None}
    _write_json(document, out / "summary.json")
    print(f"Written: {report}, {out / 'images.csv'}, {out / 'objects.csv'}, {out / 'summary.json'} and "
          f"{len([p for p in paths if p.parent.name == 'napari'])} files in {out / 'napari'}/")
    _print_failures(qc.failures)
    return 1 if qc.failures else 0


def _print_quality(qc, judgement, worst: int) -> None:
    from .runs.quality import DOUBTFUL

    if qc.guards is not None and qc.guards.flags:
        print(f"The guards flag {qc.model} on this target: " + "; ".join(f.reason for f in qc.guards.flags))
    compared = ", ".join(qc.compared_with) or "no other model (the scores are its stability alone)"
    print(f"Quality control of {qc.model} on {qc.target}: {len(qc.images)} images, compared with {compared}.")
    if qc.left_out:
        print("Not compared with: " + "; ".join(f"{k} ({v})" for k, v in qc.left_out.items()))
    print(f"\n{'image':<28} {'score':>6} {'consist.':>8} {'agree.':>7} {'objects':>7} {'doubtful':>8}  flags")
    for image in qc.ranked()[:worst]:
        print(f"{image.image:<28} {image.score:6.3f} {image.consistency:8.3f} {image.agreement:7.3f} "
              f"{image.n_objects:7d} {image.n_doubtful:8d}  {'; '.join(image.flags)}")
    n_objects = sum(o.ids.size for o in qc.objects)
    print(f"(the {min(worst, len(qc.images))} least reliable of {len(qc.images)} images; {sum(i.n_doubtful for i in qc.images)} "
          f"of {n_objects} objects score below {DOUBTFUL}. Scores measure stability and agreement, not correctness.)")
    if judgement is not None:
        print(f"Judged with the labels: image score vs true F1 Spearman {judgement.spearman_f1:+.2f}, vs true AP "
              f"{judgement.spearman_map:+.2f}; object score AUROC {judgement.auroc:.2f} for the {judgement.n_matched} of "
              f"{judgement.n_objects} objects that match a true object at IoU >= 0.5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cte-kit", description="Consistency-based transferability estimation "
                                     "for microscopy segmentation models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo(subparsers)
    _add_rank(subparsers)
    _add_qc(subparsers)
    _add_sweep(subparsers)
    _add_train(subparsers)
    _add_adapt(subparsers)
    _add_data_commands(subparsers)
    _add_compare(subparsers)
    return parser


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _write_json(document: dict, path: Path) -> None:
    from .data.outputs import atomic_path

    with atomic_path(path) as partial:
        partial.write_text(json.dumps(_json_ready(document), indent=2))


def _write_summary(summaries: list[dict], path: Path, extra: dict) -> None:
    """The first setting's fields at top level (`models`, `kendall`, ...), all settings under `settings`."""
    _write_json({**summaries[0], **extra, "settings": summaries}, path)


def _bank_inputs(entries) -> dict:
    """What a bank makes a command read: each model's weights and source data."""
    inputs = {}
    for entry in entries:
        inputs[f"the weights of model {entry.name!r}"] = entry.path
        inputs[f"the source data of model {entry.name!r}"] = entry.source
    return inputs


def _plot_summaries(summaries: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .reports.plots import save_figure, summary_scatters

    figure = summary_scatters(summaries, title)
    if figure is not None:
        save_figure(figure, path)
        plt.close(figure)


def _task_choice(task: str | None, bank=None):
    """The task of a run (--task, else the bank's `task:`, else assumed); prints the sentence that says which."""
    from .estimators.tasks import resolve_task
    from .models.bank import bank_task

    declarations = [("--task", task)]
    if bank is not None:
        declarations.append((str(bank), bank_task(bank)))
    choice = resolve_task(*declarations)
    print(choice.message)
    return choice


def _warn_task_hint(choice, guards) -> None:
    import warnings

    from .estimators.tasks import task_hint
    from .types import CTEKitWarning

    hint = task_hint(choice, guards) if guards else None
    if hint:
        warnings.warn(hint[0].upper() + hint[1:] + ".", CTEKitWarning, stacklevel=2)


def _backend(args):
    """The backend the options ask for (None: this process), and a line saying where the dashboard is."""
    if getattr(args, "workers", None) is None and getattr(args, "scheduler", None) is None:
        return None
    from .runs.backends import DaskBackend

    backend = DaskBackend(workers=args.workers or 1, scheduler=args.scheduler)
    print(f"Dask: {len(backend.client.scheduler_info()['workers'])} worker(s), dashboard {backend.dashboard_link}")
    return backend


def _print_failures(failures) -> None:
    for failure in failures:
        where = f" on {failure.image}" if failure.image else ""
        print(f"FAILED {failure.model}{where} ({failure.setting}): {failure.error}", file=sys.stderr)
    if failures:
        print("(the full tracebacks are in the result store's `failures` table)", file=sys.stderr)


def _ranked(result, rows, allow_incomplete: bool) -> list[str]:
    """The models to rank: every model with rows, less those with missing rows unless asked for."""
    names = [name for name in result.report.models if any(r["model"] == name for r in rows)]
    incomplete = {name: n for name, n in result.incomplete.items() if name in names}
    if incomplete and not allow_incomplete:
        print("Not ranked, because rows are missing (a model ranked on fewer images is not comparable): "
              + ", ".join(f"{name} ({n} missing)" for name, n in incomplete.items())
              + ". Rerun to retry them, or pass --allow-incomplete.", file=sys.stderr)
        names = [name for name in names if name not in incomplete]
    return names


def _run_demo(args) -> int:
    from .evaluation.summary import summarize_results
    from .evaluation.sweep import read_results, run_sweep, sweep_guards
    from .estimators.cte import default_settings
    from .estimators.tasks import resolve_task
    from .perturb import parse_perturbation
    from .teaching.demo import (DEMO_TASK, READING_GUIDE, build_demo_bank, demo_bank_entries, demo_targets,
                                format_table, recommendation_note)

    started = time.perf_counter()
    out = Path(args.out)
    if args.rebuild:
        print("Training the demo bank from its synthetic source domains ...")
        build_demo_bank(out / "bank", progress=not args.no_progress)
        entries = demo_bank_entries(out / "bank")
    else:
        entries = demo_bank_entries()
    print(f"Bank: {len(entries)} U-Nets trained on synthetic source domains: {', '.join(e.name for e in entries)}")
    choice = resolve_task(("the demo bank", DEMO_TASK))
    print(choice.message)
    settings = default_settings(("hard", "instance"), choice.task)
    perturbations = [parse_perturbation(label) for label in settings]
    targets = demo_targets(args.n_images, include_real=not args.no_real)
    failures = []
    if not args.no_real and len(targets) == 1:
        print("Only the synthetic target: the real DSB2018 image ships with the `stardist` package, which is not "
              "installed (pip install 'cte_kit[adapters]', or `make test` once, adds it).")
    for target in targets:
        print(f"\nTarget {target.name}: {target.description}. Labels are used only to score the ranking.")
        store = out / f"results_{target.name}.sqlite"
        result = run_sweep(entries, target.images, target.names, store, perturbations, settings,
                           labels=target.labels, seed=args.seed, progress=not args.no_progress, target=target.name)
        failures.extend(result.failures)
        rows = read_results(result)
        names = _ranked(result, rows, allow_incomplete=False)
        summaries = summarize_results(rows, models=names, guards=sweep_guards(result, names, config=choice.task.guards),
                                      task=choice.task)
        _warn_flagged(summaries)
        for summary in summaries:
            print(f"\n[{target.name}] perturbation {summary['perturbation']}, {summary['consistency']} consistency, "
                  f"{summary['statistic']} over images")
            print(format_table(summary))
        note = recommendation_note(summaries)
        if note:
            print(f"\n{note}")
        _plot_summaries(summaries, out / f"scatter_{target.name}.png", target.name)
        _write_summary(summaries, out / f"summary_{target.name}.json", {"target": target.name})
    print(f"\n{READING_GUIDE}")
    print(f"\nResult stores, summaries and scatter plots are in {out}/ ({time.perf_counter() - started:.0f} s)")
    _print_failures(failures)
    return 1 if failures else 0


def _export(store_path, export, report) -> None:
    """The scores of this run (its model and image keys and settings), as CSV or Parquet."""
    from .runs.store import ResultStore

    selection = {"model_keys": report.models.values(),
                 "image_keys": [key for images in report.images.values() for key in images.values()],
                 "estimators": [(key, s.seed) for s in report.settings for key in s.keys().values()]}
    with ResultStore(store_path) as store:
        write = store.to_parquet if Path(export).suffix.lower() in (".parquet", ".pq") else store.to_csv
        path = write(export, **selection)
    print(f"Exported the scores to {path}")


def _run_rank(args) -> int:
    from .data.folder import load_folder
    from .data.outputs import check_outputs
    from .evaluation.summary import summarize_results
    from .evaluation.sweep import read_results, run_sweep, sweep_guards
    from .estimators.cte import default_settings
    from .models.bank import read_bank
    from .perturb import parse_perturbation
    from .teaching.demo import format_table

    entries = read_bank(args.bank)
    choice = _task_choice(args.task, args.bank)
    task = choice.task
    check_outputs({"the bank file": args.bank, "the images folder": args.images, "the labels folder": args.labels,
                   **_bank_inputs(entries)},
                  files={"--out (the result store)": args.out, "--summary": args.summary, "--export": args.export,
                         "--plot": args.plot})
    consistencies = list(dict.fromkeys(args.consistency or task.consistencies))
    if args.perturbation:
        kinds = {label: consistencies for label in dict.fromkeys(parse_perturbation(t).label for t in args.perturbation)}
    else:
        kinds = default_settings(consistencies, task)
    perturbations = [parse_perturbation(label) for label in kinds]
    if args.plot and args.labels is None:
        raise ValueError("--plot needs --labels (it shows CTE against true performance)")
    target = load_folder(args.images, args.labels, progress=not args.no_progress)
    print(f"{len(entries)} models x {len(target.images)} images: "
          + ", ".join(f"{label} ({' + '.join(kinds[label])} consistency)" for label in kinds))
    backend = _backend(args)
    try:
        result = run_sweep(entries, target.images, target.names, args.out, perturbations, kinds,
                           labels=target.labels, seed=args.seed, n_pert=args.n_pert, boundary=args.boundary,
                           progress=not args.no_progress, backend=backend, target=Path(args.images).name)
    finally:
        if backend is not None:
            backend.close()
    if result.n_skipped_rows:
        print(f"Resumed: {result.n_skipped_rows} rows were already in {args.out}")
    if target.labels is None:
        _note_earlier_labels(args.out, result)
    rows = read_results(result)
    ranked = _ranked(result, rows, args.allow_incomplete)
    rows = [r for r in rows if r["model"] in ranked]
    guards = None if args.no_guards or not ranked else sweep_guards(result, ranked, config=task.guards)
    summaries = summarize_results(rows, statistic=args.statistic, seed=args.seed, models=ranked, guards=guards,
                                  task=task) if rows else []
    _warn_task_hint(choice, guards)
    _warn_flagged(summaries)
    for summary in summaries:
        print(f"\nperturbation {summary['perturbation']}, {summary['consistency']} consistency, "
              f"{summary['statistic']} over images")
        print(format_table(summary))
    extra = {"failures": [{k: v for k, v in f.__dict__.items() if k != "traceback"} for f in result.failures],
             "incomplete": dict(result.incomplete), "task": {"name": task.name, "source": choice.source,
                                                             "message": choice.message}}
    if args.choose_strength and summaries:
        extra["choices"] = _choose_strengths(summaries, args.floor)
    if args.combine and summaries:
        extra["combined"] = _combine(summaries)
    if args.summary and summaries:
        _write_summary(summaries, Path(args.summary), extra)
    if args.plot and summaries:
        _plot_summaries(summaries, Path(args.plot), Path(args.images).name)
    if args.export:
        _export(args.out, args.export, result.report)
    _print_failures(result.failures)
    return 1 if result.failures else 0


def _note_earlier_labels(store_path, result) -> None:
    """Say that true performance from another run's labels exists, and is not reported without --labels."""
    from .runs.store import ResultStore

    with ResultStore(store_path) as store:
        earlier = store.labels_keys(list(result.images.values()))
    if earlier:
        print(f"({len(earlier)} of these images have true performance in {store_path} from labels given to an earlier "
              "run; it is reported only with --labels, from the labels given then.)")


def _run_sweep(args) -> int:
    from .data.outputs import check_outputs
    from .evaluation.performance import fill_performance, scored_rows
    from .evaluation.config import read_sweep_config
    from .evaluation.summary import summarize_results
    from .runs.runner import run, store_guards
    from .runs.store import ResultStore
    from .teaching.demo import format_table

    config = read_sweep_config(args.config, task=args.task)
    print(config.task.message)
    task = config.task.task
    out = Path(args.out) if args.out else config.out
    folders = {f"the {role} folder of target {t.name!r}": path for t in config.targets
               for role, path in (("images", t.images), ("labels", t.labels))}
    check_outputs({"the sweep config": args.config, "the bank file": config.bank_file, **folders,
                   **_bank_inputs(config.bank)},
                  files={"--out (the result store)": out, "--summary": args.summary, "--export": args.export})
    print(f"{len(config.bank)} models x {len(config.targets)} target(s) x {len(config.settings)} setting(s) -> {out}")
    backend = _backend(args)
    documents = []
    try:
        with ResultStore(out) as store:
            loaded = [target.load(progress=not args.no_progress) for target in config.targets]
            report = run(config.bank, [run_target for run_target, _ in loaded], config.settings, store, backend=backend,
                         progress=not args.no_progress)
            for (run_target, labels), target in zip(loaded, config.targets):
                labels_keys = {}
                if labels is not None:
                    labels_keys = fill_performance(store, report.models, report.images[run_target.name],
                                                   dict(zip(run_target.names, labels)))
                missing = {name: n for name, n in report.missing(store, run_target.name).items() if n}
                names = [name for name in report.models if name not in missing]
                if missing:
                    print(f"[{run_target.name}] not ranked, rows missing: "
                          + ", ".join(f"{name} ({n})" for name, n in missing.items()), file=sys.stderr)
                found = scored_rows(store, {n: report.models[n] for n in names}, report.images[run_target.name],
                                    report.settings, labels_keys)
                if not found:
                    continue
                guards = store_guards(store, report, run_target.name, names, config=task.guards)
                summaries = summarize_results(found, models=names, guards=guards, task=task)
                _warn_task_hint(config.task, guards)
                _warn_flagged(summaries)
                for summary in summaries:
                    print(f"\n[{run_target.name}] {summary['perturbation']}, {summary['consistency']} consistency, "
                          f"{summary['statistic']} over images")
                    print(format_table(summary))
                documents.append({"target": run_target.name, "settings": summaries})
    finally:
        if backend is not None:
            backend.close()
    if args.summary:
        _write_json({"task": task.name, "targets": documents, "failures": [
            {k: v for k, v in f.__dict__.items() if k != "traceback"} for f in report.failures]}, Path(args.summary))
    if args.export:
        _export(out, args.export, report)
    print(f"\n{report.n_written} rows computed, {report.n_skipped} already in {out}")
    _print_failures(report.failures)
    return 1 if report.failures else 0


def _warn_flagged(summaries: list[dict]) -> None:
    """One warning naming every flagged model with its reasons, and one when no model can be recommended."""
    import warnings

    from .types import CTEKitWarning

    reasons = {}
    for summary in summaries:
        for model in summary["models"]:
            for flag in model.get("flags", ()):
                reasons.setdefault(model["name"], {})[flag["reason"]] = None  # ordered, no repeats
    if reasons:
        listing = "; ".join(f"{name} {', '.join(found)}" for name, found in reasons.items())
        which = "1 model whose outputs look" if len(reasons) == 1 else f"{len(reasons)} models whose outputs look"
        warnings.warn(f"The guards flagged {which} degenerate or far from the rest of the bank, ranked after the "
                      f"others: {listing}. A model can be very consistent and still segment the wrong thing; "
                      "--no-guards ranks by CTE alone.", CTEKitWarning, stacklevel=2)
    for summary in summaries:
        for sentence in (summary.get("verdict"), summary.get("bank_note")):
            if sentence:
                warnings.warn(f"Under {summary['perturbation']} with {summary['consistency']} consistency, "
                              f"{sentence}.", CTEKitWarning, stacklevel=2)


def _choose_strengths(summaries: list[dict], floor: float) -> list[dict]:
    """Label-free choice of a setting per consistency; prints it and returns JSON-ready records."""
    from .estimators.selection import choose_strength

    records = []
    for consistency in dict.fromkeys(s["consistency"] for s in summaries):
        chosen = [s for s in summaries if s["consistency"] == consistency]
        choice = choose_strength({s["perturbation"]: [m["cte"] for m in s["models"]] for s in chosen}, floor=floor)
        print(f"\nLabel-free choice ({consistency}): {choice.setting} - {choice.reason}")
        for row in choice.table():
            print(f"  {'*' if row['chosen'] else ' '} {row['setting']:<28} best {row['top']:.4f}  bank median "
                  f"{row['level']:.4f}  spread {row['spread']:.4f}  tied at top {row['tied_at_top']}  "
                  f"pairs resolved {row['resolved']:.0%}")
        record = {"consistency": consistency, "setting": choice.setting, "reason": choice.reason,
                  "candidates": [{k: v for k, v in row.items()} for row in choice.table()]}
        summary = next((s for s in chosen if s["perturbation"] == choice.setting), None)
        if summary is not None and "kendall" in summary:
            record.update(kendall=summary["kendall"], spearman=summary["spearman"], pearson=summary["pearson"])
        records.append(record)
    return records


def _combine(summaries: list[dict]) -> dict:
    """Borda aggregation over every (perturbation, consistency) setting; prints the combined ranking."""
    import numpy as np

    from .scoring.ranking import correlations
    from .estimators.selection import aggregate_ranks

    names = [m["name"] for m in summaries[0]["models"]]
    rankings = {f"{s['perturbation']}/{s['consistency']}": [next(m["cte"] for m in s["models"] if m["name"] == n)
                                                            for n in names] for s in summaries}
    combined = aggregate_ranks(rankings)
    record = {"settings": list(rankings), "models": [{"name": n, "combined": float(c)} for n, c in zip(names, combined)]}
    print(f"\nCombined ranking (mean normalised rank over {len(rankings)} settings):")
    for name, value in sorted(zip(names, combined), key=lambda item: -item[1] if np.isfinite(item[1]) else np.inf):
        print(f"  {name:<28} {value:.3f}")
    for metric in ("f1", "map"):
        truth = [next((m.get(metric) for m in summaries[0]["models"] if m["name"] == n), None) for n in names]
        if all(t is not None for t in truth):
            stats = correlations(combined, np.asarray(truth, dtype=float))
            record[metric] = {"kendall": stats.kendall, "spearman": stats.spearman, "pearson": stats.pearson}
            print(f"  vs true {metric.upper()}: Kendall {stats.kendall:.3f}  Spearman {stats.spearman:.3f}  "
                  f"Pearson {stats.pearson:.3f}")
    return record


def _run_train(args) -> int:
    from .data.folder import load_folder
    from .data.outputs import check_outputs
    from .models.training import TrainingConfig, train_unet
    from .models.unet import UNetConfig

    check_outputs({"the images folder": args.images, "the labels folder": args.labels},
                  files={"--out (the checkpoint)": args.out})
    data = load_folder(args.images, args.labels, progress=not args.no_progress)
    if data.labels is None:
        raise ValueError(f"no labels found in {args.labels}")
    steps = args.steps or args.epochs * max(1, math.ceil(len(data.images) / args.batch_size))
    config = UNetConfig(in_channels=3 if data.images[0].ndim == 3 else 1, levels=args.levels, width=args.width,
                        output="foreground" if args.task == "semantic" else "foreground+boundary")
    training = TrainingConfig(steps=steps, batch_size=args.batch_size, patch_size=args.patch_size,
                              learning_rate=args.learning_rate, percentiles=tuple(args.percentiles), seed=args.seed,
                              scale=args.scale, boundary_weight=args.boundary_weight, device=args.device)
    print(f"Training a {args.levels}-level U-Net (width {args.width}, {args.task}) on {len(data.images)} images "
          f"for {steps} steps on {args.device}")
    model = train_unet(data.images, data.labels, config, training, out=args.out, name=Path(args.out).stem,
                       source=str(Path(args.images).resolve().parent.name), instances=args.instances,
                       progress=not args.no_progress)
    print(f"Saved {args.out} (instance method: {model.instances})")
    return 0


def _run_adapt(args) -> int:
    from .adapt import AdaptConfig
    from .data.folder import load_folder
    from .data.outputs import check_outputs
    from .models.bank import read_bank
    from .models.training import _training_device
    from .adapt.targets import provenance_path
    from .runs.checkpoints import ChoiceRule, adapt_and_choose

    _training_device(args.device)  # a missing GPU is refused with advice before anything is loaded
    entries = {entry.name: entry for entry in read_bank(args.bank)}
    if args.model not in entries:
        raise ValueError(f"no model {args.model!r} in {args.bank}; models: {sorted(entries)}")
    check_outputs({"the bank file": args.bank, "the images folder": args.images, **_bank_inputs(entries.values())},
                  files={"--out (the adapted weights)": args.out})
    every = AdaptConfig.eval_every if args.eval_every is None else args.eval_every
    config = AdaptConfig(steps=args.steps, seed=args.seed, eval_every=max(1, min(every, args.steps)))
    task = _task_choice(args.task, args.bank).task
    rule = ChoiceRule(task, margin=ChoiceRule.margin if args.margin is None else args.margin,
                      guards=not args.no_guards, seed=args.seed)
    data = load_folder(args.images, progress=not args.no_progress)
    print(f"Adapting {args.model} to {len(data.images)} unlabelled images for {args.steps} steps on {args.device}, "
          f"a checkpoint every {config.eval_every} steps")
    reference = [] if args.no_bank_agreement else [e for name, e in entries.items() if name != args.model]
    result = adapt_and_choose(entries[args.model], data.images, data.names, config, args.out, rule, reference,
                              provenance={"bank": str(Path(args.bank).resolve()),
                                          "target_images": str(Path(args.images).resolve())},
                              target_name=Path(args.images).name, progress=not args.no_progress, device=args.device)
    print(f"\nCheckpoints ranked by {rule.describe()}" + ("" if rule.guards else " (no guards)")
          + (f"; bank IoU: foreground IoU with the consensus of {len(result.choice.reference)} other models of the bank"
             if result.choice.reference else "") + ":")
    for point, score in zip(result.run.curve, result.choice.scores):
        marks = [f"{s.criterion} stop" for s in result.run.stops.values() if s.step == point.step]
        marks += ["chosen"] if point.step == result.choice.step else []
        agreement = f"  bank IoU {score.agreement:.3f}" if result.choice.reference else ""
        print(f"  step {point.step:5d}  CTE {score.score:.4f}{agreement}  FN rate {point.fn_rate:.3f}  embedding "
              f"distance {point.embedding:.3f}" + (f"  [{', '.join(marks)}]" if marks else "")
              + (f"  flagged: {'; '.join(score.flags)}" if score.flags else ""))
    for name, why in result.choice.left_out.items():
        print(f"  not in the bank's consensus: {name} ({why})")
    print(f"\n{result.choice.reason}")
    entry = result.entry()
    print(f"Saved step {result.choice.step} to {result.path} (report: {provenance_path(result.path)}); bank entry: "
          + ", ".join(f"{key}: {value}" for key, value in entry.to_dict().items()))
    _print_failures(result.choice.report.failures)
    return 1 if result.choice.report.failures else 0


def _run_datasets(args) -> int:
    from .data.registry import format_table, list_datasets

    print(format_table(list_datasets()))
    return 0


def _run_fetch(args) -> int:
    from .data.registry import fetch, fetch_all

    if args.all == bool(args.name):
        raise ValueError("give a dataset NAME or --all")
    paths = fetch_all() if args.all else fetch(args.name)
    print(f"{len(paths)} file(s) ready")
    return 0


_COMMANDS = {"demo": _run_demo, "rank": _run_rank, "sweep": _run_sweep, "train": _run_train, "adapt": _run_adapt, "datasets": _run_datasets,
             "fetch": _run_fetch, "compare": _run_compare, "qc": _run_qc}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 some models failed, 2 bad input, 3 internal error, 130 interrupted)."""
    import traceback
    import warnings

    from .data.registry import DownloadError
    from .types import InputTypeError
    from .teaching.notebook_env import plain_warnings

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores Python's warning display when main() returns
            plain_warnings()
            return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, InputTypeError, DownloadError) as error:
        print(f"cte-kit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ncte-kit {args.command}: interrupted; what was written so far is kept (a result store resumes when "
              "the same command runs again)", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: say so, with the whole trace
        traceback.print_exc()
        print(f"cte-kit {args.command}: internal error (a bug in cte_kit; please report it with the trace above)",
              file=sys.stderr)
        return 3

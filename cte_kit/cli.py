"""Command line: ``cte-kit demo | rank | train | datasets | fetch`` (also ``python -m cte_kit``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _add_demo(subparsers):
    parser = subparsers.add_parser("demo", help="rank the embedded U-Net bank on synthetic and real targets (offline)",
                                   description="Rank a bank of U-Nets trained on synthetic source domains on "
                                               "unlabelled targets, then compare with their true performance.")
    parser.add_argument("--out", default="cte_demo", help="folder for results CSV, summary JSON and plots (default: cte_demo)")
    parser.add_argument("--n-images", type=int, default=16, help="synthetic target images (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="perturbation seed (default: 0)")
    parser.add_argument("--no-real", action="store_true", help="skip the real DSB2018 target")
    parser.add_argument("--rebuild", action="store_true",
                        help="retrain the bank from its synthetic sources into OUT/bank instead of using the shipped weights")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_rank(subparsers):
    parser = subparsers.add_parser("rank", help="rank a model bank on a folder of images",
                                   description="Rank the models of a bank YAML on a folder of 2D images by CTE. "
                                               "Rows are written as they are computed; rerunning with the same --out resumes.")
    parser.add_argument("--bank", required=True, help="bank YAML (a `models:` list of name/kind/path|pretrained)")
    parser.add_argument("--images", required=True, help="folder of 2D images (tif/png, grey or RGB)")
    parser.add_argument("--labels", help="optional folder of label images with the same file stems (to report true performance)")
    parser.add_argument("--perturbation", action="append",
                        help="KIND:STRENGTH, repeatable: dropout:0.2 (default), noise:0.05, noise:0.03-0.07, "
                             "brightness:0.1, contrast:0.8, gamma:1.2, dropout:0.1@encoder1+bottleneck")
    parser.add_argument("--consistency", action="append", choices=("hard", "soft", "instance"),
                        help="consistency measure, repeatable (default: hard)")
    parser.add_argument("--out", required=True, help="results CSV (one row per model, image, perturbation, consistency)")
    parser.add_argument("--summary", help="summary JSON (per-model CTE, ranks, and with labels the correlations)")
    parser.add_argument("--plot", help="PNG of CTE vs true performance (needs --labels)")
    parser.add_argument("--statistic", default="median", choices=("median", "mean", "trimmed"),
                        help="aggregation of per-image CTE (default: median, as the paper)")
    parser.add_argument("--n-pert", type=int, default=1, help="perturbed predictions per image (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--boundary", type=int, default=1, help="boundary band width for instance consistency (default: 1)")
    parser.add_argument("--no-progress", action="store_true")


def _add_train(subparsers):
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def _add_data_commands(subparsers):
    subparsers.add_parser("datasets", help="list the datasets of data_registry.yaml with sizes and licences")
    parser = subparsers.add_parser("fetch", help="download datasets into the cache (CTE_KIT_DATA_DIR)")
    parser.add_argument("name", nargs="?", help="dataset name (see `cte-kit datasets`)")
    parser.add_argument("--all", action="store_true", help="fetch every dataset that can be downloaded")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cte-kit", description="Consistency-based transferability estimation "
                                     "for microscopy segmentation models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_demo(subparsers)
    _add_rank(subparsers)
    _add_train(subparsers)
    _add_data_commands(subparsers)
    return parser


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _write_summary(summaries: list[dict], path: Path, extra: dict) -> None:
    """The first setting's fields at top level (`models`, `kendall`, ...), all settings under `settings`."""
    document = {**summaries[0], **extra, "settings": summaries}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(document), indent=2))


def _plot_summaries(summaries: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .plots import save_figure, scatter_cte

    labelled = [s for s in summaries if "kendall" in s]
    if not labelled:
        return
    figure, axes = plt.subplots(1, len(labelled), figsize=(5.5 * len(labelled), 4.6), constrained_layout=True, squeeze=False)
    for ax, summary in zip(axes[0], labelled):
        models = summary["models"]
        scatter_cte([m["cte"] for m in models], [m["performance"] for m in models], [m["name"] for m in models], ax=ax,
                    title=f"{title}: {summary['perturbation']}, {summary['consistency']}",
                    cte_label=f"CTE ({summary['consistency']}, {summary['statistic']} over images)",
                    performance_label=f"true {summary['performance_metric'].upper()} (median over images)",
                    stats=summary, errors=([m.get("cte_low", m["cte"]) for m in models], [m.get("cte_high", m["cte"]) for m in models]))
    save_figure(figure, path)
    plt.close(figure)


def _run_demo(args) -> int:
    from .demo import DEMO_PERTURBATIONS, build_demo_bank, demo_bank_entries, demo_targets, format_table
    from .sweep import read_results, run_sweep, summarize_results

    started = time.perf_counter()
    out = Path(args.out)
    if args.rebuild:
        print("Training the demo bank from its synthetic source domains ...")
        build_demo_bank(out / "bank", progress=not args.no_progress)
        entries = demo_bank_entries(out / "bank")
    else:
        entries = demo_bank_entries()
    print(f"Bank: {len(entries)} U-Nets trained on synthetic source domains: {', '.join(e.name for e in entries)}")
    all_summaries = {}
    for target in demo_targets(args.n_images, include_real=not args.no_real):
        print(f"\nTarget {target.name}: {target.description}. Labels are used only to score the ranking.")
        results = out / f"results_{target.name}.csv"
        run_sweep(entries, target.images, target.names, results, DEMO_PERTURBATIONS, ("hard", "instance"),
                  labels=target.labels, seed=args.seed, progress=not args.no_progress)
        summaries = summarize_results(read_results(results), models=[e.name for e in entries])
        all_summaries[target.name] = summaries
        for summary in summaries:
            print(f"\n[{target.name}] perturbation {summary['perturbation']}, {summary['consistency']} consistency")
            print(format_table(summary))
        _plot_summaries(summaries, out / f"scatter_{target.name}.png", target.name)
        _write_summary(summaries, out / f"summary_{target.name}.json", {"target": target.name})
    print(f"\nResults, summaries and scatter plots are in {out}/ ({time.perf_counter() - started:.0f} s)")
    return 0


def _run_rank(args) -> int:
    from .data.folder import load_folder
    from .demo import format_table
    from .models.bank import read_bank
    from .perturb import parse_perturbation
    from .sweep import read_results, run_sweep, summarize_results

    entries = read_bank(args.bank)
    perturbations = [parse_perturbation(text) for text in (args.perturbation or ["dropout:0.2"])]
    consistencies = list(dict.fromkeys(args.consistency or ["hard"]))
    target = load_folder(args.images, args.labels)
    if args.plot and target.labels is None:
        raise ValueError("--plot needs --labels (it shows CTE against true performance)")
    print(f"{len(entries)} models x {len(target.images)} images x {len(perturbations)} perturbation(s)")
    result = run_sweep(entries, target.images, target.names, args.out, perturbations, consistencies,
                       labels=target.labels, seed=args.seed, n_pert=args.n_pert, boundary=args.boundary,
                       progress=not args.no_progress)
    if result.n_skipped_rows:
        print(f"Resumed: {result.n_skipped_rows} rows were already in {args.out}")
    names = [e.name for e in entries]
    wanted = {(p.label, c) for p in perturbations for c in consistencies}
    rows = [r for r in read_results(args.out) if (r["perturbation"], r["consistency"]) in wanted
            and r["seed"] == args.seed and r["n_pert"] == args.n_pert and r["image"] in set(target.names)]
    failed = {f.model for f in result.failures}
    summaries = summarize_results(rows, statistic=args.statistic, seed=args.seed,
                                  models=[n for n in names if n not in failed or any(r["model"] == n for r in rows)])
    for summary in summaries:
        print(f"\nperturbation {summary['perturbation']}, {summary['consistency']} consistency")
        print(format_table(summary))
    if args.summary and summaries:
        _write_summary(summaries, Path(args.summary), {"failures": [f.__dict__ for f in result.failures]})
    if args.plot and summaries:
        _plot_summaries(summaries, Path(args.plot), Path(args.images).name)
    for failure in result.failures:
        print(f"FAILED {failure.model} ({failure.perturbation}): {failure.error}", file=sys.stderr)
    return 1 if result.failures else 0


def _run_train(args) -> int:
    from .data.folder import load_folder
    from .models.training import TrainingConfig, train_unet
    from .models.unet import UNetConfig

    data = load_folder(args.images, args.labels)
    if data.labels is None:
        raise ValueError(f"no labels found in {args.labels}")
    steps = args.steps or args.epochs * max(1, math.ceil(len(data.images) / args.batch_size))
    config = UNetConfig(in_channels=3 if data.images[0].ndim == 3 else 1, levels=args.levels, width=args.width,
                        output="foreground" if args.task == "semantic" else "foreground+boundary")
    training = TrainingConfig(steps=steps, batch_size=args.batch_size, patch_size=args.patch_size,
                              learning_rate=args.learning_rate, percentiles=tuple(args.percentiles), seed=args.seed)
    print(f"Training a {args.levels}-level U-Net (width {args.width}, {args.task}) on {len(data.images)} images "
          f"for {steps} steps")
    train_unet(data.images, data.labels, config, training, out=args.out, name=Path(args.out).stem,
               source=str(Path(args.images).resolve().parent.name), progress=not args.no_progress)
    print(f"Saved {args.out}")
    return 0


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


_COMMANDS = {"demo": _run_demo, "rank": _run_rank, "train": _run_train, "datasets": _run_datasets, "fetch": _run_fetch}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 some models failed, 2 bad input)."""
    from .data.registry import DownloadError

    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, KeyError, DownloadError) as error:
        print(f"cte-kit {args.command}: error: {error}", file=sys.stderr)
        return 2

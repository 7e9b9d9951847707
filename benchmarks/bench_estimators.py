"""Every transferability estimator on the leave-one-sub-domain-out DSB2018 protocol.

Each DSB2018 sub-domain in turn is the target (its held-out ``splits/<domain>/test`` folder of the
bank built by ``benchmarks/dsb_bank.py``); the models trained on that same sub-domain are left
out. Every estimator of ``cte_kit.estimators.ESTIMATORS`` scores the remaining models; OTCE reads
each model's source data from ``splits/<source>/train``. The result is the comparison table
(``comparison.csv/json/png``) and, per estimator, the mean over targets of Kendall's tau among
all models and among usable ones (true F1 >= 0.5) and the cost relative to one forward pass.

The label-free combination is chosen on this data only, leaving one target out: for each
held-out target, the Borda combination of two or three label-free estimators that ranks the
usable models best on the other targets is scored on the held-out one (from the cached scores;
nothing is recomputed).

    python benchmarks/bench_estimators.py [--bank-dir results/dsb_bank] [--out results/bench_estimators]
                                          [--max-images 16] [--crop 256] [--estimators NAME ...]
                                          [--threads 1] [--otce-pixels 500] [--otce-repeats 3]

Reruns resume from the result store ``OUT/comparison.sqlite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from dsb_bank import BANK, DOMAINS, split_folder  # noqa: E402

#: Label-free estimators the combination may draw on.
COMBINABLE = ("cte", "cte_soft", "cte_instance", "agreement", "agreement_instance", "ei_all", "confidence",
              "entropy", "tta", "mano")


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summary_table(rows) -> list[dict]:
    """Per estimator: mean Kendall over targets among usable and all models, mean cost, needs."""
    table = []
    for estimator in dict.fromkeys(row["estimator"] for row in rows):
        mine = [row for row in rows if row["estimator"] == estimator]
        table.append({
            "estimator": estimator, "needs": mine[0]["needs"],
            "kendall_usable": _mean(r["kendall_usable"] for r in mine), "kendall": _mean(r["kendall"] for r in mine),
            "spearman": _mean(r["spearman"] for r in mine), "cost": _mean(r["cost"] for r in mine),
            "n_targets": sum(1 for r in mine if r["kendall"] is not None and math.isfinite(r["kendall"])),
        })
    return sorted(table, key=lambda r: -r["kendall_usable"] if math.isfinite(r["kendall_usable"]) else math.inf)


def combination_kendall(comparison, names, target, usable, truth_floor=0.5) -> float:
    """Kendall of the Borda combination of ``names`` on one target (among usable models or all)."""
    from cte_kit.scoring.ranking import correlations
    from cte_kit.estimators.selection import aggregate_ranks

    truth = comparison.truth[target]
    models = list(truth)
    scores = np.array([[comparison.scores[(name, target)][m] for m in models] for name in names], dtype=float)
    if np.isnan(scores).all(axis=1).any():
        return math.nan
    combined = aggregate_ranks(scores)
    values = np.array([truth[m] for m in models])
    keep = values >= truth_floor if usable else np.ones(len(models), bool)
    return correlations(combined[keep], values[keep], n_resamples=10).kendall


def choose_combination(comparison, targets, usable_floor: float) -> dict:
    """Leave-one-target-out choice among Borda combinations of two or three label-free estimators."""
    available = [n for n in COMBINABLE if all((n, t) in comparison.scores for t in targets)]
    candidates = [c for k in (2, 3) for c in itertools.combinations(available, k)]
    kendall = {(c, t): combination_kendall(comparison, c, t, True, usable_floor) for c in candidates for t in targets}
    folds = []
    for held in targets:
        others = [t for t in targets if t != held]
        best = max(candidates, key=lambda c: _mean(kendall[(c, t)] for t in others))
        folds.append({"held_out": held, "chosen": "+".join(best), "held_out_kendall_usable": kendall[(best, held)]})
    overall = sorted(candidates, key=lambda c: -_mean(kendall[(c, t)] for t in targets))[:5]
    return {"folds": folds, "held_out_mean": _mean(f["held_out_kendall_usable"] for f in folds),
            "best_on_all": [{"combination": "+".join(c), "kendall_usable": _mean(kendall[(c, t)] for t in targets),
                             "per_target": {t: kendall[(c, t)] for t in targets}} for c in overall]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank-dir", type=Path, default=REPO / "results" / "dsb_bank")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_estimators")
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--estimators", nargs="+", help="default: every estimator")
    parser.add_argument("--targets", nargs="+", choices=list(DOMAINS), default=list(DOMAINS))
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--otce-pixels", type=int, default=500, help="OTCE pixels per side (the paper: 10,000)")
    parser.add_argument("--otce-repeats", type=int, default=3, help="OTCE repetitions (the paper: 10)")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from cte_kit.evaluation.comparison import compare
    from cte_kit.reports.comparison import format_comparison, write_comparison
    from cte_kit.evaluation.comparison import load_target
    from cte_kit.estimators.label_based import OTCE
    from cte_kit.estimators.registry import resolve_estimators
    from cte_kit.models.bank import read_bank

    source_of = {spec.name: spec.source for spec in BANK}
    bank = [dataclasses.replace(entry, source=str(split_folder(args.bank_dir, source_of[entry.name], "train")[0].parent))
            for entry in read_bank(args.bank_dir / "bank.yaml") if entry.name in source_of]
    print(f"bank: {len(bank)} models: {', '.join(e.name for e in bank)}")
    targets = [load_target(split_folder(args.bank_dir, domain, "test")[0].parent, args.max_images, args.crop, name=domain)
               for domain in args.targets]
    exclude = {domain: [name for name, source in source_of.items() if source == domain] for domain in args.targets}
    started = time.perf_counter()
    estimators = resolve_estimators(args.estimators)
    if "otce" in estimators:
        estimators["otce"] = OTCE(n_pixels=args.otce_pixels, repeats=args.otce_repeats)
    comparison = compare(bank, targets, estimators, out=args.out, max_images=args.max_images, crop=args.crop,
                         exclude=exclude, n_boot=args.n_boot)
    print(format_comparison(comparison.rows))
    write_comparison(comparison, args.out)
    table = summary_table(comparison.rows)
    lines = [f"{'estimator':<20} {'needs':<22} {'Kendall usable':>14} {'Kendall all':>11} {'Spearman':>8} {'cost':>6} targets",
             "-" * 96]
    for row in table:
        lines.append(f"{row['estimator']:<20} {row['needs']:<22} {row['kendall_usable']:>+14.2f} {row['kendall']:>+11.2f} "
                     f"{row['spearman']:>+8.2f} {row['cost']:>5.1f}x {row['n_targets']}")
    print("\nMean over targets (leave one sub-domain out):\n" + "\n".join(lines))
    report = {"summary": table, "targets": args.targets, "max_images": args.max_images, "crop": args.crop,
              "keys": {name: estimator.key for name, estimator in estimators.items()},
              "models": [e.name for e in bank], "seconds": round(time.perf_counter() - started, 1)}
    label_free = [t for t in args.targets if all((n, t) in comparison.scores for n in ("cte", "agreement"))]
    if len(label_free) >= 2:
        report["combination"] = choose_combination(comparison, label_free, 0.5)
        print("\nLabel-free combination chosen leaving one target out:")
        for fold in report["combination"]["folds"]:
            print(f"  leave {fold['held_out']} out: {fold['chosen']} scores {fold['held_out_kendall_usable']:+.2f}")
        print(f"  mean held-out Kendall among usable models: {report['combination']['held_out_mean']:+.2f}")
        for best in report["combination"]["best_on_all"]:
            print(f"  on all targets: {best['combination']}: {best['kendall_usable']:+.2f}")
    (args.out / "summary.json").write_text(json.dumps(report, indent=2, default=lambda v: None))
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

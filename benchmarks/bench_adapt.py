"""Benchmark of adaptation and of the kit's label-free choice of the checkpoint.

For each (model, target) pair the run adapts the model (``cte_kit.runs.checkpoints.adapt_and_choose``:
a checkpoint every ``--eval-every`` steps, the starting weights as step 0), lets the kit choose a
checkpoint without labels (every checkpoint ranked on the target by the kit's default estimator and
guards, through the runner and its store), then - labels used only here, to judge - fills the same
store's performance table and reports the true foreground F1 (Dice) and mAP (IoU 0.5:0.95) of the
starting model, of the best and the last checkpoint, of each stopping rule's choice and of the kit's
choice. Both are aggregated over images as the kit's rankings are judged (the median,
``cte_kit.evaluation.performance.PERFORMANCE_STATISTIC``). Other label-free signals are stored per
checkpoint (``--signals``: CTE under other perturbations and consistencies, agreement with the
starting model, foreground fraction, object count) so that other choice rules can be judged from
the JSON without running anything again (``rules`` mode).

    python benchmarks/bench_adapt.py demo --steps 120 --out results/adapt/demo.json
    python benchmarks/bench_adapt.py protocol --bank results/dsb_bank --steps 120 --out results/adapt/dsb.json
    python benchmarks/bench_adapt.py folder --checkpoint model.pt --images T/images --labels T/labels \\
        --out results/adapt/pair.json
    python benchmarks/bench_adapt.py train-cellpose --images S/images --labels S/labels --steps 40 \\
        --out results/cp_models/cp_source.json
    python benchmarks/bench_adapt.py folder --kind cellpose --checkpoint results/cp_models/models/cp_source ...
    python benchmarks/bench_adapt.py folder --kind bioimageio --checkpoint model.pt ...   # exported first
    python benchmarks/bench_adapt.py rules results/adapt/dsb.json [more.json ...]

``protocol`` mode is the leave-one-sub-domain-out protocol of ``benchmarks/bench_dsb_ranking.py``:
each target is the held-out test split of one sub-domain (``<bank>/splits/<domain>/test``), and
the models are those trained on *other* sub-domains. Which models are adapted is chosen without
labels too: the kit's first and third choice on the target (``--ranks``), the likely case (a user
adapts the model the ranking chose) and one that transfers less well. Results are written after
every pair; a rerun skips the pairs already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cte_kit.adapt import AdaptConfig
from cte_kit.data.folder import load_folder
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.estimators.cte import default_settings
from cte_kit.estimators.guards import foreground_agreement
from cte_kit.evaluation.performance import PERFORMANCE_STATISTIC, checkpoint_performance
from cte_kit.evaluation.summary import summarize_results
from cte_kit.evaluation.sweep import read_results, run_sweep, sweep_guards
from cte_kit.estimators.tasks import task_defaults
from cte_kit.models.bank import BankEntry, bank_task, read_bank
from cte_kit.perturb import parse_perturbation
from cte_kit.runs.checkpoints import ChoiceRule, adapt_and_choose, choose_checkpoint
from cte_kit.runs.runner import RunTarget, rows, run, store_guards
from cte_kit.runs.store import ResultStore
from cte_kit.runs.units import Setting
from cte_kit.scoring.consistency import DEFAULT_STATISTIC, summarize
from cte_kit.teaching.demo import DEMO_TASK, demo_bank_entries

VARIANTS = {
    "default": {},
    "ema_0.9": {"ema_decay": 0.9},
    "ema_0.999": {"ema_decay": 0.999},
    "l2sp_0": {"l2sp": 0.0},
    "l2sp_10": {"l2sp": 10.0},
}
#: Label-free signals recorded besides the kit's default estimator: (perturbation, consistencies).
SIGNALS = (("gamma:0.7", ("hard", "instance")), ("dropout:0.2", ("hard",)), ("noise:0.05", ("hard",)))
METRICS = ("f1", "map")
#: A best checkpoint gains something worth recovering when it beats the start by more than this (the goal's
#: tolerance: a choice within 0.01 of the start counts as "no worse").
GAIN = 0.01


def judge(entry: BankEntry, images, names, labels, config: AdaptConfig, work: Path, rule: ChoiceRule = ChoiceRule(),
          signals: bool = True, target_name: str = "target", reference=(), store_path: Path | None = None,
          target_spec: dict | None = None) -> dict:
    """Adapt, let the kit choose, then judge every checkpoint with the labels.

    ``reference`` is the rest of the bank (the kit compares the checkpoints with its consensus);
    ``store_path`` a result store shared with the bank's ranking on the same target (its clean
    predictions are reused); ``target_spec`` says how to read the target again (``rechoose``).

    Returns a JSON-ready dict: ``curve`` (per checkpoint: step, stopping signals, the kit's score and
    flags, other signals, true F1 / mAP), ``choices`` (start, best, last, each stopping rule, kit),
    ``reason`` and timings.
    """
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    store_path = store_path or work / "ranking.sqlite"
    with ResultStore(store_path) as store:
        result = adapt_and_choose(entry, images, names, config, work / f"{entry.name}_adapted.pt", rule, reference,
                                  store=store, target_name=target_name, progress=False)
        seconds_choice = time.perf_counter() - started
        choice, report = result.choice, result.choice.report
        keys = report.images[target_name]
        checkpoints = {s.step: s.model for s in choice.scores}
        extra = {}
        if signals:
            settings = [Setting(parse_perturbation(label), kinds, rule.seed) for label, kinds in SIGNALS]
            extra_report = run([result.checkpoints[s] for s in sorted(checkpoints)],
                               RunTarget(target_name, tuple(images), tuple(names)), settings, store, progress=False)
            for row in rows(store, extra_report.models, keys, settings):
                extra.setdefault(row["model"], {}).setdefault(f"{row['perturbation']}/{row['consistency']}", []).append(
                    row["cte"])
            guards = store_guards(store, report, target_name, list(checkpoints.values()), rule.defaults.guards)
        truth = {statistic: checkpoint_performance(store, choice, dict(zip(names, labels)), statistic)
                 for statistic in (PERFORMANCE_STATISTIC, "mean")}
        start_key = report.models[checkpoints[0]]
        curve = []
        for point, score in zip(result.run.curve, choice.scores):
            model_key = report.models[score.model]
            row = {"step": point.step, "model_key": model_key, "fn_rate": point.fn_rate, "embedding": point.embedding,
                   "weight_distance": point.weight_distance, "kit_score": score.score, "flags": list(score.flags),
                   "agreement_with_bank": score.agreement}
            for metric in METRICS:
                row[metric] = truth[PERFORMANCE_STATISTIC][point.step][metric]
                row[f"{metric}_mean"] = truth["mean"][point.step][metric]
            if signals:
                for name, values in extra.get(score.model, {}).items():
                    row[name] = summarize(np.asarray(values, dtype=float), DEFAULT_STATISTIC).score
                agreement = []
                for key in keys.values():
                    mine, first = store.clean_prediction(model_key, key), store.clean_prediction(start_key, key)
                    agreement.append(foreground_agreement(first[0], mine[0]))
                row["agreement_with_start"] = float(np.mean(agreement))
                row["foreground_fraction"] = guards[score.model].foreground_fraction
                row["objects_per_image"] = guards[score.model].objects_per_image
            curve.append(row)
    report = {"model": entry.name, "kind": entry.kind, "target": target_name, "n_images": len(images),
              "task": rule.defaults.name,
              "settings": {"steps": config.steps, "eval_every": config.eval_every}, "curve": curve,
              "stops": {name: stop.step for name, stop in result.run.stops.items()},
              "seconds_per_step": result.run.seconds_per_step, "seconds_adapt_and_choose": seconds_choice,
              "seconds": time.perf_counter() - started, "store": str(store_path), "target_spec": target_spec,
              "checkpoint_entries": {str(step): e.to_dict() for step, e in result.checkpoints.items()},
              "reference_entries": [e.to_dict() for e in reference]}
    return _with_choice(report, choice)


def _with_choice(report: dict, choice) -> dict:
    """The report with the kit's choice (and its per-checkpoint scores), and the truth of every choice."""
    curve = report["curve"]
    for row, score in zip(curve, choice.scores):
        row.update(kit_score=score.score, flags=list(score.flags), agreement_with_bank=score.agreement,
                   p_gain=score.p_gain)
    by_step = {row["step"]: row for row in curve}
    choices = {"start": 0, "last": curve[-1]["step"], "kit": choice.step}
    choices.update({f"stop_{name}": step for name, step in report["stops"].items()})
    for metric in METRICS:
        choices[f"best_{metric}"] = max(curve, key=lambda r: (np.nan_to_num(r[metric], nan=-1.0), -r["step"]))["step"]
    report["settings"].update(rule=choice.rule.describe(), margin=choice.rule.margin,
                              confidence=choice.rule.confidence, reference=list(choice.reference))
    report.update(choices=choices, reason=choice.reason,
                  truth={name: {m: by_step[step][m] for m in METRICS} for name, step in choices.items()})
    return report


def _target_data(spec: dict):
    """Images, names and labels of a target from its ``target_spec``."""
    if "demo" in spec:
        data = generate(DEMO_TARGET, spec["demo"]["n_images"], shape=(128, 128), seed=spec["demo"]["seed"])
        return data.images, data.names, data.labels
    data = load_folder(spec["images"], spec["labels"], progress=False)
    n = spec.get("n_images")
    images = [i[: spec["crop"], : spec["crop"]] for i in data.images] if spec.get("crop") else data.images
    labels = [l[: spec["crop"], : spec["crop"]] for l in data.labels] if spec.get("crop") else data.labels
    return images[:n], data.names[:n], labels[:n]


def rechoose(args) -> dict:
    """Choose again, with the current rule, on the checkpoints and stores a run left (no adaptation)."""
    results = {}
    for path in args.results:
        document = json.loads(Path(path).read_text())
        for key, report in document.items():
            if not (isinstance(report, dict) and "checkpoint_entries" in report):
                results.setdefault(path, {})[key] = report
                continue
            images, names, labels = _target_data(report["target_spec"])
            entries = read_bank({"models": [report["checkpoint_entries"][str(row["step"])] for row in report["curve"]]})
            checkpoints = {row["step"]: e for row, e in zip(report["curve"], entries)}
            reference = read_bank({"models": report["reference_entries"]}) if report["reference_entries"] else []
            rule = ChoiceRule(args.task or report.get("task"), margin=args.margin, confidence=args.confidence)
            with ResultStore(report["store"]) as store:
                choice = choose_checkpoint(checkpoints, RunTarget(report["target"], tuple(images), tuple(names)),
                                           store, rule, reference if args.bank_check else [], progress=False)
                truth = checkpoint_performance(store, choice, dict(zip(names, labels)))
            for row in report["curve"]:
                row.update({m: truth[row["step"]][m] for m in METRICS})
            results.setdefault(path, {})[key] = _with_choice(report, choice)
            print(_line(report), flush=True)
    for path, document in results.items():
        _save(document, Path(args.out or path))
    return results


def _line(report: dict) -> str:
    t = report["truth"]
    cells = [f"{report['model']} -> {report['target']}"]
    for metric in METRICS:
        cells.append(f"{metric} start {t['start'][metric]:.3f} best {t[f'best_{metric}'][metric]:.3f} "
                     f"last {t['last'][metric]:.3f} fn {t['stop_fn_rate'][metric]:.3f} "
                     f"emb {t['stop_embedding'][metric]:.3f} kit {t['kit'][metric]:.3f}")
    cells.append(f"kit step {report['choices']['kit']}")
    return " | ".join(cells)


def _save(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(results, indent=1, default=float))
    partial.replace(out)


def _config(args) -> AdaptConfig:
    return AdaptConfig(steps=args.steps, eval_every=args.eval_every or max(1, args.steps // 6), seed=args.seed)


def run_demo(args) -> dict:
    """The demo bank on the synthetic target: the worst and the best model (by truth: an illustration), or all."""
    data = generate(DEMO_TARGET, args.n_images, shape=(128, 128), seed=7)
    entries = {e.name: e for e in demo_bank_entries()}
    work = Path(args.work)
    task = task_defaults(DEMO_TASK)
    settings = default_settings(task=task)
    with ResultStore(work / "demo_rank.sqlite") as store:
        result = run_sweep(list(entries.values()), data.images, data.names, store,
                           [parse_perturbation(label) for label in settings], settings, labels=data.labels,
                           progress=False)
        f1 = {r["name"]: r["f1"] for r in summarize_results(read_results(result), task.statistic, n_boot=0,
                                                              task=task)[0]["models"]}
    worst, best = min(f1, key=f1.get), max(f1, key=f1.get)
    results = {"true_f1_before": f1}
    for name in (list(entries) if args.all_models else (worst, best)):
        for variant, changes in VARIANTS.items():
            if variant != "default" and (name == best or not args.variants):
                continue
            report = judge(entries[name], data.images, data.names, data.labels, replace(_config(args), **changes),
                           work / f"{name}_{variant}", ChoiceRule(task), signals=args.signals, target_name="synthetic",
                           reference=[e for m, e in entries.items() if m != name], store_path=work / "demo_rank.sqlite",
                           target_spec={"demo": {"n_images": args.n_images, "seed": 7}})
            results[f"{name}/{variant}"] = report
            _save(results, Path(args.out))
            print(_line(report), flush=True)
    return results


def _entry(args) -> BankEntry:
    path = Path(args.checkpoint)
    if args.kind == "bioimageio" and path.suffix == ".pt":
        from cte_kit.models.bioimageio import export_unet

        exported = Path(args.work) / f"{path.stem}_bioimageio.zip"
        if not exported.exists():
            export_unet(path, exported)
        return BankEntry(f"{path.stem}_bioimageio", "bioimageio", str(exported))
    settings = {"rgb": "grey", "instances": "watershed"} if args.kind == "unet" else {}
    return BankEntry(path.stem, args.kind, str(path), None, settings)


def run_folder(args) -> dict:
    data = load_folder(args.images, args.labels, progress=False)
    images, labels = data.images[: args.n_images], data.labels[: args.n_images]
    if args.crop:
        images = [image[: args.crop, : args.crop] for image in images]
        labels = [label[: args.crop, : args.crop] for label in labels]
    entry = _entry(args)
    target = "/".join(Path(args.images).parts[-3:-1])
    if args.reference == "demo":
        reference = demo_bank_entries()
    else:
        reference = read_bank(args.reference) if args.reference else []
    report = judge(entry, images, data.names[: args.n_images], labels, _config(args),
                   Path(args.work) / f"{entry.name}__{target.replace('/', '_')}", ChoiceRule(args.task),
                   signals=args.signals,
                   target_name=target, reference=[e for e in reference if e.name != entry.name])
    print(_line(report), flush=True)
    return {f"{entry.name} -> {target}": report}  # keyed like protocol mode, so that `rules` reads both


def _protocol_targets(splits: Path, only) -> dict[str, Path]:
    return {d.name: d / "test" for d in sorted(splits.iterdir()) if (not only or d.name in only)}


def run_protocol(args) -> dict:
    """Leave-one-sub-domain-out: every target's held-out split, models from the other sub-domains.

    ``--bank demo`` uses the embedded demo bank (synthetic sources: every model is out of domain)
    on the splits given by ``--splits``.
    """
    if args.bank == "demo":
        entries, info, declared = demo_bank_entries(), {}, DEMO_TASK
        splits = Path(args.splits)
    else:
        bank = Path(args.bank)
        entries = read_bank(bank / "bank.yaml")
        info = json.loads((bank / "bank_info.json").read_text())
        splits = Path(args.splits) if args.splits else bank / "splits"
        declared = bank_task(bank / "bank.yaml")
    task = task_defaults(args.task or declared)
    rule = ChoiceRule(task)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for domain, folder in _protocol_targets(splits, args.targets).items():
        data = load_folder(folder / "images", folder / "labels", progress=False)
        images, labels, names = data.images[: args.n_images], data.labels[: args.n_images], data.names[: args.n_images]
        others = [e for e in entries if info.get(e.name, {}).get("source") != domain]
        work = Path(args.work) / domain
        work.mkdir(parents=True, exist_ok=True)
        # which models to adapt: the kit's own ranking of the other sub-domains' models (no labels)
        with ResultStore(work / "ranking.sqlite") as store:
            settings = default_settings(task=task)
            sweep = run_sweep(others, images, names, store, [parse_perturbation(p) for p in settings],
                              settings, progress=False, target=domain)
            summary = summarize_results(read_results(sweep), task.statistic, n_boot=0,
                                        guards=sweep_guards(sweep, config=task.guards), task=task)[0]
        order = sorted(summary["models"], key=lambda m: m["rank"])
        for rank in args.ranks:
            if rank > len(order):
                continue
            name = order[rank - 1]["name"]
            key = f"{name} -> {domain}"
            if key in results:
                print(f"{key}: done, skipped", flush=True)
                continue
            entry = next(e for e in entries if e.name == name)
            report = judge(entry, images, names, labels, _config(args), work / name, rule, signals=args.signals,
                           target_name=domain, reference=[e for e in others if e.name != name],
                           store_path=work / "ranking.sqlite",
                           target_spec={"images": str((folder / "images").resolve()),
                                        "labels": str((folder / "labels").resolve()), "n_images": args.n_images})
            report["bank_rank"] = rank
            report["flagged_by_bank_guards"] = [f["reason"] for f in order[rank - 1]["flags"]]
            results[key] = report
            _save(results, out)
            print(_line(report), flush=True)
    return results


def train_cellpose(args) -> dict:
    """A Cellpose 3 CPnet trained from scratch on a labelled source folder (``cellpose.train.train_seg``)."""
    from cellpose import models, train

    data = load_folder(args.images, args.labels, progress=False)
    images = [image[: args.crop, : args.crop] if args.crop else image for image in data.images][: args.n_images]
    labels = [label[: args.crop, : args.crop] if args.crop else label for label in data.labels][: args.n_images]
    torch.manual_seed(args.seed)
    network = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=17.0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    path, _, _ = train.train_seg(network.net, train_data=[i.astype(np.float32) for i in images], train_labels=labels,
                                 channels=[0, 0], n_epochs=args.steps, batch_size=8, bsize=128, learning_rate=0.005,
                                 min_train_masks=1, save_path=str(Path(args.out).parent), model_name=Path(args.out).stem)
    print(f"trained {path} in {time.perf_counter() - started:.0f} s", flush=True)
    return {"model": str(path)}


def rules_table(args) -> dict:
    """The validation table (markdown) from one or more result files, and the goal's two numbers per metric."""
    reports = {}
    for path in args.results:
        document = json.loads(Path(path).read_text())
        reports.update({k: v for k, v in document.items() if isinstance(v, dict) and "truth" in v})
    columns = {"start": "start", "best": "best checkpoint", "last": "last", "stop_fn_rate": "FN-rate stop",
               "stop_embedding": "embedding stop", "kit": "kit's choice"}
    print("| model -> target | " + " | ".join(columns.values()) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for key, report in reports.items():
        t, steps = report["truth"], report["choices"]
        cells = []
        for column in columns:
            values = [t[f"best_{m}" if column == "best" else column][m] for m in METRICS]
            step = "" if column == "start" else f" ({steps[column]})" if column != "best" else (
                f" ({steps['best_f1']}/{steps['best_map']})")
            cells.append(" / ".join(f"{v:.3f}" for v in values) + step)
        print(f"| {report['model']} -> {report['target']} | " + " | ".join(cells) + " |")
    summary = {}
    for metric in METRICS:
        shares, drops = [], []
        for report in reports.values():
            t = report["truth"]
            start, best, kit = t["start"][metric], t[f"best_{metric}"][metric], t["kit"][metric]
            drops.append(kit - start)
            if best - start > GAIN:
                shares.append((kit - start) / (best - start))
        worst = int(np.argmin(drops)) if drops else None
        summary[metric] = {"pairs": len(reports), "pairs_with_gain": len(shares),
                           "mean_recovered_share": float(np.mean(shares)) if shares else float("nan"),
                           "worst_vs_start": float(drops[worst]) if drops else float("nan"),
                           "worst_pair": list(reports)[worst] if drops else None}
        recovered = (f"the kit's choice recovers {summary[metric]['mean_recovered_share']:.0%} of the best "
                     f"checkpoint's gain on average over the {len(shares)} of {len(reports)} pairs where the best "
                     f"checkpoint gains more than {GAIN}" if shares else
                     f"in none of the {len(reports)} pairs does the best checkpoint gain more than {GAIN}")
        print(f"{metric}: {recovered}; worst kit choice vs start {summary[metric]['worst_vs_start']:+.3f} "
              f"({summary[metric]['worst_pair']})")
    # why the score alone is weak evidence: self-training raises the consistency it is judged by
    fooled = [f"{key} (score {r['curve'][-1]['kit_score'] - r['curve'][0]['kit_score']:+.3f}, "
              f"F1 {r['truth']['last']['f1'] - r['truth']['start']['f1']:+.3f})" for key, r in reports.items()
              if r["curve"][-1]["kit_score"] > r["curve"][0]["kit_score"]
              and r["truth"]["last"]["f1"] < r["truth"]["start"]["f1"] - GAIN / 2]
    summary["score_rose_while_f1_fell"] = fooled
    print(f"the last checkpoint's score rose while its true F1 fell by more than {GAIN / 2} in {len(fooled)} of "
          f"{len(reports)} pairs" + (": " + ", ".join(fooled) if fooled else ""))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("demo", "folder", "protocol", "train-cellpose", "rules", "rechoose"))
    parser.add_argument("results", nargs="*", help="rules / rechoose mode: result JSON files")
    parser.add_argument("--margin", type=float, default=ChoiceRule.margin, help="rechoose mode: the rule's margin")
    parser.add_argument("--confidence", type=float, default=ChoiceRule.confidence,
                        help="rechoose mode: the rule's bootstrap confidence")
    parser.add_argument("--no-bank-check", dest="bank_check", action="store_false",
                        help="rechoose mode: without the comparison with the rest of the bank")
    parser.add_argument("--steps", type=int, default=120, help="adaptation steps (train-cellpose: epochs)")
    parser.add_argument("--eval-every", type=int, help="steps between checkpoints (default: steps / 6)")
    parser.add_argument("--n-images", type=int, default=16, help="target images (protocol: the first N by name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="folder mode: model file (kit U-Net checkpoint or Cellpose file)")
    parser.add_argument("--kind", default="unet", choices=("unet", "cellpose", "bioimageio"),
                        help="folder mode; bioimageio exports the kit U-Net --checkpoint first")
    parser.add_argument("--images", help="folder mode: target images")
    parser.add_argument("--labels", help="folder mode: target labels (only to judge)")
    parser.add_argument("--crop", type=int, help="folder mode: crop images to CROP x CROP (top left)")
    parser.add_argument("--reference", help="folder mode: the rest of the bank the checkpoints are compared with (a bank "
                                            "YAML, or `demo`); default: none")
    parser.add_argument("--bank", help="protocol mode: the folder dsb_bank.py wrote (bank.yaml, bank_info.json, splits/), "
                                       "or `demo` for the embedded demo bank")
    parser.add_argument("--splits", help="protocol mode: folder of <domain>/test/{images,labels} (default: BANK/splits)")
    parser.add_argument("--targets", nargs="*", help="protocol mode: only these sub-domains")
    parser.add_argument("--task", help="whose defaults rank and choose (default: the bank's task:, else nuclei)")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 3],
                        help="protocol mode: adapt the models the kit ranks at these places (default: 1 3)")
    parser.add_argument("--variants", action="store_true", help="demo mode: also the EMA / L2-SP variants")
    parser.add_argument("--all-models", action="store_true", help="demo mode: adapt every model of the demo bank")
    parser.add_argument("--no-signals", dest="signals", action="store_false",
                        help="skip the other label-free signals (faster)")
    parser.add_argument("--work", default="results/adapt_work", help="checkpoints and result stores")
    parser.add_argument("--out", help="JSON report (rechoose: default, the file read)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode == "rules":
        rules_table(args)
        return
    if args.mode == "rechoose":
        rechoose(args)
        return
    if not args.out:
        sys.exit("--out is required")
    results = {"demo": run_demo, "folder": run_folder, "protocol": run_protocol,
               "train-cellpose": train_cellpose}[args.mode](args)
    _save(results, Path(args.out))


if __name__ == "__main__":
    main()

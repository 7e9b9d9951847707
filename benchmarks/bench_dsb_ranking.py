"""Leave-one-sub-domain-out ranking benchmark on the real DSB2018 bank: paper default vs every option.

Protocol (shared data only, bank from ``benchmarks/dsb_bank.py``):

* each DSB2018 sub-domain in turn is the target; its held-out test split is ranked (a fixed,
  seeded subset of ``--max-images`` images where it is larger; images larger than
  ``--max-side`` are centre-cropped to it, as the official code crops BBBC039 to 512 x 512; the
  defaults 40 images and 256 px keep the sweep of a 14-model bank within ~1 h of a 2-core
  machine, two targets at a time with ``--jobs 2``);
* the bank minus the target's own models (every model trained on that sub-domain) is ranked;
* every perturbation setting is swept once per target with :func:`cte_kit.evaluation.sweep.run_sweep`
  (rows in the result store ``OUT/<target>_n<N>_c<S>.sqlite``; a rerun computes only what is missing);
* each *option* (a perturbation setting, N_pert, statistic, label-free choice, rank combination,
  or the kit's default pairing of each consistency with its own perturbation) turns the
  per-image rows into one score per model; it is judged by Kendall / Spearman / Pearson against
  the true median F1 (hard consistency) and mAP (instance consistency), over all models and over
  the usable ones (true F1 >= 0.5), with paired bootstrap intervals over target images (per
  target, and for the mean over targets);
* options are ranked by their mean Kendall among usable models (average of the F1 and mAP
  columns); how much of a margin survives is checked by a paired bootstrap against the paper's
  default and by leave-one-target-out selection (choose on the other targets, score on the held-out
  one), over both consistencies and for each alone - the check behind the kit's defaults
  (``cte_kit.estimators.cte.DEFAULT_PERTURBATIONS``, ``cte_kit.scoring.consistency.DEFAULT_STATISTIC``).
  Nothing is tuned per target.

    python benchmarks/bench_dsb_ranking.py [--bank results/dsb_bank] [--out results/dsb_ranking]
        [--max-images 40] [--max-side 256] [--n-boot 200] [--cli-targets fluo_360 histo] [--jobs 2] [--fast]

Writes ``OUT/table.md`` (the full table), ``OUT/summary.json`` and ``OUT/separation_<target>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dsb_bank import BANK, DOMAINS, split_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
USABLE_F1 = 0.5

# -- the settings that are swept, in priority order (label, n_pert) -----------------------------
BOTTLENECK = ("dropout:0.05", "dropout:0.1", "dropout:0.2", "dropout:0.3", "dropout:0.5")
LAYERS = ("dropout:0.1@sym1", "dropout:0.2@sym1", "dropout:0.3@sym1", "dropout:0.1@sym2", "dropout:0.2@sym2",
          "dropout:0.05@all", "dropout:0.1@all", "dropout:0.2@all", "dropout:0.1@encoders", "dropout:0.1@decoders")
INPUTS = ("noise:0.05", "noise:0.1", "brightness:0.15", "contrast:0.5", "contrast:0.7", "gamma:0.7", "gamma:1.3")
REPEATED = {3: ("dropout:0.2", "dropout:0.2@sym1", "dropout:0.1@all")}
CONSISTENCIES = ("hard", "soft", "instance")
PAPER = "dropout:0.2"


def sweep_groups(fast: bool = False, settings: tuple[str, ...] = ()) -> list[tuple[int, tuple[str, ...]]]:
    """(n_pert, settings) groups, most important first: every target gets a group before the next."""
    if settings:
        return [(1, settings)]
    if fast:
        return [(1, ("dropout:0.2", "dropout:0.2@sym1", "gamma:0.7"))]
    return [(1, BOTTLENECK), (1, LAYERS), (1, INPUTS), *((n, labels) for n, labels in REPEATED.items())]


@dataclass(frozen=True)
class Component:
    """One perturbation's per-image CTE, aggregated over images; ``consistency`` None: the one judged."""

    perturbation: str
    n_pert: int = 1
    statistic: str = "median"
    consistency: str | None = None


@dataclass(frozen=True)
class Option:
    """How a model's score is made. ``hard``/``instance`` components are judged against F1 / mAP.

    One component: its statistic over images. Several: ``combine='borda'`` aggregates their
    ranks; ``combine='choose'`` takes the label-free choice among them (per target, per draw).
    ``cross`` adds the other consistency's components to the Borda combination. ``per-kind``
    judges each consistency by the component of that consistency (the kit's default pairs).
    """

    name: str
    components: tuple[Component, ...]
    combine: str = "single"
    kinds: tuple[str, ...] = ("hard", "instance")
    note: str = ""
    #: rank models flagged by the label-free guards (cte_kit.estimators.guards) after the others
    guards: bool = False


    @property
    def cross_kinds(self) -> tuple[str, ...]:
        """The consistencies a ``cross`` combination ranks by (every one for a single component)."""
        return ("hard", "soft", "instance") if len(self.components) == 1 else ("hard", "instance")

    def keys(self) -> set[tuple[str, int, str]]:
        """The (perturbation, n_pert, consistency) rows this option reads."""
        if self.combine == "cross":
            return {(c.perturbation, c.n_pert, k) for c in self.components for k in self.cross_kinds}
        return {(c.perturbation, c.n_pert, c.consistency or k) for c in self.components for k in self.kinds}


def _c(perturbation, n_pert=1, statistic="median", consistency=None):
    return Component(perturbation, n_pert, statistic, consistency)


def kit_default(task: str = "nuclei", kinds: tuple[str, ...] = ("hard", "instance")) -> Option:
    """The kit's default for a task (``cte_kit.estimators.tasks.task_defaults``, ``cte-kit rank --task``): per
    consistency its own perturbation, the task's statistic, and the task's label-free guards."""
    from cte_kit.estimators.tasks import task_defaults

    defaults = task_defaults(task)
    return Option("kit default (per consistency: " + ", ".join(f"{k} {defaults.perturbations[k]}" for k in kinds)
                  + f"; {defaults.statistic}; guards)",
                  tuple(_c(defaults.perturbations[k], 1, defaults.statistic, k) for k in kinds),
                  combine="per-kind", kinds=kinds, guards=True)


#: The kit's default before the guards existed (chosen by this protocol on a GPU-trained bank).
PREVIOUS_DEFAULT = Option("kit default before guards (hard dropout:0.2, instance gamma:0.7; mean)",
                          (_c(PAPER, 1, "mean", "hard"), _c("gamma:0.7", 1, "mean", "instance")), combine="per-kind")


def with_guards(option: Option) -> Option:
    return replace(option, name=f"{option.name} + guards", guards=True)


def build_options(fast: bool = False) -> list[Option]:
    """Every option of the protocol, each also with the guards; the first one is the paper's default."""
    default = kit_default()
    options = [Option("paper default (dropout:0.2 bottleneck, N=1, median)", (_c(PAPER),), note="reference"),
               PREVIOUS_DEFAULT,
               Option("Borda: kit default's hard and instance rankings", default.components, combine="borda")]
    for label in BOTTLENECK + LAYERS:
        for statistic in ("median", "mean", "trimmed", "tie-aware"):
            if (label, statistic) != (PAPER, "median"):
                options.append(Option(f"{label} {statistic}", (_c(label, 1, statistic),)))
    for label in INPUTS:
        for statistic in ("median", "mean"):
            options.append(Option(f"{label} {statistic}", (_c(label, 1, statistic),)))
    for n, labels in REPEATED.items():
        for label in labels:
            for statistic in ("median", "mean"):
                options.append(Option(f"{label} N_pert={n} {statistic}", (_c(label, n, statistic),)))
    options.append(Option("soft consistency, dropout:0.2 median (vs F1)", (_c(PAPER),), kinds=("soft",)))
    options.append(Option("soft consistency, dropout:0.2 mean (vs F1)", (_c(PAPER, 1, "mean"),), kinds=("soft",)))
    grid_b = tuple(_c(p) for p in BOTTLENECK)
    grid_all = tuple(_c(p) for p in BOTTLENECK + LAYERS)
    options.append(Option("label-free choice: bottleneck p, median", grid_b, combine="choose"))
    options.append(Option("label-free choice: bottleneck p, mean", tuple(_c(c.perturbation, 1, "mean") for c in grid_b),
                          combine="choose"))
    options.append(Option("label-free choice: p and layer, median", grid_all, combine="choose"))
    options.append(Option("label-free choice: p and layer, mean", tuple(_c(c.perturbation, 1, "mean") for c in grid_all),
                          combine="choose"))
    options.append(Option(f"Borda: {len(INPUTS)} input perturbations, median", tuple(_c(p) for p in INPUTS),
                          combine="borda"))
    options.append(Option(f"Borda: dropout:0.2 + {len(INPUTS)} input perturbations, median",
                          tuple(_c(p) for p in (PAPER,) + INPUTS), combine="borda"))
    options.append(Option("Borda: all feature settings + inputs, mean",
                          tuple(_c(p, 1, "mean") for p in BOTTLENECK + LAYERS + INPUTS), combine="borda"))
    options.append(Option("Borda: hard+soft+instance, dropout:0.2 median", (_c(PAPER),), combine="cross"))
    options.append(Option("Borda: hard+soft+instance, dropout:0.2 mean", (_c(PAPER, 1, "mean"),), combine="cross"))
    options.append(Option("Borda: hard+instance x (dropout:0.2, dropout:0.2@sym1), mean",
                          (_c(PAPER, 1, "mean"), _c("dropout:0.2@sym1", 1, "mean")), combine="cross"))
    if fast:
        wanted = {"dropout:0.2", "dropout:0.2@sym1", "gamma:0.7"}
        options = [o for o in options if all(c.perturbation in wanted and c.n_pert == 1 for c in o.components)]
    guarded = [with_guards(o) for o in options]
    # the kit's default is one of the guarded options when its perturbations are: name it as such
    same = lambda o: (o.components, o.combine, o.guards) == (default.components, default.combine, default.guards)
    guarded = [default if same(o) else o for o in guarded]
    return options + guarded + ([] if any(same(o) for o in guarded) else [default])


# -- target data ------------------------------------------------------------------------------
def crop(array: np.ndarray, side: int) -> np.ndarray:
    height, width = array.shape[:2]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return array[top : top + side, left : left + side]


def tiles(array: np.ndarray, side: int) -> list[tuple[str, np.ndarray]]:
    """Non-overlapping ``side`` x ``side`` tiles in reading order, named by their corner; an image no larger
    than ``side`` is one tile, and a partial tile at the border is left out."""
    height, width = array.shape[:2]
    if height <= side and width <= side:
        return [("", array)]
    return [(f"_y{top}x{left}", array[top:top + side, left:left + side])
            for top in range(0, height - side + 1, side) for left in range(0, width - side + 1, side)]


def load_target(bank_dir: Path, domain: str, max_images: int, max_side: int, tile: bool = False):
    """The held-out test split of ``domain``: a seeded subset of ``max_images`` centre crops (or, with
    ``tile``, of the tiles of every image: large EM sections give several) of at most ``max_side`` pixels."""
    from cte_kit.data.folder import load_folder

    images_dir, labels_dir = split_folder(bank_dir, domain, "test")
    data = load_folder(images_dir, labels_dir, progress=False)
    if tile:
        pieces = [(name + suffix, image, label) for name, image, full_label in zip(data.names, data.images, data.labels)
                  for (suffix, image), (_, label) in zip(tiles(image, max_side), tiles(full_label, max_side))]
    else:
        pieces = [(name, crop(image, max_side), crop(label, max_side))
                  for name, image, label in zip(data.names, data.images, data.labels)]
    order = np.arange(len(pieces))
    if len(order) > max_images:
        order = np.sort(np.random.default_rng(0).choice(len(order), max_images, replace=False))
    return [pieces[i][1] for i in order], [pieces[i][2] for i in order], [pieces[i][0] for i in order]


def target_bank(bank_dir: Path, domain: str, own: set[str] | None = None):
    """The bank less the models trained on the target's own domain (``own``; default: those of the DSB2018 bank)."""
    from cte_kit.models.bank import read_bank

    own = own if own is not None else {spec.name for spec in BANK if spec.source == domain}
    return [entry for entry in read_bank(bank_dir / "bank.yaml") if entry.name not in own]


# -- per-image tables from the rows -----------------------------------------------------------
@dataclass
class TargetTables:
    models: list[str]
    images: list[str]
    cte: dict = field(default_factory=dict)  # (perturbation, n_pert, kind) -> (n_models, n_images)
    perf: dict = field(default_factory=dict)  # metric -> (n_models, n_images)
    guards: dict = field(default_factory=dict)  # model -> cte_kit.estimators.guards.ModelGuards (label-free, all images)

    def flagged(self, kind: str) -> np.ndarray:
        return np.array([bool(self.guards[m].flags_for(kind)) if m in self.guards else False for m in self.models])


def tables_from_rows(rows, models, images) -> TargetTables:
    tables = TargetTables(models, images)
    m_index = {m: i for i, m in enumerate(models)}
    i_index = {n: i for i, n in enumerate(images)}
    for metric in ("f1", "map"):
        tables.perf[metric] = np.full((len(models), len(images)), np.nan)
    for row in rows:
        if row["model"] not in m_index or row["image"] not in i_index:
            continue
        mi, ii = m_index[row["model"]], i_index[row["image"]]
        key = (row["perturbation"], row["n_pert"], row["consistency"])
        if key not in tables.cte:
            tables.cte[key] = np.full((len(models), len(images)), np.nan)
        tables.cte[key][mi, ii] = row["cte"]
        # true performance is of the clean prediction: the same in every row of a model and image
        for metric in ("f1", "map"):
            if np.isfinite(row.get(metric, np.nan)):
                tables.perf[metric][mi, ii] = row[metric]
    return tables


def option_scores(option: Option, tables: TargetTables, kind: str, columns: np.ndarray):
    """One score per model for ``option`` judged on ``kind``, using the image columns ``columns``."""
    from cte_kit.estimators.guards import guarded_order

    score = _unguarded_scores(option, tables, kind, columns)
    return guarded_order(score, tables.flagged(kind)) if option.guards else score


def _unguarded_scores(option: Option, tables: TargetTables, kind: str, columns: np.ndarray):
    from cte_kit.scoring.consistency import nan_statistic
    from cte_kit.estimators.selection import aggregate_ranks, choose_strength

    def vector(component, consistency):
        consistency = component.consistency or consistency
        matrix = tables.cte.get((component.perturbation, component.n_pert, consistency))
        if matrix is None:
            return np.full(len(tables.models), np.nan)
        return np.asarray(nan_statistic(matrix[:, columns], component.statistic), dtype=float)

    if option.combine == "single":
        return vector(option.components[0], kind)
    if option.combine == "per-kind":
        return vector(next(c for c in option.components if c.consistency == kind), kind)
    if option.combine == "borda":
        return aggregate_ranks([vector(c, kind) for c in option.components])
    if option.combine == "cross":
        return aggregate_ranks([vector(c, k) for c in option.components for k in option.cross_kinds])
    if option.combine == "choose":
        by_setting = {c.perturbation: vector(c, kind) for c in option.components}
        choice = choose_strength(by_setting)
        return by_setting[choice.setting] if choice.setting is not None else np.full(len(tables.models), np.nan)
    raise ValueError(option.combine)


def chosen_setting(option: Option, tables: TargetTables, kind: str) -> str | None:
    from cte_kit.scoring.consistency import nan_statistic
    from cte_kit.estimators.selection import choose_strength

    columns = np.arange(len(tables.images))
    by_setting = {}
    for c in option.components:
        matrix = tables.cte.get((c.perturbation, c.n_pert, kind))
        if matrix is not None:
            by_setting[c.perturbation] = nan_statistic(matrix[:, columns], c.statistic)
    return choose_strength(by_setting).setting if by_setting else None


def _correlate(score, truth):
    """(kendall, spearman, pearson) of finite pairs; NaN with < 3 models or a constant vector."""
    keep = np.isfinite(score) & np.isfinite(truth)
    x, y = score[keep], truth[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (math.nan, math.nan, math.nan)
    return (float(stats.kendalltau(x, y).statistic), float(stats.spearmanr(x, y).statistic),
            float(stats.pearsonr(x, y).statistic))


METRIC_FOR = {"hard": "f1", "soft": "f1", "instance": "map"}


def evaluate_target(options, tables: TargetTables, n_boot: int, seed: int = 0, usable_metric: str = "f1",
                    usable_from: float = USABLE_F1, task: str = "nuclei"):
    """Per option and kind: point correlations (all / usable), bootstrap replicates over images, the top pick and
    its regret (the best model's true score minus the pick's; NaN when nothing is recommended).

    A model is usable when its true ``usable_metric`` (median over images) reaches ``usable_from``. With the guards,
    nothing is recommended where the kit's summaries recommend nothing: the guards' verdict
    (``cte_kit.estimators.guards.bank_verdict``: every model flagged, or one left that no consensus checked) or a
    top unflagged score below the task's ``Task.recommend_from``."""
    from cte_kit.estimators.guards import bank_verdict
    from cte_kit.estimators.tasks import task_defaults
    from cte_kit.evaluation.summary import regret

    n_images = len(tables.images)
    all_columns = np.arange(n_images)
    truth = {m: np.nanmedian(tables.perf[m], axis=1) for m in ("f1", "map")}
    usable = truth[usable_metric] >= usable_from
    task = task_defaults(task)
    draws = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
    results = {}
    for option in options:
        for kind in option.kinds:
            metric = METRIC_FOR[kind]
            score = option_scores(option, tables, kind, all_columns)
            point = {"all": _correlate(score, truth[metric]), "usable": _correlate(score[usable], truth[metric][usable])}
            boot = {"all": np.full((n_boot, 3), np.nan), "usable": np.full((n_boot, 3), np.nan)}
            for b, columns in enumerate(draws):
                s = option_scores(option, tables, kind, columns)
                t = np.nanmedian(tables.perf[metric][:, columns], axis=1)
                boot["all"][b] = _correlate(s, t)
                boot["usable"][b] = _correlate(s[usable], t[usable])
            top = int(np.nanargmax(score)) if np.isfinite(score).any() else None
            no_recommendation = bool(option.guards and (bank_verdict(tables.guards, kind, task.guards) is not None
                                                        or top is None or score[top] < task.recommend_from))
            results[(option.name, kind)] = {
                "regret": math.nan if no_recommendation else regret(truth[metric], top),
                "score": score, "point": point, "boot": boot,
                "top": tables.models[top] if top is not None else None,
                "top_usable": bool(usable[top]) if top is not None else False,
                "top_flagged": bool(tables.flagged(kind)[top]) if top is not None else False,
                "no_recommendation": no_recommendation,
            }
    return results, {"f1": truth["f1"], "map": truth["map"], "usable": usable}


# -- main -------------------------------------------------------------------------------------
def sweep_target(entries, images, labels, names, store, domain, fast, settings, threads,
                 groups=None, consistencies=CONSISTENCIES) -> list[str]:
    """Every setting group on one target (resumable rows in the result store ``store``); returns the log lines.
    ``groups``: (n_pert, settings) pairs to sweep instead of this protocol's."""
    import torch

    torch.set_num_threads(threads)
    from cte_kit.perturb import parse_perturbation
    from cte_kit.evaluation.sweep import run_sweep

    lines = []
    for n_pert, group in groups if groups is not None else sweep_groups(fast, settings):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = run_sweep(entries, images, names, store, [parse_perturbation(p) for p in group],
                               consistencies, labels=labels, seed=0, n_pert=n_pert, progress=False)
        lines += [f"FAILED {f.model} {f.setting}: {f.error}" for f in result.failures]
        lines.append(f"[{domain}] {len(entries)} models x {len(images)} images, N_pert={n_pert} {', '.join(group)}: "
                     f"{result.n_new_rows} new rows in {time.perf_counter() - started:.0f} s")
    return lines


#: ``cte-kit rank`` arguments of the two settings run through the real command line.
CLI_SETTINGS = {"paper": ["--perturbation", PAPER, "--statistic", "median", "--no-guards"], "kit default": []}


def run_cli_table(bank_dir: Path, out: Path, targets) -> list[dict]:
    """The paper's and the kit's default through the real ``cte-kit rank`` on the full held-out splits."""
    from cte_kit.cli import main as cli_main

    records = []
    for domain in targets:
        entries = target_bank(bank_dir, domain)
        bank_file = out / "cli" / f"bank_{domain}.yaml"
        bank_file.parent.mkdir(parents=True, exist_ok=True)
        bank_file.write_text(yaml.safe_dump({"models": [e.to_dict() for e in entries]}, sort_keys=False))
        images, labels = split_folder(bank_dir, domain, "test")
        for setting_name, arguments in CLI_SETTINGS.items():
            tag = setting_name.replace(" ", "_")
            summary = out / "cli" / f"summary_{domain}_{tag}.json"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = cli_main(["rank", "--bank", str(bank_file), "--images", str(images), "--labels", str(labels),
                                 *arguments, "--consistency", "hard", "--consistency", "instance",
                                 "--out", str(out / "cli" / f"results_{domain}.sqlite"), "--summary", str(summary),
                                 "--no-progress"])
            if code not in (0, 1):
                raise RuntimeError(f"cte-kit rank failed on {domain} ({code})")
            records += _cli_records(json.loads(summary.read_text()), domain, setting_name)
    return records


def _cli_records(document: dict, domain: str, setting_name: str) -> list[dict]:
    records = []
    for setting in document["settings"]:
        records.append({"target": domain, "setting": f"{setting_name}: {setting['perturbation']}, {setting['statistic']}",
                        "consistency": setting["consistency"], "metric": setting["performance_metric"],
                        "n_models": len(setting["models"]), "n_images": setting["n_images"],
                        "kendall": setting.get("kendall"), "spearman": setting.get("spearman"),
                        "pearson": setting.get("pearson"), "tied_at_top": setting["tied_at_top"]})
    return records


def fmt(value, digits=2):
    return "  nan" if value is None or not np.isfinite(value) else f"{value:+.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", default=str(REPO / "results" / "dsb_bank"), help="folder of dsb_bank.py")
    parser.add_argument("--out", default=str(REPO / "results" / "dsb_ranking"))
    parser.add_argument("--targets", nargs="*", default=list(DOMAINS))
    parser.add_argument("--max-images", type=int, default=40)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--cli-targets", nargs="*", default=["fluo_360", "histo"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per target process (default: 1)")
    parser.add_argument("--jobs", type=int, default=2, help="targets swept at once, one process each (default: 2)")
    parser.add_argument("--sweep-only", action="store_true", help="compute the rows, skip the evaluation")
    parser.add_argument("--fast", action="store_true", help="smoke run: 3 settings, 6 images per target")
    parser.add_argument("--settings", nargs="*",
                        help="sweep only these perturbations (N_pert 1), e.g. the paper's and the kit's defaults "
                             "on a second bank; the options that need others are left out")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from cte_kit.evaluation.sweep import read_results, sweep_guards

    bank_dir, out = Path(args.bank), Path(args.out)
    if not (bank_dir / "bank.yaml").exists():
        print(f"no bank in {bank_dir}: run benchmarks/dsb_bank.py first", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    max_images = 6 if args.fast else args.max_images
    targets = {}
    for domain in args.targets:
        images, labels, names = load_target(bank_dir, domain, max_images, args.max_side)
        targets[domain] = (target_bank(bank_dir, domain), images, labels, names,
                           out / f"{domain}_n{max_images}_c{args.max_side}.sqlite")
    # one process per target (spawned: no inherited thread pools), largest target first
    context = multiprocessing.get_context("spawn")
    order = sorted(targets, key=lambda d: -len(targets[d][0]) * len(targets[d][1]))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = [pool.submit(sweep_target, targets[d][0], targets[d][1], targets[d][2], targets[d][3], targets[d][4],
                               d, args.fast, tuple(args.settings or ()), args.threads) for d in order]
        for future in futures:
            for line in future.result():
                print(line, flush=True)
    if args.sweep_only:
        return 0
    per_target, truths, tables_by_target = {}, {}, {}
    available = None
    for domain, (entries, images, labels, names, store) in targets.items():
        tables = tables_from_rows(read_results(store), [e.name for e in entries], names)
        tables.guards = sweep_guards(store, tables.models, names)
        tables_by_target[domain] = tables
        # a model without any foreground has no score (it ranks last); a setting needs scores on every target
        keys = {key for key, matrix in tables.cte.items() if np.isfinite(matrix).any()}
        available = keys if available is None else available & keys
    options = [o for o in build_options(args.fast) if o.keys() <= available]
    for domain, tables in tables_by_target.items():
        started = time.perf_counter()
        per_target[domain], truths[domain] = evaluate_target(options, tables, args.n_boot)
        print(f"[{domain}] evaluated {len(options)} options in {time.perf_counter() - started:.0f} s", flush=True)
    report = write_report(options, per_target, truths, tables_by_target, out, args)
    if args.cli_targets and not args.fast:
        report["cli"] = run_cli_table(bank_dir, out, args.cli_targets)
        lines = ["", "## Paper default and kit default via `cte-kit rank`, full held-out split, all models", "",
                 "| target | setting | consistency | vs | models | images | Kendall | Spearman | Pearson | tied at top |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["cli"]:
            lines.append(f"| {r['target']} | {r['setting']} | {r['consistency']} | {r['metric']} | {r['n_models']} | {r['n_images']} | "
                         f"{fmt(r['kendall'])} | {fmt(r['spearman'])} | {fmt(r['pearson'])} | {r['tied_at_top']} |")
        print("\n".join(lines))
        with open(out / "table.md", "a") as handle:
            handle.write("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(report, indent=2, default=float))
    return 0


def _mean_ci(values_by_target, boot_by_target, column):
    points = np.array([v[column] for v in values_by_target])
    mean = float(np.nanmean(points)) if np.isfinite(points).any() else math.nan
    std = float(np.nanstd(points)) if np.isfinite(points).any() else math.nan
    stacked = np.stack([b[:, column] for b in boot_by_target])  # (targets, n_boot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replicate_means = np.nanmean(stacked, axis=0)
    finite = replicate_means[np.isfinite(replicate_means)]
    low, high = (np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan))
    return mean, std, float(low), float(high), int(np.isfinite(points).sum())


def write_report(options, per_target, truths, tables_by_target, out: Path, args) -> dict:
    targets = list(per_target)
    lines = ["# Leave-one-sub-domain-out ranking on the DSB2018 bank", ""]
    lines.append(f"Targets: held-out test split of each sub-domain (at most {args.max_images if not args.fast else 6} "
                 f"images, seeded subset; centre crop to at most {args.max_side} px); the target's own models are left out. "
                 f"Usable = true F1 >= {USABLE_F1}. Bootstrap: {args.n_boot} paired resamples of target images. "
                 "K/S/P = Kendall tau-b / Spearman / Pearson of CTE vs true median F1 (hard, soft) or mAP (instance).")
    lines += ["", "## True performance (median over the target images)", ""]
    for domain in targets:
        tables, truth = tables_by_target[domain], truths[domain]
        parts = [f"{m} F1 {truth['f1'][i]:.3f} mAP {truth['map'][i]:.3f}{'' if truth['usable'][i] else ' (unusable)'}"
                 for i, m in enumerate(tables.models)]
        lines.append(f"- **{domain}** ({len(tables.images)} images): " + "; ".join(parts))
    report = {"targets": targets, "options": [], "truth": {d: {"models": tables_by_target[d].models,
                                                                 "f1": truths[d]["f1"].tolist(),
                                                                 "map": truths[d]["map"].tolist()} for d in targets}}
    summary_rows = []
    for option in options:
        for kind in option.kinds:
            key = (option.name, kind)
            record = {"option": option.name, "consistency": kind, "metric": METRIC_FOR[kind], "per_target": {}}
            for subset in ("all", "usable"):
                values = [per_target[d][key]["point"][subset] for d in targets]
                boots = [per_target[d][key]["boot"][subset] for d in targets]
                record[subset] = {name: _mean_ci(values, boots, col) for col, name in enumerate(("kendall", "spearman", "pearson"))}
            for d in targets:
                entry = per_target[d][key]
                record["per_target"][d] = {
                    subset: {"point": list(entry["point"][subset]),
                             "kendall_ci": [float(x) for x in np.nanpercentile(entry["boot"][subset][:, 0], [2.5, 97.5])]
                             if np.isfinite(entry["boot"][subset][:, 0]).any() else [math.nan, math.nan]}
                    for subset in ("all", "usable")}
                if option.combine == "choose":
                    record["per_target"][d]["chosen"] = chosen_setting(option, tables_by_target[d], kind)
            summary_rows.append(record)
    report["options"] = summary_rows

    def table(subset, kinds):
        rows = [r for r in summary_rows if r["consistency"] in kinds]
        head = "| option | " + " | ".join(f"{d} K" for d in targets) + " | mean K [95% CI] | std K | mean S | mean P |"
        body = [head, "|" + "---|" * (len(targets) + 5)]
        for r in rows:
            k = r[subset]["kendall"]
            cells = [fmt(r["per_target"][d][subset]["point"][0]) for d in targets]
            body.append(f"| {r['option']} | " + " | ".join(cells) + f" | {fmt(k[0])} [{fmt(k[2])}, {fmt(k[3])}] (n={k[4]}) | "
                        f"{fmt(k[1])} | {fmt(r[subset]['spearman'][0])} | {fmt(r[subset]['pearson'][0])} |")
        return body

    for kind, title in (("hard", "hard consistency vs F1"), ("instance", "instance consistency vs mAP"),
                        ("soft", "soft consistency vs F1")):
        for subset in ("usable", "all"):
            lines += ["", f"## {title}, {subset} models", ""] + table(subset, (kind,))
    # per-target bootstrap intervals of Kendall for the paper default and the winner
    by_option = {}
    for r in summary_rows:
        if r["consistency"] in ("hard", "instance"):
            by_option.setdefault(r["option"], []).append(r["usable"]["kendall"][0])
    ranking = sorted(((np.nanmean(v), name) for name, v in by_option.items() if len(v) == 2), reverse=True)
    best = ranking[0][1]
    paper = options[0].name
    names = {o.name for o in options}
    default = kit_default().name if kit_default().name in names else paper
    lines += ["", "## Selection (mean Kendall among usable models, average of the F1 and mAP columns)", ""]
    for value, name in ranking:
        lines.append(f"- {value:+.3f}  {name}{'  <- best' if name == best else ''}{'  (paper default)' if name == paper else ''}"
                     f"{'  (kit default)' if name == default else ''}")
    lines += selection_checks(by_option, per_target, targets, best, paper, default, report)
    lines += ["", "## Per-target Kendall (usable) with 95% bootstrap intervals: paper default, kit default, best", ""]
    for name in dict.fromkeys((paper, default, best)):
        for r in summary_rows:
            if r["option"] == name and r["consistency"] in ("hard", "instance"):
                cells = [f"{d} {fmt(r['per_target'][d]['usable']['point'][0])} "
                         f"[{fmt(r['per_target'][d]['usable']['kendall_ci'][0])}, {fmt(r['per_target'][d]['usable']['kendall_ci'][1])}]"
                         for d in targets]
                lines.append(f"- {name} / {r['consistency']}: " + "; ".join(cells))
    lines += top_pick_lines([o.name for o in options if o.name in
                             (paper, f"{paper} + guards", PREVIOUS_DEFAULT.name, f"{PREVIOUS_DEFAULT.name} + guards",
                              default, best)], per_target, truths, tables_by_target, report)
    choices = [r for r in summary_rows if "chosen" in next(iter(r["per_target"].values()))]
    if choices:
        lines += ["", "## Label-free choices per target", ""]
        for r in choices:
            lines.append(f"- {r['option']} / {r['consistency']}: " +
                         ", ".join(f"{d}: {r['per_target'][d]['chosen']}" for d in targets))
    report["best"], report["paper"], report["kit_default"] = best, paper, default
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    try:
        plot_separation(options, tables_by_target, out)
    except Exception as error:  # plotting must not lose the table
        print(f"(separation plots failed: {error})", file=sys.stderr)
    return report


def top_pick_lines(names, per_target, truths, tables_by_target, report) -> list[str]:
    """Which model each option puts first on each target: usable? flagged? ("never confidently wrong")."""
    targets = list(per_target)
    lines = ["", "## Top pick per target (the pick, its true F1 (hard) or mAP (instance) and its regret = the best "
             f"model's minus the pick's; `unusable`: F1 < {USABLE_F1}; `flagged`: by the guards; `no pick`: the kit recommends "
             "none - every model flagged, one left that no consensus checked, or a consistency below the floor)", "",
             "| option | consistency | " + " | ".join(targets) + " | unusable or flagged picks where a usable model exists "
             "| max regret |", "|---|---|" + "---|" * (len(targets) + 2)]
    report["top_picks"] = {}
    for name in names:
        for kind in ("hard", "instance"):
            cells, bad, regrets = [], 0, []
            for domain in targets:
                entry, truth = per_target[domain].get((name, kind)), truths[domain]
                if entry is None:
                    cells.append("")
                    continue
                any_usable = bool(truth["usable"].any())
                if entry["no_recommendation"]:
                    cells.append("no pick" + ("" if not any_usable else " (a usable model existed)"))
                    bad += any_usable
                    continue
                index = tables_by_target[domain].models.index(entry["top"])
                tags = [t for t, on in (("unusable", not entry["top_usable"]), ("flagged", entry["top_flagged"])) if on]
                cells.append(f"{entry['top']} {truth[METRIC_FOR[kind]][index]:.2f} (regret {entry['regret']:.2f})"
                             + (f" ({', '.join(tags)})" if tags else ""))
                regrets.append(entry["regret"])
                bad += any_usable and bool(tags)
            worst = max(regrets) if regrets else math.nan
            report["top_picks"][f"{name} / {kind}"] = {"cells": cells, "bad": bad, "max_regret": worst}
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + f" | {bad} | {worst:.2f} |")
    return lines


def selection_checks(by_option, per_target, targets, best, paper, default, report) -> list[str]:
    """How much of a margin survives: paired bootstraps of the best option and of the kit default
    against the paper default, and leave-one-target-out selections (choose on the other targets,
    score on this one) over both consistencies together and for each consistency alone."""
    def value(name, domain, kinds=("hard", "instance")):  # mean usable Kendall over the kinds' columns
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.nanmean([per_target[domain][(name, kind)]["point"]["usable"][0] for kind in kinds]))

    def replicates(name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per = np.stack([np.nanmean(np.stack([per_target[d][(name, k)]["boot"]["usable"][:, 0] for k in ("hard", "instance")]), axis=0)
                            for d in targets])  # (targets, n_boot)
            return np.nanmean(per, axis=0)

    lines = ["", "## How sure is the selection?", ""]
    compared = {"kit_default": default, **({"best": best} if best != default else {})}
    for label, name in compared.items():
        difference = replicates(name) - replicates(paper)
        finite = difference[np.isfinite(difference)]
        if finite.size:
            low, high = np.percentile(finite, [2.5, 97.5])
            share = float((finite > 0).mean())
            lines.append(f"- Paired bootstrap over target images (same draws for both): mean usable Kendall of "
                         f"'{name}' minus the paper default = {np.mean(finite):+.3f} [95% {low:+.3f}, {high:+.3f}]; "
                         f"better in {share:.0%} of the replicates.")
            report[f"{label}_minus_paper"] = {"option": name, "mean": float(np.mean(finite)), "low": float(low),
                                              "high": float(high), "share": share}
    usable_targets = [d for d in targets if np.isfinite(value(paper, d))]
    report["leave_one_target_out"] = {}
    for kinds in (("hard", "instance"), ("hard",), ("instance",)):
        candidates = [name for name in by_option if all((name, k) in per_target[usable_targets[0]] for k in kinds)]
        held_out = []
        lines.append(f"- leave one target out, choosing on {' + '.join(kinds)}:")
        for domain in usable_targets:
            others = [d for d in usable_targets if d != domain]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chosen = max(candidates, key=lambda name: np.nan_to_num(np.nanmean([value(name, d, kinds) for d in others]),
                                                                         nan=-9))
            held_out.append({"target": domain, "chosen": chosen, "chosen_kendall": value(chosen, domain, kinds),
                             "paper_kendall": value(paper, domain, kinds), "default_kendall": value(default, domain, kinds)})
            lines.append(f"  - leave {domain} out: '{chosen}' chosen on the others scores {held_out[-1]['chosen_kendall']:+.3f} "
                         f"on {domain} (paper default {held_out[-1]['paper_kendall']:+.3f}, kit default "
                         f"{held_out[-1]['default_kendall']:+.3f})")
        if held_out:
            means = {k: float(np.nanmean([h[k] for h in held_out])) for k in ("chosen_kendall", "paper_kendall", "default_kendall")}
            lines.append(f"  - mean: selected {means['chosen_kendall']:+.3f}, paper default {means['paper_kendall']:+.3f}, "
                         f"kit default {means['default_kendall']:+.3f} (selected = the honest estimate of 'pick the best "
                         "option on this protocol')")
            report["leave_one_target_out"]["+".join(kinds)] = {"folds": held_out, **means}
    return lines


def plot_separation(options, tables_by_target, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cte_kit.scoring.consistency import DEFAULT_STATISTIC, nan_statistic
    from cte_kit.reports.plots import save_figure, separation_sweep
    from cte_kit.estimators.selection import choose_strength

    # the widest label-free choice (rates and layers), aggregated as the kit aggregates
    choices = [o for o in options if o.combine == "choose"]
    if not choices:
        return
    option = max(choices, key=lambda o: (len(o.components), o.components[0].statistic == DEFAULT_STATISTIC))
    for domain, tables in tables_by_target.items():
        figure, axes = plt.subplots(2, 2, figsize=(17, 9), constrained_layout=True)
        for row, kind in zip(axes, ("hard", "instance")):
            by_setting, kendall = {}, {}
            perf = np.nanmedian(tables.perf[METRIC_FOR[kind]], axis=1)
            for c in option.components:
                matrix = tables.cte.get((c.perturbation, c.n_pert, kind))
                if matrix is not None:
                    by_setting[c.perturbation] = nan_statistic(matrix, c.statistic)
                    kendall[c.perturbation] = _correlate(np.asarray(by_setting[c.perturbation]), perf)[0]
            separation_sweep(choose_strength(by_setting), tables.models, axes=row, title=f"{domain}: {kind}",
                             kendall_by_setting=kendall)
        save_figure(figure, out / f"separation_{domain}.png")
        plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())

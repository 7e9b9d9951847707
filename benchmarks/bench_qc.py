"""Validate label-free quality control with labels: do low scores mark the wrong images and objects?

Protocol (shared data only; labels are read only to judge):

* the bank: the DSB2018 U-Net bank of ``benchmarks/dsb_bank.py`` plus the StarDist and Cellpose models of
  ``benchmarks/qc_adapters.py`` (all trained on training splits; the targets are held-out test splits);
* each DSB2018 sub-domain's test split in turn is the target (a seeded subset of ``--max-images`` images,
  centre-cropped to ``--max-side`` px, as ``bench_dsb_ranking.py`` does);
* for each chosen model (by default one per adapter, all three trained on the ``fluo_256`` training split:
  the kit U-Net ``fluo_256``, ``stardist_fluo_256``, ``cellpose_fluo_256``; ``--all-models`` adds every U-Net)
  :func:`cte_kit.runs.quality.quality` scores every image and object without labels (the rest of the bank
  is what it is compared with), on one result store per target;
* **per object**: AUROC (scikit-learn's ``roc_auc_score``) of the object score for telling objects that
  match a true object at IoU >= 0.5 from those that do not, against the simple alternatives: the object's
  mean foreground probability, its size (area) and, for StarDist, its object probability (the maximum of
  StarDist's probability map over the object: the probability of the polygon kept there, up to the grid);
  and the score's two parts alone (stability, agreement);
* **per image**: Spearman correlation of the image score with the image's true F1 (Dice) and AP (mean over
  IoU 0.5 ... 0.95), against the mean foreground probability over the predicted foreground, and the
  score's parts (consistency, agreement).

    python benchmarks/bench_qc.py [--bank results/dsb_bank] [--adapters results/qc_adapters] [--out results/qc]
        [--targets fluo_256 fluo_360 fluo_520x696 histo brightfield] [--max-images 30] [--max-side 256] [--all-models]

Writes ``OUT/table.md`` and ``OUT/summary.json``; the result stores ``OUT/<target>_n<N>_c<S>.sqlite`` make a
rerun compute only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dsb_ranking import load_target  # noqa: E402
from dsb_bank import DOMAINS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLUORESCENCE = ("fluo_256", "fluo_360", "fluo_520x696", "fluo_other")
CHOSEN = ("fluo_256", "stardist_fluo_256", "cellpose_fluo_256")
ADAPTER = {"unet": "kit U-Net", "stardist": "StarDist", "cellpose": "Cellpose"}
GOALS = {"auroc": 0.8, "spearman": 0.5}


def object_means(labels: np.ndarray, values: np.ndarray, ids: np.ndarray, statistic: str = "mean") -> np.ndarray:
    """Mean (or max) of ``values`` over each object of ``labels``, in the order of ``ids`` (every object id)."""
    flat, values = labels.ravel(), np.asarray(values, dtype=float).ravel()
    inside = flat > 0
    position = np.searchsorted(ids, flat[inside])
    if statistic == "max":
        found = np.full(ids.size, -np.inf)
        np.maximum.at(found, position, values[inside])
        return found
    return np.bincount(position, weights=values[inside], minlength=ids.size) / np.bincount(position, minlength=ids.size)


def _auroc(matched, score) -> float:
    from sklearn.metrics import roc_auc_score

    matched, score = np.asarray(matched, dtype=bool), np.asarray(score, dtype=float)
    keep = np.isfinite(score)
    if matched[keep].all() or not matched[keep].any():
        return float("nan")
    return float(roc_auc_score(matched[keep], score[keep]))


def _spearman(score, truth) -> float:
    score, truth = np.asarray(score, dtype=float), np.asarray(truth, dtype=float)
    keep = np.isfinite(score) & np.isfinite(truth)
    if keep.sum() < 3 or np.ptp(score[keep]) == 0 or np.ptp(truth[keep]) == 0:
        return float("nan")
    return float(stats.spearmanr(score[keep], truth[keep]).statistic)


def evaluate(entry, qc, judgement, store, images, names) -> dict:
    """One chosen model on one target: AUROC and Spearman of the scores and of the simple alternatives."""
    from cte_kit.models.bank import load_model

    model = load_model(entry)
    index = {name: i for i, name in enumerate(names)}
    predictions = model.predict([images[index[o.image]] for o in qc.objects], [o.image for o in qc.objects])
    keys = {image.image: image.image_key for image in qc.images}
    mean_probability, max_probability, image_probability = [], [], []
    for found, prediction in zip(qc.objects, predictions):
        labels = store.clean_prediction(qc.model_key, keys[found.image])[1]
        probability = np.asarray(prediction.probability, dtype=float)
        mean_probability.append(object_means(labels, probability, found.ids))
        max_probability.append(object_means(labels, probability, found.ids, "max"))
        image_probability.append(float(probability[labels > 0].mean()) if (labels > 0).any() else float("nan"))
    objects = judgement.objects
    matched = np.asarray(objects["matched"], dtype=bool)
    alternatives = {"mean probability": np.concatenate([np.zeros(0), *mean_probability]),
                    "size": np.asarray(objects["area"], dtype=float)}
    if entry.kind == "stardist":
        alternatives["StarDist object probability"] = np.concatenate([np.zeros(0), *max_probability])
    per_object = {"score": _auroc(matched, objects["score"]), "stability": _auroc(matched, objects["stability"]),
                  "agreement": _auroc(matched, objects["agreement"]),
                  **{name: _auroc(matched, values) for name, values in alternatives.items()}}
    per_image = {}
    for metric in ("f1", "map"):
        truth = judgement.images[metric]
        per_image[metric] = {"score": _spearman(judgement.images["score"], truth),
                             "consistency": _spearman(judgement.images["consistency"], truth),
                             "agreement": _spearman(judgement.images["agreement"], truth),
                             "mean probability": _spearman(image_probability, truth)}
    return {"model": qc.model, "adapter": ADAPTER.get(entry.kind, entry.kind), "n_images": judgement.n_images,
            "n_objects": judgement.n_objects, "n_matched": judgement.n_matched,
            "median_f1": float(np.median(judgement.images["f1"])) if judgement.n_images else float("nan"),
            "median_map": float(np.median(judgement.images["map"])) if judgement.n_images else float("nan"),
            "failures": sorted({f.error for f in qc.failures}),
            "compared_with": list(qc.compared_with), "model_flags": [f.reason for f in qc.guards.flags] if qc.guards else [],
            "auroc": per_object, "spearman": per_image}


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def write_table(records: list[dict], out: Path, args) -> str:
    lines = ["# Label-free quality control, judged with labels", "",
             f"Targets: DSB2018 test splits ({args.max_images} images at most, seeded subset, centre crop to "
             f"{args.max_side} px). Bank: {args.bank} U-Nets + StarDist + Cellpose ({args.adapters}). Each chosen model "
             "is compared with the rest of the bank (less the models the guards flag). Labels only judge.", "",
             "Per object: AUROC for telling objects that match a true object at IoU >= 0.5 from those that do not "
             "(0.5 chance, 1 perfect). Per image: Spearman of the image score with the true F1 / AP. Goal on the "
             f"fluorescence targets: AUROC >= {GOALS['auroc']}, Spearman >= {GOALS['spearman']}.", "",
             "| target | adapter | model | images | objects (matched) | median F1 / AP | AUROC score | stability | "
             "agreement | mean prob. | size | StarDist prob. | Spearman F1: score | consistency | agreement | mean prob. "
             "| Spearman AP: score | mean prob. |",
             "|" + "---|" * 18]
    for r in records:
        a, f1, ap = r["auroc"], r["spearman"]["f1"], r["spearman"]["map"]
        lines.append(f"| {r['target']} | {r['adapter']} | {r['model']} | {r['n_images']} | {r['n_objects']} "
                     f"({r['n_matched']}) | {fmt(r['median_f1'])} / {fmt(r['median_map'])} | **{fmt(a['score'])}** | "
                     f"{fmt(a['stability'])} | {fmt(a['agreement'])} | {fmt(a['mean probability'])} | {fmt(a['size'])} | "
                     f"{fmt(a.get('StarDist object probability'))} | **{fmt(f1['score'])}** | {fmt(f1['consistency'])} | "
                     f"{fmt(f1['agreement'])} | {fmt(f1['mean probability'])} | **{fmt(ap['score'])}** | "
                     f"{fmt(ap['mean probability'])} |")
    fluorescence = [r for r in records if r["target"] in FLUORESCENCE]
    if fluorescence:
        lines += ["", "Mean over the fluorescence targets (per adapter):", "",
                  "| adapter | AUROC score | best alternative | Spearman F1 | Spearman AP | goal met |", "|---|---|---|---|---|---|"]
        for adapter in dict.fromkeys(r["adapter"] for r in fluorescence):
            rows = [r for r in fluorescence if r["adapter"] == adapter]
            mean = lambda values: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")  # noqa: E731
            auroc = mean([r["auroc"]["score"] for r in rows])
            others = {k: mean([r["auroc"].get(k, np.nan) for r in rows])
                      for k in ("mean probability", "size", "StarDist object probability")}
            best = max((k for k in others if math.isfinite(others[k])), key=lambda k: others[k], default=None)
            s_f1, s_ap = mean([r["spearman"]["f1"]["score"] for r in rows]), mean([r["spearman"]["map"]["score"] for r in rows])
            met = auroc >= GOALS["auroc"] and min(s_f1, s_ap) >= GOALS["spearman"]
            lines.append(f"| {adapter} | {fmt(auroc)} | {best} {fmt(others.get(best))} | {fmt(s_f1)} | {fmt(s_ap)} | "
                         f"{'yes' if met else 'no'} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", default=str(REPO / "results" / "dsb_bank"))
    parser.add_argument("--adapters", default=str(REPO / "results" / "qc_adapters"))
    parser.add_argument("--out", default=str(REPO / "results" / "qc"))
    parser.add_argument("--targets", nargs="+", default=["fluo_256", "fluo_360", "fluo_520x696", "histo", "brightfield"],
                        choices=sorted(DOMAINS))
    parser.add_argument("--max-images", type=int, default=30)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--chosen", nargs="+", default=list(CHOSEN))
    parser.add_argument("--all-models", action="store_true", help="also every other U-Net of the bank as the chosen model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from cte_kit.evaluation.quality import judge_quality
    from cte_kit.models.bank import read_bank
    from cte_kit.runs.quality import quality
    from cte_kit.runs.runner import RunTarget
    from cte_kit.runs.store import ResultStore

    bank_dir, out = Path(args.bank), Path(args.out)
    if not (bank_dir / "bank.yaml").exists():
        print(f"no bank in {bank_dir}: run benchmarks/dsb_bank.py first", file=sys.stderr)
        return 2
    bank = list(read_bank(bank_dir / "bank.yaml"))
    adapters = Path(args.adapters) / "adapters.yaml"
    if adapters.exists():
        bank += list(read_bank(adapters))
    names = [entry.name for entry in bank]
    chosen = [n for n in args.chosen if n in names]
    if args.all_models:
        chosen += [e.name for e in bank if e.kind == "unet" and e.name not in chosen]
    missing = [n for n in args.chosen if n not in names]
    if missing:
        print(f"not in the bank (skipped): {missing}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for domain in args.targets:
        images, labels, image_names = load_target(bank_dir, domain, args.max_images, args.max_side)
        target = RunTarget(domain, tuple(images), tuple(image_names))
        with ResultStore(out / f"{domain}_n{args.max_images}_c{args.max_side}.sqlite") as store:
            for model in chosen:
                started = time.perf_counter()
                qc = quality(bank, target, model, store, progress=False)
                judgement = judge_quality(qc, store, dict(zip(image_names, labels)))
                entry = next(e for e in bank if e.name == model)
                record = {"target": domain, **evaluate(entry, qc, judgement, store, images, image_names),
                          "seconds": round(time.perf_counter() - started, 1)}
                records.append(record)
                print(f"{domain} {model}: AUROC {fmt(record['auroc']['score'])} (mean prob. "
                      f"{fmt(record['auroc']['mean probability'])}, size {fmt(record['auroc']['size'])}), Spearman F1 "
                      f"{fmt(record['spearman']['f1']['score'])}, AP {fmt(record['spearman']['map']['score'])} "
                      f"({record['seconds']} s)", flush=True)
        (out / "summary.json").write_text(json.dumps(records, indent=2, default=float))
        write_table(records, out, args)
    print(write_table(records, out, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

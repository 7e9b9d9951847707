"""Train the real-data bank: kit U-Nets from the DSB2018 sub-domains, with the real ``cte-kit train``.

Each DSB2018 sub-domain of the shared data folder is split deterministically into train (75 %)
and held-out test (25 %) by a seeded permutation of its sorted file stems; the splits are
written as folders of symlinks under ``OUT/splits/<domain>/{train,test}/{images,labels}`` (the
data itself is never copied; ``benchmarks/bank_training.py``, shared with ``cells_bank.py``). One or more U-Nets are trained per source with
``cte_kit.cli.main(["train", ...])`` (``--task instance``: foreground + boundary); some sources
get a short training, a narrower, wider or deeper network, so that the good models differ by a
little. A bank YAML ``OUT/bank.yaml`` lists every model (``cte-kit rank --bank``), and
``OUT/bank_info.json`` records each model's source, steps, width, levels and training time.

The script is rerunnable: a model whose checkpoint exists is not trained again (its recorded
training time is kept in ``OUT/training_times.json``).

    python benchmarks/dsb_bank.py [--data PATH] [--out results/dsb_bank] [--scale 1.0] [--only NAME ...]
                                  [--device cuda] [--jobs 14] [--seed 0]

The full bank (14 models, 3000 steps of 16 patches of 128 x 128 for most) trains in a few
minutes on one GPU with ``--device cuda --jobs 14`` (one process per model); on a CPU, ``--scale``
multiplies every model's steps (0.05 for a smoke run). The ranking protocol that uses this bank
is ``benchmarks/bench_dsb_ranking.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bank_training import (REPO, ModelSpec, add_arguments, split_folder, train_bank,  # noqa: E402
                           write_bank_yaml, write_splits)

__all__ = ["BANK", "DOMAINS", "INSTANCES", "bank_entries", "split_folder"]

DEFAULT_OUT = REPO / "results" / "dsb_bank"

#: Sub-domain short name -> folder in the shared data.
DOMAINS = {
    "fluo_256": "dsb2018_fluo_256",
    "fluo_360": "dsb2018_fluo_360",
    "fluo_520x696": "dsb2018_fluo_520x696",
    "fluo_other": "dsb2018_fluo_other",
    "histo": "dsb2018_histo",
    "brightfield": "dsb2018_brightfield",
}
PATCH = 128
BATCH = 16
#: Instance method written into the bank for ranking: the boundary watershed that ``cte-kit train
#: --task instance`` saves as the default. Before its fix it over-segmented (every thin rim outside a
#: blurred boundary ring became a seed: ~7x too many objects, mAP ~0.07 where connected components gave
#: ~0.43 on fluo_256) and this bank used connected components; ``benchmarks/bench_instances.py``
#: compares the three.
INSTANCES = "watershed"
OPTIONS = ("--patch-size", str(PATCH), "--batch-size", str(BATCH))


def _spec(name: str, source: str, steps: int, **architecture) -> ModelSpec:
    return ModelSpec(name, source, steps, options=OPTIONS, **architecture)


FULL, SHORT = 3000, 300
#: The bank: every source once fully trained; most also short-trained (a tenth of the steps) or
#: with another width or depth, so that models of one source differ by a little.
BANK = (
    _spec("fluo_256", "fluo_256", FULL),
    _spec("fluo_256_short", "fluo_256", SHORT),
    _spec("fluo_256_w8", "fluo_256", FULL, width=8),
    _spec("fluo_360", "fluo_360", FULL),
    _spec("fluo_360_short", "fluo_360", SHORT),
    _spec("fluo_360_l4", "fluo_360", FULL, levels=4),
    _spec("fluo_520x696", "fluo_520x696", FULL),
    _spec("fluo_520x696_short", "fluo_520x696", SHORT),
    _spec("fluo_520x696_w32", "fluo_520x696", FULL, width=32),
    _spec("fluo_other", "fluo_other", FULL),
    _spec("fluo_other_short", "fluo_other", SHORT),
    _spec("histo", "histo", FULL),
    _spec("histo_short", "histo", SHORT),
    _spec("brightfield", "brightfield", FULL),
)


def bank_entries(out: Path) -> list[dict]:
    """Entries of the models trained so far (only keys the U-Net adapter reads)."""
    entries = []
    for spec in BANK:
        if not (Path(out) / spec.checkpoint).exists():
            continue
        entry = {"name": spec.name, "kind": "unet", "path": spec.checkpoint, "instances": INSTANCES}
        if spec.source != "histo":
            entry["rgb"] = "grey"  # grey models read colour targets as luminance
        entries.append(entry)
    return entries


def bank_info(out: Path, times: dict | None = None) -> dict[str, dict]:
    """Per model: source sub-domain, steps, width, levels, training seconds (``bank_info.json``)."""
    info = {}
    for spec in BANK:
        if (Path(out) / spec.checkpoint).exists():
            info[spec.name] = {"source": spec.source, "steps": spec.steps, "width": spec.width,
                               "levels": spec.levels, "patch": PATCH, "batch": BATCH,
                               "training_seconds": round((times or {}).get(spec.name, float("nan")), 1)}
    return info


def write_bank_files(out: Path, times: dict) -> None:
    write_bank_yaml(out, bank_entries(out))
    (out / "bank_info.json").write_text(json.dumps(bank_info(out, times), indent=2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)

    data, out = Path(args.data), Path(args.out)
    if not (data / DOMAINS["fluo_256"]).is_dir():
        print(f"no DSB2018 data in {data}", file=sys.stderr)
        return 2
    counts = write_splits(data, out, DOMAINS)
    print("splits (train/test):", ", ".join(f"{k} {v['train']}/{v['test']}" for k, v in counts.items()))
    code = train_bank(BANK, args, write_bank_files)
    (out / "splits.json").write_text(json.dumps(counts, indent=2))
    print(f"bank: {out / 'bank.yaml'} ({len(bank_entries(out))} models)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

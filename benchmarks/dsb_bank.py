"""Train the real-data bank: kit U-Nets from the DSB2018 sub-domains, with the real ``cte-kit train``.

Each DSB2018 sub-domain of the shared data folder is split deterministically into train (75 %)
and held-out test (25 %) by a seeded permutation of its sorted file stems; the splits are
written as folders of symlinks under ``OUT/splits/<domain>/{train,test}/{images,labels}`` (the
data itself is never copied). One or more U-Nets are trained per source with
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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banks import REPO, BankDesign, ModelSpec, main as train_bank, split_folder, split_stems  # noqa: E402,F401

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
#: Instance method written into the bank for ranking: the boundary watershed that ``cte-kit train
#: --task instance`` saves as the default. Before its fix it over-segmented (every thin rim outside a
#: blurred boundary ring became a seed: ~7x too many objects, mAP ~0.07 where connected components gave
#: ~0.43 on fluo_256) and this bank used connected components; ``benchmarks/bench_instances.py``
#: compares the three.
INSTANCES = "watershed"

FULL, SHORT = 3000, 300
#: The bank: every source once fully trained; most also short-trained (a tenth of the steps) or
#: with another width or depth, so that models of one source differ by a little.
BANK = (
    ModelSpec("fluo_256", "fluo_256", FULL),
    ModelSpec("fluo_256_short", "fluo_256", SHORT),
    ModelSpec("fluo_256_w8", "fluo_256", FULL, width=8),
    ModelSpec("fluo_360", "fluo_360", FULL),
    ModelSpec("fluo_360_short", "fluo_360", SHORT),
    ModelSpec("fluo_360_l4", "fluo_360", FULL, levels=4),
    ModelSpec("fluo_520x696", "fluo_520x696", FULL),
    ModelSpec("fluo_520x696_short", "fluo_520x696", SHORT),
    ModelSpec("fluo_520x696_w32", "fluo_520x696", FULL, width=32),
    ModelSpec("fluo_other", "fluo_other", FULL),
    ModelSpec("fluo_other_short", "fluo_other", SHORT),
    ModelSpec("histo", "histo", FULL),
    ModelSpec("histo_short", "histo", SHORT),
    ModelSpec("brightfield", "brightfield", FULL),
)

DESIGN = BankDesign("dsb_bank", "nuclei", DOMAINS, BANK, patch=128, batch=16, instances=INSTANCES,
                    colour=frozenset({"histo"}))


def main(argv=None) -> int:
    return train_bank(DESIGN, DEFAULT_OUT, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())

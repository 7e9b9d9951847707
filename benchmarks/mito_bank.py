"""Train the mitochondria bank: kit U-Nets from two EM domains, wrong-task models and under-trained ones.

The design users meet when they rank models for mitochondria in electron microscopy: semantic
U-Nets (``cte-kit train --task semantic``) from two EM modalities, ``vnc_mito`` (fly ssTEM) and
``epfl_mito`` (mouse FIB-SEM), each fully trained and short-trained (a tenth of the steps); a
membrane model of ``isbi2012_membrane`` (the same ssTEM modality, the wrong structure);
and nuclei models borrowed from the DSB2018 bank (``dsb_bank.py``, trained first, beside this
bank's folder): the wrong task and the wrong modality. Splits, checkpoints and the bank YAML
(``task: mitochondria``) as ``benchmarks/banks.py`` describes; the ranking protocol is
``benchmarks/bench_tasks.py mitochondria``.

    python benchmarks/mito_bank.py [--data PATH] [--out results/mito_bank] [--scale 1.0] [--only NAME ...]
                                   [--device cuda] [--jobs 8] [--seed 0]

On a CPU, ``--scale 0.07`` trains the bank's five own models (the three nuclei models come trained) in
about 12 CPU minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from banks import REPO, BankDesign, ModelSpec, main as train_bank  # noqa: E402

DEFAULT_OUT = REPO / "results" / "mito_bank"

#: The mitochondria domains (each in turn the target) and the membrane source.
DOMAINS = {"vnc": "vnc_mito", "epfl": "epfl_mito", "membrane": "isbi2012_membrane"}
#: The domains that are targets of the protocol: the membrane data has no mitochondria labels.
TARGETS = ("vnc", "epfl")

FULL, SHORT = 3000, 300
BANK = (
    ModelSpec("vnc", "vnc", FULL, task="semantic"),
    ModelSpec("vnc_short", "vnc", SHORT, task="semantic"),
    ModelSpec("epfl", "epfl", FULL, task="semantic"),
    ModelSpec("epfl_short", "epfl", SHORT, task="semantic"),
    ModelSpec("membrane", "membrane", FULL, task="semantic"),
    ModelSpec("nuclei_fluo_256", "dsb", borrow=("dsb_bank", "fluo_256")),
    ModelSpec("nuclei_fluo_520x696", "dsb", borrow=("dsb_bank", "fluo_520x696")),
    ModelSpec("nuclei_brightfield", "dsb", borrow=("dsb_bank", "brightfield")),
)

DESIGN = BankDesign("mito_bank", "mitochondria", DOMAINS, BANK, patch=128, batch=16)


def main(argv=None) -> int:
    return train_bank(DESIGN, DEFAULT_OUT, argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())

"""The embedded demo: a bank of small U-Nets trained on synthetic source domains, ranked on a
synthetic target and on a real DSB2018 image without looking at their labels.

The bank's weights ship with the package (``cte_kit/assets/demo_bank``, about 100 kB each);
:func:`build_demo_bank` reproduces them (``cte-kit demo --rebuild``, a few minutes on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.synthetic import DEMO_SOURCES, DEMO_TARGET, generate
from ..models.bank import BankEntry, write_bank
from ..models.training import TrainingConfig, train_unet
from ..models.unet import UNetConfig, demo_bank_dir, demo_checkpoint
from ..perturb import FeatureDropout, InputPerturbation, Perturbation

__all__ = [
    "DEMO_PERTURBATIONS",
    "DEMO_TASK",
    "DemoTarget",
    "build_demo_bank",
    "demo_bank_dir",
    "demo_bank_entries",
    "demo_checkpoint",
    "demo_targets",
]

#: The demo bank's architecture and training schedule (what ``--rebuild`` uses).
DEMO_ARCHITECTURE = UNetConfig(levels=3, width=8)
DEMO_TRAINING = TrainingConfig(steps=400, batch_size=8, patch_size=96)
DEMO_TRAIN_IMAGES = 24

#: The demo bank segments nuclei: it is ranked with that task's defaults (its ``bank.yaml`` declares it).
DEMO_TASK = "nuclei"

#: The paper's two families: bottleneck dropout (its nuclei default) and one input perturbation.
#: (``cte-kit demo`` ranks with the kit's defaults, :func:`cte_kit.estimators.cte.default_settings`.)
DEMO_PERTURBATIONS: tuple[Perturbation, ...] = (FeatureDropout(0.2), InputPerturbation("contrast", 0.7))


def demo_bank_entries(folder: str | Path | None = None) -> list[BankEntry]:
    """Bank entries for every model of the demo bank, in source-domain order."""
    folder = Path(folder) if folder is not None else demo_bank_dir()
    entries = [BankEntry(d.name, "unet", str(folder / f"{d.name}.pt")) for d in DEMO_SOURCES
               if (folder / f"{d.name}.pt").is_file()]
    if not entries:
        raise FileNotFoundError(f"no demo bank in {folder}; build it with `cte-kit demo --rebuild`")
    return entries


def build_demo_bank(out: str | Path, sources=DEMO_SOURCES, training: TrainingConfig = DEMO_TRAINING,
                    n_images: int = DEMO_TRAIN_IMAGES, progress: bool = True) -> list[BankEntry]:
    """Train one U-Net per synthetic source domain and write them with a ``bank.yaml``.

    Each source uses its own image seed (100 + its index), never the target's, and the
    training seed is the index: the bank is reproducible bit for bit on one machine.
    """
    out = Path(out)
    entries = []
    for index, domain in enumerate(sources):
        data = generate(domain, n_images, shape=(128, 128), seed=100 + index)
        path = out / f"{domain.name}.pt"
        train_unet(data.images, data.labels, DEMO_ARCHITECTURE,
                   TrainingConfig(**{**training.__dict__, "seed": index}), out=path, name=domain.name,
                   source=f"synthetic domain {domain}", progress=progress)
        entries.append(BankEntry(domain.name, "unet", path.name))
    write_bank(entries, out / "bank.yaml", task=DEMO_TASK)
    return entries


@dataclass(frozen=True)
class DemoTarget:
    """An unlabelled target (labels kept aside only to judge the ranking)."""

    name: str
    images: list
    labels: list
    names: list
    description: str


def _dsb2018_tiles(size: int = 256) -> DemoTarget | None:
    """The real DSB2018 image shipped in the stardist wheel, cut into tiles (None if absent)."""
    try:
        from stardist.data import test_image_nuclei_2d
    except ImportError:
        return None
    image, labels = test_image_nuclei_2d(return_mask=True)
    tiles, masks, names = [], [], []
    for y in range(0, image.shape[0] - size + 1, size):
        for x in range(0, image.shape[1] - size + 1, size):
            tiles.append(image[y : y + size, x : x + size])
            masks.append(labels[y : y + size, x : x + size])
            names.append(f"dsb2018_y{y}_x{x}")
    return DemoTarget("dsb2018_real", tiles, masks, names,
                      "real DSB2018 fluorescence image from the stardist package, 4 tiles of 256x256")


def demo_targets(n_images: int = 16, seed: int = 7, include_real: bool = True) -> Sequence[DemoTarget]:
    """The demo's targets: the synthetic target domain, and the real DSB2018 tiles if available."""
    data = generate(DEMO_TARGET, n_images, shape=(128, 128), seed=seed)
    targets = [DemoTarget("synthetic_target", data.images, data.labels, data.names,
                          f"{n_images} synthetic images of the target domain (seed {seed})")]
    real = _dsb2018_tiles() if include_real else None
    if real is not None:
        targets.append(real)
    return targets


def format_table(summary: dict) -> str:
    """A plain-text ranking table for one summary entry of :func:`cte_kit.evaluation.summary.summarize_results`.

    Rows follow the kit's ranking (flagged models after the others); flagged models are marked
    ``!`` and listed with their reasons below the table, and the bootstrap probability is
    printed as what it is - sampling stability, not validity.
    """
    metric = summary["performance_metric"]
    header = (f"{'model':<22} {'CTE':>7} {'95% CI':>15} {'F1':>6} {'mAP':>6} {'rank':>5} {'rank CTE':>8} "
              f"{'rank ' + metric:>9}")
    lines = [header, "-" * len(header)]
    for model in sorted(summary["models"], key=lambda m: (m.get("rank", m["rank_cte"]), m["rank_cte"])):
        interval = f"[{model.get('cte_low', np.nan):.3f}, {model.get('cte_high', np.nan):.3f}]"
        name = ("! " if model.get("flags") else "") + model["name"]
        lines.append(f"{name:<22} {model['cte']:7.4f} {interval:>15} {model.get('f1', np.nan):6.3f} "
                     f"{model.get('map', np.nan):6.3f} {model.get('rank', model['rank_cte']):5.1f} "
                     f"{model['rank_cte']:8.1f} {model.get('rank_performance', np.nan):9.1f}")
    flagged = [m for m in summary["models"] if m.get("flags")]
    if flagged:
        lines.append("! flagged by the label-free guards, ranked after the others:")
        lines.extend(f"    {m['name']}: {'; '.join(flag['reason'] for flag in m['flags'])}" for m in flagged)
    if "kendall" in summary:
        lines.append(f"Kendall tau = {summary['kendall']:.2f} (p = {summary['kendall_p']:.3f}), "
                     f"Spearman rho = {summary['spearman']:.2f} [the kit's ranking vs true {metric}]; "
                     f"Pearson r = {summary['pearson']:.2f} [CTE values vs true {metric}]")
    if summary.get("verdict"):
        lines.append(f"No recommendation: {summary['verdict']}.")
    elif summary.get("recommended") is not None:
        line = f"Recommended: {summary['recommended']}."
        if np.isfinite(summary.get("p_best_is_top", np.nan)):
            line += (f" Sampling stability: it stays first among the unflagged models in "
                     f"{summary['p_best_is_top']:.0%} of bootstrap resamples of the images (how much the "
                     "scores move with the images, not whether they can be trusted: that is what the flags say).")
        if np.isfinite(summary.get("regret", np.nan)):
            line += f" Regret: the best model's true {metric} is {summary['regret']:.3f} above the recommended one's."
        lines.append(line)
    if summary.get("bank_note"):
        lines.append(f"Note: {summary['bank_note']}.")
    return "\n".join(lines)

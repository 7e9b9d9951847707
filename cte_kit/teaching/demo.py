"""The embedded demo: a bank of small U-Nets trained on synthetic source domains, ranked on a
synthetic target and on a real DSB2018 image without looking at their labels.

The bank's weights ship with the package (``cte_kit/assets/demo_bank``, about 100 kB each);
:func:`build_demo_bank` reproduces them (``cte-kit demo --rebuild``, a few minutes on 2 cores).

Small StarDist and Cellpose models, trained by :func:`build_instance_models` on two of the same
source domains, ship beside them (``cte_kit/assets/instance_models``, a few hundred kB): notebook 5
ranks them with U-Nets without training for minutes in the notebook. :func:`demo_instance_models`
loads them (StarDist needs TensorFlow, Cellpose 3 for the grey-box CPnet).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.synthetic import DEMO_SOURCES, DEMO_TARGET, generate
from ..models.bank import BankEntry, write_bank
from ..models.training import TrainingConfig, train_unet
from ..models.unet import UNetConfig, demo_bank_dir, demo_checkpoint
from ..perturb import FeatureDropout, InputPerturbation, Perturbation
from ..reports.plots import METRIC_NAMES

__all__ = [
    "DEMO_INSTANCE_SOURCES",
    "DEMO_PERTURBATIONS",
    "DEMO_TASK",
    "DemoTarget",
    "build_demo_bank",
    "build_instance_models",
    "demo_bank_dir",
    "demo_bank_entries",
    "demo_checkpoint",
    "demo_instance_models",
    "demo_targets",
    "READING_GUIDE",
    "format_table",
    "recommendation_note",
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


#: The source domains of the shipped StarDist and Cellpose models (a subset of DEMO_SOURCES).
DEMO_INSTANCE_SOURCES = ("near_target", "large_nuclei")
#: Cellpose's CPnet with an eighth of the channels of Cellpose's own (``[2, 32, 64, 128, 256]``):
#: a file of about 1 MB instead of 26 MB, enough for synthetic nuclei.
DEMO_CELLPOSE_NBASE = (2, 8, 16, 32, 64)
DEMO_CELLPOSE_DIAMETER = 17.0
_INSTANCE_TRAIN_IMAGES = 16


def instance_models_dir() -> Path:
    """Folder of the shipped StarDist and Cellpose models."""
    return Path(__file__).resolve().parents[1] / "assets" / "instance_models"


def build_instance_models(out: str | Path, sources: Sequence[str] = DEMO_INSTANCE_SOURCES,
                          frameworks: Sequence[str] = ("stardist", "cellpose"), stardist_epochs: int = 40,
                          cellpose_epochs: int = 100, progress: bool = True) -> Path:
    """Train one small StarDist and one small Cellpose model per source domain into ``out``.

    The frameworks' own training functions on the synthetic source domain's images (seeds from the
    domain's index in DEMO_SOURCES, as for the U-Nets): ``out/stardist_<domain>/`` (a StarDist model
    folder with its optimised thresholds) and ``out/cellpose_<domain>.pt`` (a CPnet of
    :data:`DEMO_CELLPOSE_NBASE` channels, as written by ``cellpose.train.train_seg``). Train the two
    frameworks in separate processes (``frameworks=("stardist",)`` and ``("cellpose",)``): TensorFlow's
    idle threads slow PyTorch's training down several times when both live in one process.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(frameworks) - {"stardist", "cellpose"}
    if unknown:
        raise ValueError(f"unknown frameworks {sorted(unknown)}; choose from stardist, cellpose")
    domains = {domain.name: (index, domain) for index, domain in enumerate(DEMO_SOURCES)}
    for name in tqdm(sources, desc="StarDist and Cellpose models", disable=not progress):
        index, domain = domains[name]
        data = generate(domain, _INSTANCE_TRAIN_IMAGES, shape=(128, 128), seed=100 + index)
        labels = [label.astype(np.int32) for label in data.labels]
        if "stardist" in frameworks:
            _train_stardist(out, f"stardist_{name}", data.images, labels, stardist_epochs, seed=index)
        if "cellpose" in frameworks:
            _train_cellpose(out / f"cellpose_{name}.pt", data.images, labels, cellpose_epochs, seed=index)
    return out


def _train_stardist(out: Path, name: str, images, labels, epochs: int, seed: int) -> None:
    import contextlib
    import io
    import warnings

    from ..data.images import normalize_percentile
    from ..models.stardist import _import_stardist

    StarDist2D = _import_stardist()
    from csbdeep.utils.tf import keras_import
    from stardist.models import Config2D

    keras_import("utils", "set_random_seed")(seed)
    images = [normalize_percentile(image, 1.0, 99.8) for image in images]
    config = Config2D(n_rays=16, grid=(2, 2), n_channel_in=1, unet_n_depth=2, unet_n_filter_base=16,
                      train_patch_size=(96, 96), train_batch_size=4, train_epochs=epochs,
                      train_steps_per_epoch=25, train_learning_rate=1e-3, train_tensorboard=False)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # Keras prints a line per epoch
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # StarDist's generator shuffles itself
        network = StarDist2D(config, name=name, basedir=str(out))
        network.train(images[:-3], labels[:-3], validation_data=(images[-3:], labels[-3:]), seed=seed)
        network.optimize_thresholds(images[-3:], labels[-3:])  # writes thresholds.json beside the weights
    _keep_only(out / name, ("config.json", "thresholds.json", "weights_best.h5", "weights_best.weights.h5"))


def _train_cellpose(path: Path, images, labels, epochs: int, seed: int) -> None:
    import contextlib
    import io
    import tempfile

    import torch
    from cellpose import train as cellpose_train

    torch.manual_seed(seed)
    net = _demo_cpnet()(list(DEMO_CELLPOSE_NBASE), 3, sz=3, mkldnn=False, max_pool=True,
                        diam_mean=DEMO_CELLPOSE_DIAMETER)
    with tempfile.TemporaryDirectory(prefix="cte_kit_") as folder, contextlib.redirect_stderr(io.StringIO()):
        trained, _, _ = cellpose_train.train_seg(
            net, train_data=[image.astype(np.float32) for image in images], train_labels=labels, channels=[0, 0],
            n_epochs=epochs, batch_size=8, bsize=96, learning_rate=0.005, min_train_masks=1, save_path=str(folder),
            model_name=path.stem)
        _save_half(torch.load(trained, map_location="cpu", weights_only=True), path)


def _save_half(state: dict, path: Path) -> None:
    """Save a state dict with its float tensors in half precision: half the file, and loading into the
    float32 network restores float32 weights (rounded to 3 significant digits, far below what matters here)."""
    import torch

    torch.save({key: value.half() if value.is_floating_point() else value for key, value in state.items()}, path)


def _keep_only(folder: Path, names: Sequence[str]) -> None:
    """Remove from a StarDist model folder what loading it does not need (logs, last and current weights)."""
    import shutil

    for path in folder.iterdir():
        if path.name in names:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def demo_instance_models(folder: str | Path | None = None) -> list:
    """The shipped StarDist and Cellpose models, loaded (StarDist first, then Cellpose, in source order).

    Raises
    ------
    ImportError
        StarDist (with TensorFlow) or Cellpose is not installed; the message says what to install.
    """
    from ..models.bank import BankEntry, load_model

    folder = Path(folder) if folder is not None else instance_models_dir()
    stardist = [load_model(BankEntry(f"stardist_{name}", "stardist", str(folder / f"stardist_{name}")))
                for name in DEMO_INSTANCE_SOURCES if (folder / f"stardist_{name}").is_dir()]
    cellpose = [_small_cellpose(folder / f"cellpose_{name}.pt", f"cellpose_{name}")
                for name in DEMO_INSTANCE_SOURCES if (folder / f"cellpose_{name}.pt").is_file()]
    if not stardist and not cellpose:
        raise FileNotFoundError(f"no StarDist or Cellpose model in {folder}; build them with build_instance_models")
    return stardist + cellpose


@functools.lru_cache(maxsize=None)
def _demo_cpnet():
    """Cellpose's CPnet class with a style vector zero-padded to Cellpose's 256 values.

    Cellpose's ``run_net`` stores each tile's style (the deepest level's channels, returned beside the
    output and used by nothing else) in arrays of 256, Cellpose's own width; a narrower CPnet would
    not fit them. The padding changes neither the flows nor the masks.
    """
    import torch
    from cellpose.resnet_torch import CPnet

    class DemoCPnet(CPnet):
        def forward(self, data):
            output, style, features = super().forward(data)
            return output, torch.nn.functional.pad(style, (0, 256 - style.shape[-1])), features

    return DemoCPnet


def _small_cellpose(path: Path, name: str):
    """A Cellpose 3 model around a CPnet of :data:`DEMO_CELLPOSE_NBASE` channels (Cellpose builds only its own size)."""
    from ..models.cellpose import CellposeModel, cellpose_major_version

    if cellpose_major_version() >= 4:
        raise ImportError("the demo's Cellpose models are Cellpose 3 CPnets: pip install 'cellpose>=3.1.1,<4'")
    import torch
    from cellpose import models as cellpose_models

    network = cellpose_models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=DEMO_CELLPOSE_DIAMETER)
    network.net = _demo_cpnet()(list(DEMO_CELLPOSE_NBASE), 3, sz=3, mkldnn=network.mkldnn, max_pool=True,
                                diam_mean=DEMO_CELLPOSE_DIAMETER)
    network.net.load_model(str(path), device=torch.device("cpu"))
    network.net.eval()
    network.diam_labels = float(network.net.diam_labels.data.cpu().numpy()[0])
    return CellposeModel(name=name, cellpose=network, diameter=DEMO_CELLPOSE_DIAMETER)


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


#: Text tables fit a terminal and a notebook's output area.
WIDTH = 100


def format_table(summary: dict) -> str:
    """A plain-text ranking table for one summary entry of :func:`cte_kit.evaluation.summary.summarize_results`.

    Rows follow the kit's ranking (flagged models after the others); flagged models are marked
    ``!`` and listed with their reasons below the table, and the bootstrap probability is
    printed as what it is - sampling stability, not validity. Lines fit :data:`WIDTH` columns;
    :data:`READING_GUIDE` says what each column means.
    """
    metric = summary["performance_metric"]
    header = (f"{'model':<22} {'CTE':>7} {'95% CI':>15} {'F1':>6} {'mAP':>6} {'rank':>5} {'rank CTE':>8} "
              f"{'rank ' + METRIC_NAMES.get(metric, metric):>9}")
    lines = [header, "-" * len(header)]
    for model in sorted(summary["models"], key=lambda m: (m.get("rank", m["rank_cte"]), m["rank_cte"])):
        interval = f"[{model['cte_low']:.3f}, {model['cte_high']:.3f}]" if "cte_low" in model else "n/a"
        name = ("! " if model.get("flags") else "") + model["name"]
        lines.append(f"{name[:22]:<22} {model['cte']:7.4f} {interval:>15} {model.get('f1', np.nan):6.3f} "
                     f"{model.get('map', np.nan):6.3f} {model.get('rank', model['rank_cte']):5.1f} "
                     f"{model['rank_cte']:8.1f} {model.get('rank_performance', np.nan):9.1f}")
    flagged = [m for m in summary["models"] if m.get("flags")]
    if flagged:
        lines.append("! flagged by the label-free guards, ranked after the others:")
        for m in flagged:
            lines += _wrap(f"{m['name']}: {'; '.join(flag['reason'] for flag in m['flags'])}", indent="    ")
    if "kendall" in summary:
        name = METRIC_NAMES.get(metric, metric)
        lines.append(f"Kendall tau = {summary['kendall']:+.2f} (p = {summary['kendall_p']:.3f}), Spearman rho = "
                     f"{summary['spearman']:+.2f}: the kit's ranking vs the true {name} ranking")
        lines.append(f"Pearson r = {summary['pearson']:+.2f}: CTE values vs true {name} values")
    if summary.get("verdict"):
        lines += _wrap(f"No recommendation: {summary['verdict']}.")
    elif summary.get("recommended") is not None:
        line = f"Recommended: {summary['recommended']}."
        if np.isfinite(summary.get("p_best_is_top", np.nan)):
            line += (f" Sampling stability: it stays first among the unflagged models in "
                     f"{summary['p_best_is_top']:.0%} of bootstrap resamples of the images (how much the "
                     "scores move with the images, not whether they can be trusted: that is what the flags say).")
        elif summary.get("stability"):
            line += f" Sampling stability: not estimated ({summary['stability']})."
        if np.isfinite(summary.get("regret", np.nan)):
            line += (f" Regret: the best model's true {METRIC_NAMES.get(metric, metric)} is {summary['regret']:.3f} "
                     "above the recommended one's.")
        lines += _wrap(line)
        if summary.get("blind_spot"):
            lines += _wrap(f"What this score cannot see: {summary['blind_spot']}.")
    if summary.get("bank_note"):
        lines += _wrap(f"Note: {summary['bank_note']}.")
    return "\n".join(lines)


def _wrap(text: str, indent: str = "") -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


#: What the columns of :func:`format_table` mean, for a reader who is not a statistician.
READING_GUIDE = """\
How to read the tables
  CTE       How much of the model's segmentation stays the same when the image is perturbed (1 = all
            of it), averaged over the target images. Models that transfer well score high - but so
            do models that mark almost nothing or almost everything as foreground: the guards (!)
            check that.
  95% CI    The range the CTE would likely take with another sample of images of the same kind. It
            says how sure the number is, not whether the model is good.
  F1, mAP   True performance, from the labels kept aside (you would not have them for your images).
            F1 (Dice): how well the predicted foreground covers the true one; mAP: how many objects
            match a true object, averaged over stricter and stricter overlaps - it punishes merged
            or split objects. 1 is perfect for both.
  rank      The kit's ranking: by CTE, with models flagged by the guards moved to the end. Follow
            this one.
  rank CTE  The order by CTE alone, flags ignored (what `cte-kit rank --no-guards` would give).
  rank F1 / rank mAP
            The true order. The closer it is to `rank`, the better the kit chose.
  Kendall tau
            Agreement of the kit's ranking with the true ranking: 1 identical, 0 unrelated, -1
            reversed. With no ties, (1 + tau) / 2 of the model pairs are in the right order.
  p         How often a random ranking would agree at least as well; a small p (say below 0.05)
            means the agreement is unlikely to be luck. With few models even a good ranking has a
            large p.
  Regret    The true F1 (or mAP) you give up by following the recommendation: the best model's
            minus the recommended one's. 0 when the kit picked the best model.
Hard consistency compares the foreground masks (is each pixel still foreground?); instance
consistency compares the objects (are they still split the same way?). If you need objects - to
count cells or measure each one - follow the instance ranking; if you need the foreground area,
follow the hard one. When they recommend different models, look at both models' predictions on a
few of your images, and at their intervals: overlapping intervals mean the data cannot tell them
apart."""


def recommendation_note(summaries: Sequence[dict]) -> str | None:
    """A sentence when the hard and the instance ranking recommend different models (None when they agree)."""
    chosen = {s["consistency"]: s.get("recommended") for s in summaries if s["consistency"] in ("hard", "instance")}
    if len(chosen) < 2 or None in chosen.values() or chosen["hard"] == chosen["instance"]:
        return None
    return "\n".join(_wrap(
        f"The hard ranking recommends {chosen['hard']}, the instance ranking {chosen['instance']}: follow the instance "
        "ranking if you need objects (counts, per-object measurements), the hard one if you need the foreground "
        "area, and look at both models' predictions on a few images before deciding."))

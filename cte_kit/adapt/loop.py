"""The SelfAdapt loop: an EMA teacher labels the target, a strongly augmented student learns.

::

    target = adapt_target(UNetModel.from_checkpoint("bank/near.pt"))
    run = adapt(target, images, AdaptConfig(steps=200))
    run.curve            # stopping signals at every evaluation
    run.stops["embedding"].step
    kind, paths = save_checkpoints(target, run, "adapted_checkpoints", {"source_model": "near"})
    save_adapted(target, run, "adapted.pt", {"source_model": "near"}, step=run.stops["embedding"].step)

Only images enter here: the loop reads no label file, and the stopping signals compare the
model with its own initial self. Which checkpoint to keep is the runs floor's choice
(:func:`cte_kit.runs.checkpoints.choose_checkpoint` ranks them all with the kit's estimator).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import AdaptConfig
from .stopping import choose_stop, embedding_distance, fn_rate
from .targets import AdaptTarget
from .views import MovingPercentile, strong_augment, teacher_views, uncertainty

__all__ = ["EvalPoint", "Adaptation", "adapt", "load_step", "weight_distance", "save_adapted", "save_checkpoints"]


@dataclass(frozen=True)
class EvalPoint:
    """The label-free signals at one evaluation (a checkpoint is kept for each).

    Attributes
    ----------
    step : int
        Optimiser steps done (0: the initial model).
    fn_rate : float
        Objects of the initial model lost by the teacher.
    embedding : float
        Relative distance of the teacher's bottleneck embeddings from the initial ones.
    weight_distance : float
        Euclidean distance of the teacher's parameters from the initial ones.
    loss : float
        Mean student loss since the previous evaluation (NaN at step 0).
    kept : float
        Mean fraction of pixels the uncertainty mask kept in the loss.
    """

    step: int
    fn_rate: float
    embedding: float
    weight_distance: float
    loss: float
    kept: float


@dataclass(frozen=True)
class Adaptation:
    """The record of one adaptation run.

    Attributes
    ----------
    config : AdaptConfig
    curve : tuple of EvalPoint
    stops : dict
        ``{criterion: StopPoint}``: the checkpoint each stopping rule of the SelfAdapt paper
        picks (``'fn_rate'`` and ``'embedding'``).
    checkpoints : dict
        ``{step: state_dict}`` of the teacher (CPU tensors) at every evaluation; step 0 holds
        the starting weights.
    seconds_per_step : float
        Mean wall time of one optimiser step (teacher views + student step), evaluations excluded.
    """

    config: AdaptConfig
    curve: tuple[EvalPoint, ...]
    stops: dict
    checkpoints: dict
    seconds_per_step: float

    def record(self) -> dict:
        """JSON-ready settings, stopping curve and stops."""
        return {"settings": asdict(self.config), "curve": [asdict(p) for p in self.curve],
                "stops": {k: asdict(v) for k, v in self.stops.items()}, "seconds_per_step": self.seconds_per_step}


def weight_distance(network: torch.nn.Module, reference: dict) -> float:
    """Euclidean distance between the trainable parameters of ``network`` and ``reference`` (a state dict)."""
    total = 0.0
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            total += float(((parameter.detach().cpu() - reference[name].cpu()) ** 2).sum())
    return math.sqrt(total)


def _l2sp(network: torch.nn.Module, initial: dict) -> torch.Tensor:
    terms = [((p - initial[n]) ** 2).sum() for n, p in network.named_parameters() if p.requires_grad]
    return torch.stack(terms).sum()


def _ema(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        student_state = student.state_dict()
        for name, value in teacher.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(student_state[name], alpha=1 - decay)
            else:
                value.copy_(student_state[name])


def _schedule(step: int, config: AdaptConfig) -> float:
    warm = max(1, int(config.warmup * config.steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, config.steps - warm)))


def _as_tensor(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _pad_to(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect-pad (C, H, W) to at least ``size`` (bottom and right), replicating where reflection cannot."""
    pad = [(0, 0), (0, max(0, size[0] - array.shape[1])), (0, max(0, size[1] - array.shape[2]))]
    mode = "reflect" if all(p[1] < s for p, s in zip(pad[1:], array.shape[1:])) else "edge"
    return np.pad(array, pad, mode=mode) if any(p[1] for p in pad) else array


def _sample_patches(arrays, size: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    patches = []
    for _ in range(count):
        array = _pad_to(arrays[rng.integers(len(arrays))], (size, size))
        y = rng.integers(0, array.shape[1] - size + 1)
        x = rng.integers(0, array.shape[2] - size + 1)
        patch = np.rot90(array[:, y : y + size, x : x + size], int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        patches.append(np.ascontiguousarray(patch, dtype=np.float32))
    return torch.from_numpy(np.stack(patches))


def _embeddings(target: AdaptTarget, network: torch.nn.Module, arrays, device) -> np.ndarray:
    """Spatial mean of the bottleneck features of each image, (N, D)."""
    captured = []
    handle = network.get_submodule(target.bottleneck).register_forward_hook(
        lambda module, inputs, output: captured.append(output.mean(dim=(-2, -1)).cpu()))
    try:
        with torch.inference_mode():
            for array in arrays:
                divisor = target.divisor
                size = tuple(-(-s // divisor) * divisor for s in array.shape[1:])
                target.outputs(network, torch.from_numpy(_pad_to(array, size)[None].copy()).to(device))
    finally:
        handle.remove()
    return torch.cat(captured).numpy()


def _instances(target: AdaptTarget, images) -> list[np.ndarray]:
    return [prediction.labels for prediction in target.model.predict(images)]


def _masked_loss(outputs, pseudo, keep, roles, regression_weight) -> torch.Tensor:
    classes = [i for i, role in enumerate(roles) if role == "class"]
    flows = [i for i, role in enumerate(roles) if role != "class"]
    loss = outputs.new_zeros(())
    if classes:
        bce = F.binary_cross_entropy_with_logits(outputs[:, classes], (pseudo[:, classes] > 0.5).float(), reduction="none")
        loss = loss + (bce * keep[:, classes]).sum() / keep[:, classes].sum().clamp(min=1)
    if flows:
        mse = (outputs[:, flows] - pseudo[:, flows]) ** 2
        loss = loss + regression_weight * (mse * keep[:, flows]).sum() / keep[:, flows].sum().clamp(min=1)
    return loss


def adapt(target: AdaptTarget, images: Sequence[np.ndarray], config: AdaptConfig = AdaptConfig(),
          names: Sequence[str] | None = None, progress: bool = True) -> Adaptation:
    """Adapt a model to unlabelled target images (SelfAdapt).

    The adapter's own network becomes the EMA teacher, so after the run ``target.model``
    predicts with the teacher of the last step; :func:`load_step` moves it to another checkpoint.

    Parameters
    ----------
    target : AdaptTarget
        See :func:`cte_kit.adapt.targets.adapt_target`.
    images : sequence of (H, W) or (H, W, C) arrays
        Raw target images (normalised by the model's adapter).
    config : AdaptConfig
    names : sequence of str, optional
        For error messages.
    progress : bool
        Show a progress bar with the two stopping signals.

    Returns
    -------
    Adaptation
    """
    if len(images) == 0:
        raise ValueError("no target images to adapt to")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    arrays = [_as_tensor(target.model.prepare(image, name)) for image, name in zip(images, names)]
    size = max(target.divisor, config.patch_size // target.divisor * target.divisor)
    teacher = target.network
    device = next(teacher.parameters()).device
    teacher.eval()
    initial = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    student = copy.deepcopy(teacher)
    student.train()
    optimiser = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: _schedule(step, config))
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    thresholds = MovingPercentile(config.percentile, config.threshold_momentum)
    # by name, so the evaluation set does not depend on the order the images came in
    evaluated = sorted(range(len(images)), key=lambda i: names[i])[: config.n_eval]
    eval_images, eval_arrays = [images[i] for i in evaluated], [arrays[i] for i in evaluated]
    initial_labels = _instances(target, eval_images)
    initial_embeddings = _embeddings(target, teacher, eval_arrays, device)
    curve = [EvalPoint(0, 0.0, 0.0, 0.0, float("nan"), float("nan"))]
    checkpoints = {0: {k: v.cpu().clone() for k, v in initial.items()}}
    losses, kept, seconds = [], [], 0.0
    bar = tqdm(range(1, config.steps + 1), desc=f"adapting {target.model.name}", disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # dropout of the student
        for step in bar:
            started = time.perf_counter()
            patches = _sample_patches(arrays, size, config.batch_size, rng)
            with torch.no_grad():
                views = teacher_views(lambda x: target.outputs(teacher, x), patches.to(device), target.roles)
                spread = uncertainty(views, target.roles)
                keep = (spread <= thresholds.update(spread)[None, :, None, None]).float()
            strong = strong_augment(patches, generator, config.noise, config.blur, config.contrast, config.brightness)
            loss = _masked_loss(target.outputs(student, strong.to(device)), views.mean(0), keep, target.roles,
                                config.regression_weight)
            total = loss + 0.5 * config.l2sp * _l2sp(student, initial) if config.l2sp > 0 else loss
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
            schedule.step()
            _ema(teacher, student, config.ema_decay)
            seconds += time.perf_counter() - started
            losses.append(loss.item())
            kept.append(keep.mean().item())
            if step % config.eval_every == 0 or step == config.steps:
                point = EvalPoint(step, fn_rate(initial_labels, _instances(target, eval_images), config.match_iou),
                                  embedding_distance(initial_embeddings, _embeddings(target, teacher, eval_arrays, device)),
                                  weight_distance(teacher, initial), float(np.mean(losses)), float(np.mean(kept)))
                curve.append(point)
                checkpoints[step] = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
                losses, kept = [], []
                bar.set_postfix(fn_rate=f"{point.fn_rate:.3f}", emb=f"{point.embedding:.3f}")
    steps = [p.step for p in curve]
    stops = {"fn_rate": choose_stop(steps, [p.fn_rate for p in curve], config.fn_threshold, "fn_rate"),
             "embedding": choose_stop(steps, [p.embedding for p in curve], config.embedding_threshold, "embedding")}
    return Adaptation(config, tuple(curve), stops, checkpoints, seconds / config.steps)


def load_step(target: AdaptTarget, run: Adaptation, step: int) -> None:
    """Put the teacher of checkpoint ``step`` into the target's network (the adapter predicts with it)."""
    if step not in run.checkpoints:
        raise KeyError(f"no checkpoint at step {step}; checkpoints: {sorted(run.checkpoints)}")
    target.network.load_state_dict(run.checkpoints[step])


def save_checkpoints(target: AdaptTarget, run: Adaptation, folder: str | Path, provenance: dict,
                     suffix: str = ".pt") -> tuple[str, dict[int, Path]]:
    """Write every checkpoint of a run (the starting weights as step 0) as weights a bank entry loads.

    Parameters
    ----------
    target : AdaptTarget
    run : Adaptation
    folder : path
        Receives ``step_<n><suffix>`` (``n`` zero-padded to 5 digits) and its ``.adapt.json``.
    provenance : dict
        What to record besides the run (source model, target folder, ...).
    suffix : str

    Returns
    -------
    (kind, {step: path}) : the bank kind that loads the weights, and each checkpoint's path.
    """
    folder = Path(folder)
    record = {**provenance, **run.record()}
    paths, kind = {}, None
    for step in sorted(run.checkpoints):
        load_step(target, run, step)
        paths[step] = folder / f"step_{step:05d}{suffix}"
        kind = target.writer(target.network, paths[step], {**record, "step": step})
    return kind, paths


def save_adapted(target: AdaptTarget, run: Adaptation, path: str | Path, provenance: dict,
                 step: int) -> tuple[str, Path]:
    """Write checkpoint ``step`` at ``path``, with provenance in ``<path>.adapt.json``.

    Parameters
    ----------
    target : AdaptTarget
    run : Adaptation
    path : path
        Weights file of the adapted model.
    provenance : dict
        What to record besides the run (source model, target folder, why this step, ...).
    step : int
        The checkpoint to write (0: the starting weights).

    Returns
    -------
    (kind, path) : the bank kind that loads the weights, and their path.
    """
    path = Path(path)
    load_step(target, run, step)
    kind = target.writer(target.network, path, {**provenance, **run.record(), "step": step})
    return kind, path

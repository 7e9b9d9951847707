"""Training the kit's U-Nets: one model per source dataset, as in the CTE paper.

BCE + Dice loss, random patches with geometric (flips, 90 degree rotations) and intensity
(noise, brightness, contrast, gamma) augmentations applied to the normalised image, channel
dropout at the bottleneck, Adam, a progress bar, and a self-describing checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from skimage.segmentation import find_boundaries
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data.images import check_image, check_labels, normalize_percentile, to_grey
from ..perturb import InputPerturbation
from .instances import INSTANCE_METHODS, default_instance_method
from .unet import UNetConfig, UNetModel, resize, save_checkpoint, scaled_size

__all__ = ["TrainingConfig", "train_unet", "training_targets"]


@dataclass(frozen=True)
class TrainingConfig:
    """How to train.

    Attributes
    ----------
    steps : int
        Optimiser steps (one batch each).
    batch_size : int
    patch_size : int
        Side of the square training patches (a multiple of 2**(levels-1)).
    learning_rate : float
    augment : bool
        Geometric and intensity augmentations.
    percentiles : (float, float)
        Per-image normalisation, stored with the model so that prediction uses the same.
    seed : int
    scale : float
        In (0, 1]: train on the images shrunk by this factor (labels by nearest neighbour);
        stored with the model, which then shrinks every image it predicts the same way. Below 1
        for objects larger than the network's receptive field (a patch then covers
        ``patch_size / scale`` pixels of the image) and for cheaper training and prediction.
    boundary_weight : float
        Weight of the boundary channel's loss (BCE + Dice) against the foreground's, for
        foreground+boundary models. On dense tissue the foreground is the whole image and the
        boundary map alone separates the cells.
    device : str
        Torch device of the optimisation, e.g. ``'cpu'`` or ``'cuda'``. Patches are sampled on
        the CPU either way; the checkpoint is always written with CPU tensors.
    """

    steps: int = 600
    batch_size: int = 8
    patch_size: int = 96
    learning_rate: float = 2e-3
    augment: bool = True
    percentiles: tuple[float, float] = (1.0, 99.8)
    seed: int = 0
    scale: float = 1.0
    boundary_weight: float = 1.0
    device: str = "cpu"

    def __post_init__(self):
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale!r}")
        if not self.boundary_weight > 0:
            raise ValueError(f"boundary_weight must be > 0, got {self.boundary_weight!r}")


def training_targets(labels: np.ndarray, output: str) -> np.ndarray:
    """Per-pixel targets, shape (C, H, W) float32: foreground, and boundary for instance models."""
    foreground = (labels > 0).astype(np.float32)
    if output == "foreground":
        return foreground[None]
    boundary = find_boundaries(labels, mode="inner").astype(np.float32)
    return np.stack([foreground, boundary])


def _loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """BCE + Dice per output channel, averaged over channels with ``weights`` (summing to 1)."""
    eps = 1.0
    dims = (0, 2, 3)
    probability = torch.sigmoid(logits)
    intersection = (probability * target).sum(dims)
    dice = 1 - (2 * intersection + eps) / (probability.sum(dims) + target.sum(dims) + eps)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    return ((bce + dice) * weights).sum()


_AUGMENTATIONS = (
    InputPerturbation("noise", (0.0, 0.08)),
    InputPerturbation("brightness", (-0.1, 0.1)),
    InputPerturbation("contrast", (0.75, 1.25)),
    InputPerturbation("gamma", (0.8, 1.25)),
)


def _training_device(name: str) -> torch.device:
    """The torch device called ``name``, refused early (not after the data is prepared) if absent."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown torch device {name!r} ({error}); use e.g. 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch has no CUDA GPU; train with device 'cpu'")
    if device.type == "cuda":
        # every batch has the same shape, so cuDNN's autotuned convolutions pay off after one step
        torch.backends.cudnn.benchmark = True
    return device


def _sample_batch(images, targets, size, batch_size, augment, rng):
    inputs, outputs = [], []
    for _ in range(batch_size):
        index = rng.integers(len(images))
        image, target = images[index], targets[index]
        height, width = image.shape[:2]
        y = rng.integers(0, height - size + 1)
        x = rng.integers(0, width - size + 1)
        patch = image[y : y + size, x : x + size]
        patch_target = target[:, y : y + size, x : x + size]
        if augment:
            turns = int(rng.integers(4))
            patch, patch_target = np.rot90(patch, turns, (0, 1)), np.rot90(patch_target, turns, (1, 2))
            if rng.random() < 0.5:
                patch, patch_target = patch[:, ::-1], patch_target[:, :, ::-1]
            for augmentation in _AUGMENTATIONS:
                if rng.random() < 0.5:
                    patch = augmentation.apply(np.ascontiguousarray(patch), rng)
        patch = np.ascontiguousarray(patch, dtype=np.float32)
        inputs.append(patch[None] if patch.ndim == 2 else np.moveaxis(patch, -1, 0))
        outputs.append(np.ascontiguousarray(patch_target))
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(outputs))


def _rescale(image: np.ndarray, labels: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A normalised image (bilinear) and its labels (nearest) resized by ``scale``, as the model resizes its input."""
    if scale == 1:
        return image, labels
    size = scaled_size(image.shape[:2], scale)
    layout = image[None, None] if image.ndim == 2 else np.moveaxis(image, -1, 0)[None]
    resized = resize(torch.from_numpy(np.ascontiguousarray(layout, dtype=np.float32)), size)[0].numpy()
    resized = resized[0] if image.ndim == 2 else np.moveaxis(resized, 0, -1)
    # float64 holds every label id exactly (float32 only up to 2**24)
    label_layout = torch.from_numpy(labels.astype(np.float64))[None, None]
    return resized, resize(label_layout, size, labels=True)[0, 0].numpy().astype(labels.dtype)


def _prepare_training_data(images, labels, config: UNetConfig, training: TrainingConfig):
    if len(images) == 0:
        raise ValueError("no training images")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    prepared, targets = [], []
    for index, (image, label) in enumerate(zip(images, labels)):
        array = check_image(image, name=f"training image {index}")
        if array.ndim == 3 and config.in_channels == 1:
            array = to_grey(array)
        label = check_labels(label, array.shape, name=f"training labels {index}")
        # normalised at the image's own size, then resized: the order in which the model predicts
        array, label = _rescale(normalize_percentile(array, *training.percentiles), label, training.scale)
        if min(array.shape[:2]) < training.patch_size:
            pad = [(0, max(0, training.patch_size - s)) for s in array.shape[:2]]
            array = np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode="reflect")
            label = np.pad(label, pad, mode="constant")
        prepared.append(array)
        targets.append(training_targets(label, config.output))
    return prepared, targets


def train_unet(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: UNetConfig = UNetConfig(),
    training: TrainingConfig = TrainingConfig(),
    out: str | Path | None = None,
    name: str | None = None,
    source: str | None = None,
    instances: str | None = None,
    progress: bool = True,
) -> UNetModel:
    """Train one U-Net on a source dataset.

    Parameters
    ----------
    images : sequence of (H, W) or (H, W, 3) arrays
        Raw training images (normalised here per image).
    labels : sequence of (H, W) int arrays
        Instance labels (0 = background); semantic 0/1 masks work for ``output='foreground'``.
    config : UNetConfig
        Architecture; ``output='foreground+boundary'`` for instance segmentation.
    training : TrainingConfig
    out : path, optional
        Where to write the checkpoint.
    name, source : str, optional
        Model name and a free-text source description stored in the checkpoint.
    instances : {'components', 'watershed', 'dt_watershed'}, optional
        Instance method stored with the model; default
        :func:`~cte_kit.models.instances.default_instance_method` of the training labels
        (``'dt_watershed'`` for a boundary model trained on dense tissue, ``'watershed'`` for
        other boundary models, ``'components'`` for foreground models).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    UNetModel
        The trained model in eval mode, ready for prediction.
    """
    if training.patch_size % (2 ** (config.levels - 1)):
        raise ValueError(f"patch_size {training.patch_size} must be a multiple of {2 ** (config.levels - 1)}")
    device = _training_device(training.device)
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    prepared, targets = _prepare_training_data(images, labels, config, training)
    method = instances or default_instance_method(config.output, float(np.mean([t[0].mean() for t in targets])))
    if method not in INSTANCE_METHODS:
        raise ValueError(f"unknown instance method {method!r}; choose from {INSTANCE_METHODS}")
    network = config.build().to(device)
    weights = torch.ones(config.out_channels, device=device)
    weights[1:] = training.boundary_weight
    weights = weights / weights.sum()
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=training.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=training.learning_rate, total_steps=training.steps)
    losses = []
    bar = tqdm(range(training.steps), desc=f"training {name or 'U-Net'}", disable=not progress, leave=False)
    for _ in bar:
        inputs, target = _sample_batch(prepared, targets, training.patch_size, training.batch_size, training.augment, rng)
        inputs, target = inputs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        logits = network(inputs)
        loss = _loss(logits, target, weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    network.eval()
    settings = {"percentiles": list(training.percentiles), "instances": method, "scale": training.scale}
    history = {"source": source, "training": asdict(training), "loss": losses[-50:], "n_images": len(prepared)}
    if out is not None:
        save_checkpoint(network, config, out, settings=settings, history=history)
    return UNetModel(name=name or (Path(out).stem if out else "unet"), network=network, config=config,
                     percentiles=tuple(training.percentiles), instances=method, scale=training.scale,
                     device=training.device)

"""Perturbations of the input image and of intermediate features.

Two families, as in Talks & Kreshuk (section 2.2):

* **Input perturbations** (black box): additive Gaussian noise ``x + N(0, theta_N)``,
  brightness ``x + theta_B``, contrast ``mu(x) + theta_C (x - mu(x))`` and gamma
  ``sign(x) |x| ** theta_gamma``. They act on the *normalised* float image and never clip,
  exactly as the official implementation inserts them after percentile normalisation.
* **Feature perturbation** (grey box): channel-wise ("spatial") dropout with rate ``p`` and
  ``1 / (1 - p)`` rescaling of the surviving channels, applied at test time to the output of a
  named layer through a forward hook that is removed afterwards. Its mask comes from a private,
  seeded :class:`torch.Generator`, so it neither reads nor changes the global torch RNG.

A perturbation is described by a small frozen dataclass; :func:`parse_perturbation` reads the
command-line form (``"dropout:0.2"``, ``"noise:0.03-0.07"``, ``"gamma:0.8"``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np

__all__ = [
    "INPUT_KINDS",
    "NEUTRAL_STRENGTH",
    "DEFAULT_DROPOUT",
    "InputPerturbation",
    "FeatureDropout",
    "Perturbation",
    "parse_perturbation",
    "spatial_dropout",
    "capture_outputs",
    "feature_dropout",
]

#: The input perturbation kinds and the strength at which each leaves the image unchanged.
NEUTRAL_STRENGTH = {"noise": 0.0, "brightness": 0.0, "contrast": 1.0, "gamma": 1.0}
INPUT_KINDS = tuple(NEUTRAL_STRENGTH)

#: Paper defaults for the dropout rate at the bottleneck, by structure.
DEFAULT_DROPOUT = {"nuclei": 0.2, "cells": 0.2, "mitochondria": 0.05}


def _as_strength(value) -> float | tuple[float, float]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"a strength range needs two values (low, high), got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not (np.isfinite(low) and np.isfinite(high)) or low > high:
            raise ValueError(f"invalid strength range ({low}, {high}): need finite low <= high")
        return (low, high)
    strength = float(value)
    if not np.isfinite(strength):
        raise ValueError(f"strength must be finite, got {value!r}")
    return strength


@dataclass(frozen=True)
class InputPerturbation:
    """One input perturbation with a fixed strength or a per-image range.

    Parameters
    ----------
    kind : {'noise', 'brightness', 'contrast', 'gamma'}
        Which transform of eq. (1) of the paper.
    strength : float or (float, float)
        ``theta`` of the transform. A pair ``(low, high)`` draws ``theta ~ U(low, high)`` once
        per image, as the official implementation does.
    """

    kind: str
    strength: float | tuple[float, float]

    def __post_init__(self):
        if self.kind not in NEUTRAL_STRENGTH:
            raise ValueError(f"unknown input perturbation {self.kind!r}; choose from {INPUT_KINDS}")
        strength = _as_strength(self.strength)
        low = strength[0] if isinstance(strength, tuple) else strength
        if self.kind == "noise" and low < 0:
            raise ValueError("noise strength (standard deviation) must be >= 0")
        if self.kind == "gamma" and low <= 0:
            raise ValueError("gamma must be > 0")
        object.__setattr__(self, "strength", strength)

    @property
    def is_neutral(self) -> bool:
        """True when the transform returns its input unchanged."""
        return self.strength == NEUTRAL_STRENGTH[self.kind]

    @property
    def label(self) -> str:
        """Command-line form, e.g. ``'noise:0.05'`` or ``'gamma:0.8-1.2'``."""
        if isinstance(self.strength, tuple):
            return f"{self.kind}:{self.strength[0]:g}-{self.strength[1]:g}"
        return f"{self.kind}:{self.strength:g}"

    def draw_strength(self, rng: np.random.Generator) -> float:
        """The strength for one image: fixed, or drawn uniformly from the range."""
        if isinstance(self.strength, tuple):
            return float(rng.uniform(*self.strength))
        return float(self.strength)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Perturb one normalised image.

        Parameters
        ----------
        image : (H, W) or (H, W, C) float ndarray
            Normalised image. Integer images are refused: perturbations act after normalisation.
        rng : numpy.random.Generator
            Source of the noise and of a per-image strength.

        Returns
        -------
        (H, W) or (H, W, C) float32 ndarray
            The perturbed image, not clipped. At the neutral strength the input values are
            returned unchanged (as float32).
        """
        image = np.asarray(image)
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(
                f"input perturbations act on normalised float images, got dtype {image.dtype}; "
                "normalise first (cte_kit.data.normalize_percentile)"
            )
        image = image.astype(np.float32, copy=False)
        theta = self.draw_strength(rng)
        if theta == NEUTRAL_STRENGTH[self.kind]:
            return image.copy()
        if self.kind == "noise":
            noise = rng.normal(0.0, theta, size=image.shape).astype(np.float32)
            return image + noise
        if self.kind == "brightness":
            return image + np.float32(theta)
        if self.kind == "contrast":
            mean = image.mean(dtype=np.float64)
            return (mean + theta * (image - mean)).astype(np.float32)
        # gamma: sign-preserving so that negative values of a normalised image stay defined
        return (np.sign(image) * np.abs(image) ** theta).astype(np.float32)


@dataclass(frozen=True)
class FeatureDropout:
    """Channel-wise dropout of intermediate features (grey-box perturbation).

    Parameters
    ----------
    rate : float
        Probability ``p`` in [0, 1) that a whole feature channel is zeroed; survivors are scaled
        by ``1 / (1 - p)``.
    layers : tuple of str
        Where to perturb, in the adapter's layer names. ``('bottleneck',)`` (the default) is the
        output of the deepest encoder block, the paper's setting.
    """

    rate: float
    layers: tuple[str, ...] = ("bottleneck",)

    def __post_init__(self):
        rate = float(self.rate)
        if not (0.0 <= rate < 1.0):
            raise ValueError(f"dropout rate must be in [0, 1), got {self.rate!r}")
        layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
        if not layers:
            raise ValueError("FeatureDropout needs at least one layer")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "layers", layers)

    @property
    def is_neutral(self) -> bool:
        return self.rate == 0.0

    @property
    def label(self) -> str:
        suffix = "" if self.layers == ("bottleneck",) else "@" + "+".join(self.layers)
        return f"dropout:{self.rate:g}{suffix}"


Perturbation = Union[InputPerturbation, FeatureDropout]


def parse_perturbation(text: str) -> Perturbation:
    """Read a perturbation from its command-line form.

    ``'dropout:0.2'``, ``'dropout:0.1@encoder2+bottleneck'``, ``'noise:0.05'``,
    ``'noise:0.03-0.07'`` (per-image range), ``'brightness:0.1'``, ``'contrast:0.8'``,
    ``'gamma:1.2'``.

    Examples
    --------
    >>> parse_perturbation("dropout:0.2")
    FeatureDropout(rate=0.2, layers=('bottleneck',))
    >>> parse_perturbation("noise:0.03-0.07").strength
    (0.03, 0.07)
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(
            f"perturbation {text!r} must look like KIND:STRENGTH, e.g. dropout:0.2 or noise:0.05"
        )
    kind, _, value = text.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "dropout":
            value, _, layers = value.partition("@")
            layer_names = tuple(name for name in layers.split("+") if name) or ("bottleneck",)
            return FeatureDropout(float(value), layer_names)
        if "-" in value[1:]:
            split_at = value.index("-", 1)
            strength = (float(value[:split_at]), float(value[split_at + 1 :]))
        else:
            strength = float(value)
    except ValueError as error:
        raise ValueError(f"cannot read the strength in perturbation {text!r}: {error}") from None
    return InputPerturbation(kind, strength)


def spatial_dropout(features, rate: float, generator):
    """Zero whole channels of a feature tensor and rescale the rest.

    Parameters
    ----------
    features : torch.Tensor, shape (N, C, ...)
        Feature maps.
    rate : float
        Drop probability per (sample, channel).
    generator : torch.Generator or sequence of N torch.Generator
        CPU generator(s) drawing the keep-mask of shape (N, C, 1, ...). With one generator per
        sample, each sample's mask is independent of the batch it happens to be in.

    Returns
    -------
    torch.Tensor, same shape and dtype as ``features``
        ``features`` itself when ``rate == 0``.
    """
    if rate == 0.0:
        return features
    import torch

    n, c = features.shape[:2]
    trailing = (1,) * (features.dim() - 2)
    if isinstance(generator, torch.Generator):
        draws = torch.rand((n, c), generator=generator)
    else:
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for a batch of {n} samples")
        draws = torch.stack([torch.rand(c, generator=g) for g in generator])
    scale = (draws >= rate).to(torch.float32) / (1.0 - rate)
    return features * scale.reshape(n, c, *trailing).to(device=features.device, dtype=features.dtype)


def _perturb_output(output, rate, generator, fork: bool, forked: bool):
    """Apply dropout to a module output (a tensor, or the deepest map of a sequence)."""
    import torch

    if isinstance(output, (list, tuple)):
        last = _perturb_output(output[-1], rate, generator, fork, forked)
        return type(output)([*output[:-1], last])
    if fork and not forked:
        return torch.cat([output, spatial_dropout(output, rate, generator)], dim=0)
    if fork:
        half = output.shape[0] // 2
        return torch.cat([output[:half], spatial_dropout(output[half:], rate, generator)], dim=0)
    return spatial_dropout(output, rate, generator)


@contextlib.contextmanager
def feature_dropout(
    modules: Sequence, rate: float, seed: int | Sequence[int], fork: bool = False
) -> Iterator[None]:
    """Apply seeded spatial dropout to the outputs of ``modules`` for the duration of a block.

    The dropout is active whatever the train/eval mode of the network (BatchNorm keeps using
    its running statistics). Hooks are removed on exit, also after an exception.

    Parameters
    ----------
    modules : sequence of torch.nn.Module
        Layers whose outputs are perturbed. A module returning a list or tuple of feature maps
        (an encoder returning all its levels) has its last, deepest map perturbed.
    rate : float
        Dropout rate ``p`` in [0, 1).
    seed : int or sequence of int
        Seed of the private generator that draws the channel masks, or one seed per sample of
        the batch (then a sample's mask does not depend on how the images were batched).
    fork : bool
        If True, the first hooked module to run doubles the batch: its output becomes
        ``cat([clean, perturbed])`` and later hooked modules perturb only the second half. A
        network whose forward accepts that (the kit's :class:`~cte_kit.models.unet.UNet`) then
        yields the clean and the perturbed prediction from one pass that shares everything
        computed before the first perturbed layer.
    """
    import torch

    if not (0.0 <= rate < 1.0):
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if isinstance(seed, (int, np.integer)):
        generator = torch.Generator().manual_seed(int(seed))
    else:
        generator = [torch.Generator().manual_seed(int(s)) for s in seed]
    state = {"forked": False}

    def hook(module, inputs, output):
        perturbed = _perturb_output(output, rate, generator, fork, state["forked"])
        state["forked"] = True
        return perturbed

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_outputs(modules: Sequence) -> Iterator[list]:
    """Collect the outputs of ``modules`` as float32 NumPy arrays while a block runs.

    Parameters
    ----------
    modules : sequence of torch.nn.Module
        A module returning a list or tuple (an encoder returning all its levels) contributes its
        last, deepest map, as in :func:`feature_dropout`.

    Yields
    ------
    list of (N, C, ...) float32 ndarray
        One entry per module call, in call order; filled as the block runs. The outputs
        themselves are not changed.
    """
    captured: list = []

    def hook(module, inputs, output):
        while isinstance(output, (list, tuple)):
            output = output[-1]
        dense = output.to_dense() if getattr(output, "is_mkldnn", False) else output
        captured.append(dense.detach().float().cpu().numpy())

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()

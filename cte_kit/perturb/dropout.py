"""Feature perturbation (grey box): channel-wise ("spatial") dropout at named layers.

Dropout with rate ``p`` and ``1 / (1 - p)`` rescaling of the surviving channels, applied at
test time to the output of a named layer through a forward hook that is removed afterwards.
Its mask comes from a private, seeded :class:`torch.Generator`, so it neither reads nor changes
the global torch RNG.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["DEFAULT_DROPOUT", "LAYER_NAME", "FeatureDropout", "capture_outputs", "feature_dropout", "spatial_dropout"]

#: Paper defaults for the dropout rate at the bottleneck, by structure.
DEFAULT_DROPOUT = {"nuclei": 0.2, "cells": 0.2, "mitochondria": 0.05}
#: The form of a layer name, the same for every grey-box adapter (:mod:`cte_kit.models.layers`): a
#: plain name (``encoder0``, ``bottleneck``, ``decoder1``) or an alias (``sym1``, ``encoders``,
#: ``decoders``, ``all``). Whether a network has that layer is the model's to say.
LAYER_NAME = re.compile(r"(encoder|decoder|sym)\d+|bottleneck|encoders|decoders|all")


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
        unknown = [layer for layer in layers if not (isinstance(layer, str) and LAYER_NAME.fullmatch(layer))]
        if unknown:
            raise ValueError(f"no layer is called {', '.join(map(repr, unknown))}: layer names are encoder0, encoder1, "
                             "..., bottleneck, decoder0, decoder1, ..., and the aliases sym0, sym1, ..., encoders, "
                             "decoders, all")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "layers", layers)

    @property
    def is_neutral(self) -> bool:
        return self.rate == 0.0

    @property
    def label(self) -> str:
        suffix = "" if self.layers == ("bottleneck",) else "@" + "+".join(self.layers)
        return f"dropout:{self.rate:g}{suffix}"


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

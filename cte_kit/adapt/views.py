"""The teacher's weak views, the student's strong views, and uncertainty masks.

Output channels have roles: ``'class'`` (a logit of a pixel-wise classification: foreground,
boundary, Cellpose's cell probability) or ``'flow_y'`` / ``'flow_x'`` (the two components of a
vector field, Cellpose's flows, in image row / column direction). A view of the image turns a
vector field's *components* as well as its pixels, so inverting a view turns them back.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

__all__ = ["ROLES", "DIHEDRAL_VIEWS", "apply_view", "invert_view", "teacher_views", "strong_augment",
           "uncertainty", "MovingPercentile"]

ROLES = ("class", "flow_y", "flow_x")

#: (quarter turns, flip of the columns) for the 8 symmetries of the square.
DIHEDRAL_VIEWS: tuple[tuple[int, bool], ...] = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    """Validate output roles: known names, and flows as one adjacent ``flow_y, flow_x`` pair."""
    roles = tuple(roles)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown output role(s) {unknown}; roles are {ROLES}")
    if ("flow_y" in roles) != ("flow_x" in roles) or roles.count("flow_y") > 1 or (
            "flow_y" in roles and roles.index("flow_x") != roles.index("flow_y") + 1):
        raise ValueError(f"a flow needs exactly one 'flow_y' directly followed by 'flow_x', got {roles}")
    return roles


def _turn_vectors(maps: torch.Tensor, roles: Sequence[str], turns: int) -> torch.Tensor:
    """Turn the flow components as ``torch.rot90(., turns, (-2, -1))`` turns the pixels.

    One quarter turn maps a vector ``(dy, dx)`` to ``(-dx, dy)``: the potential ``u = x``
    (flow ``(0, 1)``) becomes ``u = H - 1 - y`` (flow ``(-1, 0)``).
    """
    if "flow_y" not in roles or turns % 4 == 0:
        return maps
    y = roles.index("flow_y")
    dy, dx = maps[:, y], maps[:, y + 1]
    for _ in range(turns % 4):
        dy, dx = -dx, dy
    return torch.cat([maps[:, :y], dy[:, None], dx[:, None], maps[:, y + 2:]], dim=1)


def _flip_vectors(maps: torch.Tensor, roles: Sequence[str]) -> torch.Tensor:
    if "flow_y" not in roles:
        return maps
    x = roles.index("flow_x")
    return torch.cat([maps[:, :x], -maps[:, x : x + 1], maps[:, x + 1 :]], dim=1)


def apply_view(images: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """One symmetry of the square applied to (B, C, H, W) images: flip the columns, then turn."""
    turns, flip = view
    if flip:
        images = torch.flip(images, dims=(-1,))
    return torch.rot90(images, turns, dims=(-2, -1))


def invert_view(maps: torch.Tensor, view: tuple[int, bool], roles: Sequence[str]) -> torch.Tensor:
    """Undo :func:`apply_view` on (B, C, H, W) outputs, pixels and flow components alike.

    Parameters
    ----------
    maps : (B, C, H, W) float tensor
        Network outputs computed on the viewed images.
    view : (int, bool)
        Quarter turns and column flip of the view.
    roles : sequence of str, length C
        Role of each channel (see :data:`ROLES`).

    Returns
    -------
    (B, C, H, W) float tensor in the frame of the original images.
    """
    turns, flip = view
    maps = _turn_vectors(torch.rot90(maps, -turns, dims=(-2, -1)), roles, -turns)
    if flip:
        maps = _flip_vectors(torch.flip(maps, dims=(-1,)), roles)
    return maps


def teacher_views(network_outputs, images: torch.Tensor, roles: Sequence[str],
                  views: Sequence[tuple[int, bool]] = DIHEDRAL_VIEWS) -> torch.Tensor:
    """Outputs of every weak view, each brought back to the original frame.

    Parameters
    ----------
    network_outputs : callable
        (B, C_in, H, W) tensor -> (B, C, H, W) tensor of raw outputs (logits, flows).
    images : (B, C_in, H, W) float tensor
        Square patches (a quarter turn must keep the shape).
    roles : sequence of str
    views : sequence of (int, bool)

    Returns
    -------
    (V, B, C, H, W) float tensor; class channels are probabilities (sigmoid of the logits).
    """
    roles = check_roles(roles)
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"teacher views need square patches, got {tuple(images.shape[-2:])}")
    stacked = []
    for view in views:
        outputs = invert_view(network_outputs(apply_view(images, view)), view, roles)
        stacked.append(_class_probabilities(outputs, roles))
    return torch.stack(stacked)


def _class_probabilities(outputs: torch.Tensor, roles: Sequence[str]) -> torch.Tensor:
    classes = torch.tensor([role == "class" for role in roles], device=outputs.device)[None, :, None, None]
    return torch.where(classes, torch.sigmoid(outputs), outputs)


def uncertainty(views: torch.Tensor, roles: Sequence[str]) -> torch.Tensor:
    """Per-pixel uncertainty of the averaged pseudo-label, (B, C, H, W).

    Classification: ``min(p, 1 - p)`` of the mean probability (one minus the confidence);
    regression: the standard deviation across the views, as the SelfAdapt paper prescribes.
    """
    mean = views.mean(0)
    spread = views.std(0, unbiased=False)
    classes = torch.tensor([role == "class" for role in roles], device=views.device)[None, :, None, None]
    return torch.where(classes, torch.minimum(mean, 1 - mean), spread)


class MovingPercentile:
    """Per-channel moving average of a percentile of the uncertainty (the masking threshold).

    Parameters
    ----------
    percentile : float
        In (0, 100].
    momentum : float
        ``threshold = momentum * threshold + (1 - momentum) * percentile_of_batch``; the first
        batch sets it.
    """

    def __init__(self, percentile: float, momentum: float):
        self.percentile, self.momentum = percentile, momentum
        self.value: torch.Tensor | None = None

    def update(self, values: torch.Tensor) -> torch.Tensor:
        """Fold in a (B, C, H, W) batch of uncertainties and return the (C,) thresholds."""
        flat = values.detach().transpose(0, 1).reshape(values.shape[1], -1).float()
        current = torch.quantile(flat, self.percentile / 100.0, dim=1)
        self.value = current if self.value is None else self.momentum * self.value + (1 - self.momentum) * current
        return self.value


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[0]
    padded = F.pad(images[None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)[0]


def strong_augment(images: torch.Tensor, generator: torch.Generator, noise: float, blur: float,
                   contrast: tuple[float, float], brightness: float) -> torch.Tensor:
    """The student's view: contrast, brightness, blur and Gaussian noise, drawn per image.

    Parameters
    ----------
    images : (B, C, H, W) float tensor
        Normalised patches.
    generator : torch.Generator (CPU)
        Source of every random number, so a run is reproducible from its seed.
    noise, blur, contrast, brightness
        See :class:`~cte_kit.adapt.config.AdaptConfig`.

    Returns
    -------
    (B, C, H, W) float tensor
    """
    out = []
    for image in images:
        u = torch.rand(5, generator=generator).tolist()
        mean = image.mean()
        image = (image - mean) * (contrast[0] + u[0] * (contrast[1] - contrast[0])) + mean
        image = image + (2 * u[1] - 1) * brightness
        if blur > 0 and u[2] < 0.5:
            image = _blur(image, max(0.3, u[3] * blur))
        sigma = u[4] * noise
        image = image + sigma * torch.randn(image.shape, generator=generator).to(image.device)
        out.append(image)
    return torch.stack(out)

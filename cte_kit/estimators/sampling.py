"""Seeded, bounded pixel sampling and feature lookup shared by the feature-based estimators.

Every sample is drawn from a generator seeded by what is being computed (estimator, image
name, repetition), never by a position in a list, and its size is fixed, so an estimator's
cost beyond the forward pass does not grow with the image size.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..models.base import SegmentationModel
from ..types import name_seed

__all__ = ["sample_pixels", "features_at", "default_feature_layer", "sampled_features", "pixel_probabilities"]


def sample_pixels(shape: tuple[int, int], n: int, seed: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` distinct pixel coordinates, uniformly (within ``mask`` when given).

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    n : int
        Pixels wanted; all candidates are returned when there are fewer.
    seed : int
    mask : (H, W) bool ndarray, optional
        Candidate pixels (e.g. a predicted class, a label boundary band).

    Returns
    -------
    ys, xs : (m,) int64 ndarray
        ``m = min(n, candidates)``, sorted by flat index.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    if mask is None:
        total = int(shape[0]) * int(shape[1])
        flat = rng.choice(total, size=min(n, total), replace=False) if n < total else np.arange(total)
    else:
        if mask.shape != tuple(shape):
            raise ValueError(f"mask has shape {mask.shape}, image {tuple(shape)}")
        candidates = np.flatnonzero(mask)
        flat = rng.choice(candidates, size=min(n, candidates.size), replace=False) if n < candidates.size else candidates
    flat = np.sort(flat)
    return np.unravel_index(flat, tuple(shape))


def features_at(features: np.ndarray, image_shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Feature vectors under pixels of the image, for a map at a coarser resolution.

    Parameters
    ----------
    features : (C, h, w) ndarray
        One layer's map; ``h = ceil(H / s)`` for a stride ``s`` (a padded network adds at most
        one stride at the bottom and right).
    image_shape : (H, W)
    ys, xs : (m,) int ndarray
        Pixel coordinates in the image.

    Returns
    -------
    (m, C) float32 ndarray
    """
    stride_y = math.ceil(image_shape[0] / features.shape[1])
    stride_x = math.ceil(image_shape[1] / features.shape[2])
    return np.ascontiguousarray(features[:, ys // stride_y, xs // stride_x].T, dtype=np.float32)


def default_feature_layer(model: SegmentationModel) -> str:
    """The deepest-resolution decoder output (what the output head reads), else the bottleneck."""
    if model.layer_map is None:
        raise ValueError(f"model {model.name!r} is a black box: it has no feature layers")
    return model.layer_map.decoders[-1] if model.layer_map.decoders else "bottleneck"


def sampled_features(
    model: SegmentationModel,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    layer: str | None,
    n_per_image: int,
    key: str,
    masks: Sequence[np.ndarray | None] | None = None,
    features: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of up to ``n_per_image`` sampled pixels of each image, pooled.

    Parameters
    ----------
    model : SegmentationModel
    images : sequence of arrays
    names : sequence of str
        Seeds derive from ``key`` and the image name.
    layer : str or None
        Plain layer name (default: :func:`default_feature_layer`).
    n_per_image : int
    key : str
        What is being computed (an estimator key and a repetition), part of every seed.
    masks : sequence of (H, W) bool ndarray or None, optional
        Candidate pixels per image.
    features : sequence of (C, h, w) ndarray, optional
        The layer's maps when already computed (several repetitions share them).

    Returns
    -------
    vectors : (m, C) float32 ndarray
    image_index : (m,) int64 ndarray
        Which image each vector comes from.
    flat : (m,) int64 ndarray
        Its flat pixel index in that image.
    """
    if features is None:
        features = model.layer_features(images, layer or default_feature_layer(model), names)
    vectors, owners, flats = [], [], []
    for index, (image, name, feature) in enumerate(zip(images, names, features)):
        shape = np.shape(image)[:2]
        mask = masks[index] if masks is not None else None
        if mask is not None and not mask.any():
            continue
        ys, xs = sample_pixels(shape, n_per_image, name_seed(key, name), mask)
        vectors.append(features_at(feature, shape, ys, xs))
        owners.append(np.full(ys.size, index, dtype=np.int64))
        flats.append(np.ravel_multi_index((ys, xs), shape))
    if not vectors:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(vectors), np.concatenate(owners), np.concatenate(flats)


def pixel_probabilities(probability: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Two-class probabilities ``[1 - p, p]`` of a foreground map, clipped away from 0 and 1.

    Parameters
    ----------
    probability : (...,) float array
    eps : float

    Returns
    -------
    (..., 2) float64 ndarray
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), eps, 1.0 - eps)
    return np.stack([1.0 - p, p], axis=-1)

"""Instance labels from semantic outputs: connected components or seeded watershed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, morphology, segmentation

__all__ = ["INSTANCE_METHODS", "connected_components", "seeded_watershed", "instances_from_probability"]

INSTANCE_METHODS = ("components", "watershed")


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    labels = labels.copy()
    labels[small[labels]] = 0
    return measure.label(labels > 0, connectivity=1) if small.any() else labels


def connected_components(probability: np.ndarray, threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """Label the connected foreground regions (full connectivity, as the CTE reference code).

    Parameters
    ----------
    probability : (H, W) float ndarray
    threshold : float
        Foreground is ``probability > threshold``.
    min_size : int
        Objects with fewer pixels are removed.

    Returns
    -------
    (H, W) int32 ndarray, 0 = background, objects numbered 1..N
    """
    labels = measure.label(np.asarray(probability) > threshold, connectivity=2)
    return _remove_small(labels, min_size).astype(np.int32)


def seeded_watershed(
    probability: np.ndarray,
    boundary: np.ndarray | None = None,
    threshold: float = 0.5,
    min_size: int = 0,
    min_distance: int = 3,
) -> np.ndarray:
    """Split touching objects with a seeded watershed inside the foreground mask.

    Parameters
    ----------
    probability : (H, W) float ndarray
        Foreground probability.
    boundary : (H, W) float ndarray, optional
        Boundary probability (a foreground+boundary U-Net). Seeds are then the connected
        interiors ``foreground & (boundary < 0.5)`` and the flooding runs on the boundary map.
        Without it, seeds are the maxima of the distance transform of the foreground.
    threshold : float
    min_size : int
    min_distance : int
        Smallest distance between two distance-transform seeds (no boundary map).

    Returns
    -------
    (H, W) int32 ndarray
    """
    mask = np.asarray(probability) > threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    if boundary is not None:
        seeds = measure.label(mask & (np.asarray(boundary) < 0.5), connectivity=1)
        elevation = np.asarray(boundary, dtype=np.float32)
    else:
        distance = ndi.distance_transform_edt(mask)
        # h-maxima rather than plain peaks: plateaus of elongated nuclei give one seed, not many
        peaks = morphology.h_maxima(ndi.gaussian_filter(distance, 1.0), 0.5)
        seeds = measure.label(peaks & mask, connectivity=2)
        elevation = -distance
    if seeds.max() == 0:
        return connected_components(probability, threshold, min_size)
    labels = segmentation.watershed(elevation, seeds, mask=mask)
    return _remove_small(labels, min_size).astype(np.int32)


def instances_from_probability(
    probability: np.ndarray,
    boundary: np.ndarray | None = None,
    method: str = "components",
    threshold: float = 0.5,
    min_size: int = 0,
) -> np.ndarray:
    """Dispatch to :func:`connected_components` or :func:`seeded_watershed` by name."""
    if method == "components":
        return connected_components(probability, threshold, min_size)
    if method == "watershed":
        return seeded_watershed(probability, boundary, threshold, min_size)
    raise ValueError(f"unknown instance method {method!r}; choose from {INSTANCE_METHODS}")

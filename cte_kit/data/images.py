"""Checking and normalising 2D microscopy images before they reach a model."""

from __future__ import annotations

import numpy as np

from ..types import InputTypeError

__all__ = ["check_image", "check_labels", "to_grey", "normalize_percentile", "percentile_range", "rescale"]


def check_image(image, name: str = "image", channels: int | None = None) -> np.ndarray:
    """Validate one 2D image and return it as an ndarray.

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C)
        Grey or colour (C = 3, or 4 with alpha, which is dropped) image of any real dtype.
    name : str
        How to call the image in error messages (a file name, say).
    channels : {1, 3, None}
        Channels the caller needs. ``1`` refuses colour images, ``3`` turns grey ones into
        three identical channels, ``None`` accepts both.

    Returns
    -------
    ndarray, shape (H, W) or (H, W, 3)
        The image, original dtype.

    Raises
    ------
    ValueError
        Wrong number of dimensions, empty or too small image, NaN or infinite values or values
        beyond float32, colour image where grey is required.
    TypeError
        Non-numeric dtype.
    """
    array = np.asarray(image)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputTypeError(f"{name}: expected a numeric image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"{name}: expected a 2D image of shape (H, W) or (H, W, 3), got shape {array.shape}; "
            "3D stacks must be cut into 2D slices first"
        )
    if min(array.shape[:2]) < 8:
        raise ValueError(f"{name}: image of shape {array.shape} is too small (need at least 8x8)")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: image contains NaN or infinite values")
        # models compute in float32: larger values would become infinite there
        largest = float(np.abs(array).max())
        if largest > float(np.finfo(np.float32).max):
            raise ValueError(f"{name}: image values reach {largest:.3g}, beyond what float32 holds "
                             f"({np.finfo(np.float32).max:.3g}); rescale the image")
    if channels == 1 and array.ndim == 3:
        raise ValueError(
            f"{name}: this model needs a grey image but got colour shape {array.shape}; convert it "
            "(cte_kit.data.to_grey) or set `rgb: grey` in the model's bank entry"
        )
    if channels == 3 and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array


def check_labels(labels, shape: tuple[int, ...] | None = None, name: str = "labels") -> np.ndarray:
    """Validate an instance or semantic label image.

    Parameters
    ----------
    labels : array_like of int or bool, shape (H, W)
        0 is background.
    shape : tuple, optional
        The (H, W) of the image the labels belong to.

    Returns
    -------
    ndarray of int64, shape (H, W)
    """
    array = np.asarray(labels)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(f"{name}: label images must be single-channel, got shape {array.shape}")
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2D label image, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise ValueError(f"{name}: label image has non-integer values")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise InputTypeError(f"{name}: expected integer labels, got dtype {array.dtype}")
    if (array < 0).any():
        raise ValueError(f"{name}: label image has negative values")
    if shape is not None and array.shape != tuple(shape[:2]):
        raise ValueError(f"{name}: label shape {array.shape} does not match image shape {tuple(shape[:2])}")
    return array.astype(np.int64)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luminance of a colour image (ITU-R 601 weights); grey images pass through.

    Returns float32 of shape (H, W).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (image[..., :3].astype(np.float32) @ weights).astype(np.float32)


def normalize_percentile(image, low: float = 1.0, high: float = 99.8, eps: float = 1e-10) -> np.ndarray:
    """Percentile normalisation, ``(x - p_low) / (p_high - p_low + eps)``, per image.

    The same transform as CSBDeep's ``normalize`` and the CTE paper's per-image normalisation.
    Values are not clipped. Colour images are normalised jointly over all channels.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
    low, high : float
        Percentiles in [0, 100], ``low < high``.

    Returns
    -------
    ndarray of float32, same shape
    """
    return rescale(image, *percentile_range(image, low, high), eps)


def percentile_range(image, low: float = 1.0, high: float = 99.8) -> tuple:
    """The ``low`` and ``high`` percentiles of an image's values, all channels together, as
    :func:`normalize_percentile` computes them (of the float32 image).

    Returns
    -------
    (p_low, p_high) : numpy scalars
    """
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"need 0 <= low < high <= 100, got percentiles ({low}, {high})")
    # partitioned in place in its own float32 copy: one copy of the image, not two
    p_low, p_high = np.percentile(np.array(image, dtype=np.float32), [low, high], overwrite_input=True)
    return p_low, p_high


def rescale(image, p_low, p_high, eps: float = 1e-10) -> np.ndarray:
    """``(x - p_low) / (p_high - p_low + eps)`` as float32: :func:`normalize_percentile` with given bounds, so
    that a part of an image is normalised exactly as the whole image is."""
    x = np.asarray(image, dtype=np.float32)
    return ((x - p_low) / (p_high - p_low + eps)).astype(np.float32)

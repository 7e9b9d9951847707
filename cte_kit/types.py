"""Vocabulary every floor of the kit shares; this module imports nothing from the kit.

* :class:`CTEKitWarning` - the one category of the warnings the kit addresses to its user (a
  model skipped, a bank that ties at the top, an unverified download). Filter them as usual::

      import warnings
      from cte_kit import CTEKitWarning
      warnings.simplefilter("ignore", CTEKitWarning)

  The notebooks and the command line print them as plain sentences
  (:func:`cte_kit.teaching.notebook_env.plain_warnings`).
* :class:`Prediction`, :class:`PredictionPair` - what a model says about one image, clean and
  perturbed.
* keys: :func:`image_id` and :func:`name_seed` turn what is being computed (an image's name, an
  estimator and a repetition) into numbers, so that no result depends on a position in a list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = ["CTEKitWarning", "InputTypeError", "Prediction", "PredictionPair", "content_name", "image_id", "name_seed"]


class CTEKitWarning(UserWarning):
    """A warning addressed to the kit's user: a plain sentence that says what happened and what to do."""


class InputTypeError(TypeError):
    """An input of the wrong type or dtype: bad input the user can fix (the command line says so in one
    line, exit code 2), not a bug in the kit (any other TypeError)."""


@dataclass(frozen=True)
class Prediction:
    """What a model says about one image.

    Attributes
    ----------
    probability : (H, W) float32 ndarray or None
        Foreground probability in [0, 1] (semantic output; StarDist's object probability,
        Cellpose's sigmoid of cell probability).
    labels : (H, W) int32 ndarray or None
        Instance labels, 0 = background (uint16 for a large image stitched from tiles with fewer
        than 65 536 objects: :class:`cte_kit.models.tiling.Stitcher`).
    """

    probability: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        if self.probability is None and self.labels is None:
            raise ValueError("a Prediction needs a probability map, instance labels or both")


@dataclass(frozen=True)
class PredictionPair:
    """The clean prediction of one image and its perturbed predictions (one per draw)."""

    clean: Prediction
    perturbed: tuple[Prediction, ...]


def _digest(parts) -> bytes:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()


def image_id(name: str) -> int:
    """A stable 32-bit id of an image from its name (its key), for :func:`cte_kit.perturb.image_seed`.

    Derived from the name, never from a position in a list, so adding or removing images does
    not change the perturbation of any other image.
    """
    return int.from_bytes(_digest([name])[:4], "little")


def name_seed(*parts) -> int:
    """A 63-bit seed derived from what is being computed (estimator, image name, repetition)."""
    return int.from_bytes(_digest(parts)[:8], "little") >> 1


def content_name(image) -> str:
    """A name for an image that has none: a digest of its dtype, shape and pixels (``'px:<16 hex>'``).

    Seeds come from names; an unnamed image is named by what it is, never by where it stands in a list.
    """
    array = np.ascontiguousarray(image)
    hasher = hashlib.sha256(f"{array.dtype}|{array.shape}|".encode())
    hasher.update(array.tobytes())
    return "px:" + hasher.hexdigest()[:16]

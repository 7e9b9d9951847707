"""Large images in overlapping tiles: how every adapter whose library does not tile predicts them.

A section of 8192 x 8192 pixels does not fit through a U-Net at once (one feature map of 16
channels is 4 GB). :class:`~cte_kit.models.base.SegmentationModel` cuts an image larger than the
adapter's :class:`Tiling` into tiles, predicts them one at a time with the adapter's own
prediction (clean, input-perturbed or dropout pair alike) and stitches one prediction of the whole
image, on which consistency is then computed as for any image. Memory holds the stitched maps and
one tile's prediction, whatever the image size.

* **Windows** (:func:`tile_windows`): every tile writes its *core*, and reads the core with a
  margin on every side (clipped at the image border) as context. Core and margin are multiples of
  the network's total stride (``align``), so the tiles meet the pooling grid where the whole image
  does, and a margin at least the network's receptive-field radius makes every core pixel's
  probability that of the whole image (up to floating-point summation order).
* **Probability** is the cores' probability, pasted.
* **Instances** (:class:`Stitcher`): inside its core an object keeps its tile's label; two
  8-connected pixels on either side of a seam are one object when the later tile, which sees both
  with its margin of context, gives them one label. The foreground is the cores' foreground,
  exactly, and connected components stitch to the whole image's components.
* **Inputs** (:class:`LazyImage`): a large image is normalised tile by tile with the whole
  image's percentile bounds, and perturbed tile by tile with the strength drawn for the image
  (and, for ``contrast``, its mean): memory keeps no float copy of the whole image, and gamma,
  brightness and contrast give every pixel what the whole image gives it. Noise is drawn per
  tile, seeded from the image's seed and the tile's position (another draw than the whole
  image's, of the same distribution).
* **Dropout** masks are drawn per image, from the image's seed, identical in every tile: the
  tiled prediction equals the whole-image one, and neither depends on how tiles are batched.

StarDist and bioimage.io models tile inside their libraries (``tile_size``, ``blocksize``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..types import Prediction

__all__ = ["LazyImage", "Stitcher", "Tiling", "Window", "tile_windows"]


@dataclass(frozen=True)
class Tiling:
    """How one adapter cuts a large image.

    Attributes
    ----------
    size : int
        Largest tile side (core and margins); an image no larger than this on both sides is
        predicted whole.
    margin : int
        Context on every side of a core, discarded when stitching.
    align : int
        The network's total stride: core starts and margins are multiples of it.
    """

    size: int
    margin: int
    align: int = 1

    def __post_init__(self):
        if self.align < 1 or self.margin < 0:
            raise ValueError(f"tiling needs align >= 1 and margin >= 0, got align {self.align}, margin {self.margin}")
        if self.core < self.align:
            raise ValueError(f"tile_size {self.size} leaves no core inside margins of {self.margin} pixels: use a "
                             f"tile_size of at least {2 * self._aligned(self.margin) + self.align}")

    def _aligned(self, value: int) -> int:
        return int(math.ceil(value / self.align) * self.align)

    @property
    def core(self) -> int:
        """Side of a core: the tile size less both (aligned) margins, rounded down to ``align``."""
        return (self.size - 2 * self._aligned(self.margin)) // self.align * self.align

    def applies(self, shape: Sequence[int]) -> bool:
        """Whether an image of this (H, W[, C]) shape is cut into tiles."""
        return shape[0] > self.size or shape[1] > self.size


@dataclass(frozen=True)
class Window:
    """One tile: the region of the image it reads, the core it writes, and that core in the tile."""

    tile: tuple[slice, slice]
    core: tuple[slice, slice]
    inner: tuple[slice, slice]


def _spans(length: int, tiling: Tiling) -> list[tuple[slice, slice, slice]]:
    margin, core = tiling._aligned(tiling.margin), tiling.core
    spans = []
    for start in range(0, length, core):
        stop = min(start + core, length)
        low, high = max(start - margin, 0), min(stop + margin, length)
        spans.append((slice(low, high), slice(start, stop), slice(start - low, stop - low)))
    return spans


def tile_windows(shape: Sequence[int], tiling: Tiling) -> list[Window]:
    """The tiles of an image of shape (H, W[, C]), row by row.

    Returns
    -------
    list of Window
        The cores partition the image; a tile is its core with ``tiling.margin`` pixels around it
        (fewer at the image border), and starts at a multiple of ``tiling.align``.
    """
    rows, columns = _spans(int(shape[0]), tiling), _spans(int(shape[1]), tiling)
    return [Window((ry, rx), (cy, cx), (iy, ix)) for ry, cy, iy in rows for rx, cx, ix in columns]


class LazyImage:
    """A large image normalised, and perturbed, one tile at a time as tiles are read.

    The whole image's normalisation bounds (and, for a ``contrast`` perturbation, its mean) are
    computed once, and applied to each tile exactly as to the whole image
    (:func:`cte_kit.data.images.rescale`), so memory holds the raw image, not float copies of it.

    Parameters
    ----------
    raw : (H, W) or (H, W, C) ndarray
        The checked image, any real dtype.
    bounds : (p_low, p_high) or None
        Percentile bounds of :func:`cte_kit.data.images.normalize_percentile`; None converts to
        float32 only.
    perturb : callable (tile, tile index) -> tile, optional
        Applied to each normalised tile (an input perturbation).
    """

    def __init__(self, raw: np.ndarray, bounds, perturb=None):
        self.raw, self.bounds, self._perturb = raw, bounds, perturb
        self.shape, self.ndim = raw.shape, raw.ndim

    def __getitem__(self, index) -> np.ndarray:
        from ..data.images import rescale

        tile = rescale(self.raw[index], *self.bounds) if self.bounds is not None else self.raw[index].astype(np.float32)
        return self._perturb(tile, index) if self._perturb is not None else tile

    def perturbed(self, perturb) -> "LazyImage":
        """The same image with ``perturb(tile, index)`` applied to each normalised tile."""
        return LazyImage(self.raw, self.bounds, perturb)

    def mean(self, rows: int = 256) -> float:
        """Mean of the normalised image, summed in float64 over bands of ``rows`` rows."""
        total = sum(float(self[start:start + rows].sum(dtype=np.float64)) for start in range(0, self.shape[0], rows))
        return total / float(np.prod(self.shape))


def _smallest_ids(largest: int) -> type:
    """The label type of stitched ids up to ``largest``: uint16 while it holds them, else int32."""
    return np.uint16 if largest <= np.iinfo(np.uint16).max else np.int32


class Stitcher:
    """One prediction of a whole image, assembled from the predictions of its tiles as they come.

    Parameters
    ----------
    shape : (H, W)
    probability : bool
        Whether to stitch the tiles' probability maps when they have labels too (False: the
        stitched prediction has labels only; a tile without labels always gives its map).

    Notes
    -----
    Tiles must come in the order of :func:`tile_windows` (row by row). ``probability`` (float32) and the
    foreground are pasted from the cores. The objects of a core are numbered after those of the
    earlier tiles, in the order of their tile's labels; across a seam, two 8-connected pixels are
    one object when the later tile, which sees both with the full margin of context, gives them
    one label.
    """

    def __init__(self, shape: tuple[int, int], probability: bool = True):
        self.shape = (int(shape[0]), int(shape[1]))
        self._keep_probability = probability
        self.probability: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._next = 1
        self._joined: list[np.ndarray] = []  # (2, n) pairs of ids that are one object

    def add(self, window: Window, tile: Prediction) -> None:
        """Take one tile's prediction (its arrays have the shape of ``window.tile``)."""
        if tile.probability is not None and (self._keep_probability or tile.labels is None):
            if self.probability is None:
                self.probability = np.zeros(self.shape, np.float32)
            self.probability[window.core] = tile.probability[window.inner]
        if tile.labels is None:
            return
        tile_labels = np.asarray(tile.labels)
        core = tile_labels[window.inner]
        ids = np.unique(core)
        ids = ids[ids > 0]
        largest = self._next - 1 + ids.size
        if self.labels is None:
            self.labels = np.zeros(self.shape, _smallest_ids(largest))
        elif largest > np.iinfo(self.labels.dtype).max:
            self.labels = self.labels.astype(np.int32)  # more ids than uint16 holds: widened once
        # the core's objects get the next ids, in the order of their tile ids
        self.labels[window.core] = np.where(core > 0, np.searchsorted(ids, core) + self._next, 0)
        self._next += ids.size
        (top, left), origin = (window.core[0].start, window.core[1].start), (window.tile[0].start, window.tile[1].start)
        rows, columns = window.core
        # the seams above and to the left: the tiles there came first (row by row)
        if top > 0 and top > origin[0]:
            self._join(tile_labels, origin, np.full(columns.stop - columns.start, top), np.arange(columns.start, columns.stop),
                       (-1, 0))
        if left > 0 and left > origin[1]:
            self._join(tile_labels, origin, np.arange(rows.start, rows.stop), np.full(rows.stop - rows.start, left),
                       (0, -1))

    def _join(self, tile_labels: np.ndarray, origin: tuple[int, int], rows: np.ndarray, columns: np.ndarray,
              across: tuple[int, int]) -> None:
        """Pairs of stitched ids that the tile puts in one object, across one seam (8-connected)."""
        height, width = tile_labels.shape
        for shift in (-1, 0, 1):
            other_rows = rows + across[0] + (shift if across[0] == 0 else 0)
            other_columns = columns + across[1] + (shift if across[1] == 0 else 0)
            inside = ((other_rows - origin[0] >= 0) & (other_rows - origin[0] < height) & (other_columns - origin[1] >= 0)
                      & (other_columns - origin[1] < width))
            here = tile_labels[rows[inside] - origin[0], columns[inside] - origin[1]]
            there = tile_labels[other_rows[inside] - origin[0], other_columns[inside] - origin[1]]
            same = (here > 0) & (here == there)
            ours = self.labels[rows[inside][same], columns[inside][same]]
            theirs = self.labels[other_rows[inside][same], other_columns[inside][same]]
            both = (ours > 0) & (theirs > 0)
            if both.any():
                self._joined.append(np.stack([ours[both], theirs[both]]))

    def result(self) -> Prediction:
        """The whole image's prediction, once every tile was added; objects numbered 1..N.

        The labels are uint16 while N < 65 536 (a large image's labels take half the memory of
        int32), int32 beyond.
        """
        if self.labels is not None:
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components

            pairs = np.concatenate(self._joined, axis=1) if self._joined else np.zeros((2, 0), np.int64)
            graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(self._next, self._next))
            _, component = connected_components(graph, directed=False)
            present = np.arange(self._next) > 0  # every id below _next was written into a core
            roots = np.unique(component[present])
            kind = _smallest_ids(len(roots))
            lookup = np.zeros(self._next, kind)
            lookup[present] = np.searchsorted(roots, component[present]).astype(kind) + 1
            # band by band: a whole-image take copies the labels twice
            numbered = self.labels if self.labels.dtype == kind else np.empty(self.shape, kind)
            for start in range(0, self.shape[0], 256):
                numbered[start:start + 256] = lookup[self.labels[start:start + 256]]
            self.labels = numbered
            self._joined = []
        return Prediction(probability=self.probability, labels=self.labels)

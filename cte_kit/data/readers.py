"""Readers: turn an unpacked public dataset into 2D images and labels.

A reader handles one archive *layout* and is configured by the dataset's entry in
``data_registry.yaml`` (``reader:`` picks a function of :data:`READERS`, ``reader_args:`` and the split
give its keyword arguments). A reader only lists :class:`Sample` objects, which load lazily; then
:func:`select_samples` picks a split and :func:`to_patches` cuts each sample into the 2D images the
kit works on:

* 3D volumes become z-slices;
* with ``tile`` set (3D data in the paper), every slice is cut into non-overlapping ``tile x tile``
  patches starting at the top-left corner. A remainder narrower than ``tile`` at the right or bottom
  edge is dropped, so every patch has the same shape and none is padded (padding would add flat
  regions that change a consistency score); a slice smaller than ``tile`` is kept whole;
* only patches (or whole images) whose labels contain foreground are kept, as in the paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import imageio.v3 as iio
import numpy as np
import tifffile
from skimage.measure import label as connected_components_of

from .images import check_image, check_labels

__all__ = [
    "READERS",
    "IMAGE_SUFFIXES",
    "ArchiveLayoutError",
    "Sample",
    "read_array",
    "natural_key",
    "paired_files",
    "h5_volumes",
    "npz_arrays",
    "select_samples",
    "to_patches",
]

#: File types read as images or label images.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class ArchiveLayoutError(FileNotFoundError):
    """An unpacked archive lacks the files its registry entry expects (the host may have changed it)."""


@dataclass(frozen=True)
class Sample:
    """One image (or volume) of a dataset, read only when :attr:`load` is called.

    Attributes
    ----------
    name : str
        Unique within the dataset; patch names derive from it.
    load : callable
        ``load() -> (image, labels)``: arrays of shape (H, W) or (H, W, 3) and (H, W), or with
        ``volume`` both (Z, H, W).
    volume : bool
        The arrays are 3D stacks to be cut into z-slices.
    """

    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    volume: bool = False


def read_array(path) -> np.ndarray:
    """Read one image file: TIFF with tifffile, PNG / JPEG with imageio.

    Raises
    ------
    ValueError
        The file is corrupt, truncated or in a format that cannot be decoded; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot read {path}: it is a folder, not an image file")
    try:
        array = tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else iio.imread(path)
    # Whatever a decoder raises means the file cannot be decoded: tifffile raises ValueError subclasses,
    # Pillow OSError for truncated files and SyntaxError for broken PNG chunks, imagecodecs RuntimeError
    # subclasses (a truncated deflate stream), zlib its own error.
    except Exception as error:
        raise ValueError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    # tifffile only logs a warning for a file whose header points nowhere, and returns no pixels.
    if array.size == 0:
        raise ValueError(f"cannot read {path}: it holds no pixels (corrupt or truncated file?)")
    return array


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value: ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _last_number(stem: str) -> int:
    numbers = re.findall(r"\d+", stem)
    if not numbers:
        raise ValueError(f"'{stem}' contains no number to match or select slices by")
    return int(numbers[-1])


def _glob(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` under ``root``, naturally sorted; an explicit error when there are none."""
    paths = sorted((p for p in root.glob(pattern) if p.is_file()), key=lambda p: natural_key(str(p)))
    if paths:
        return paths
    # Name the deepest folder of the expected path that does exist, and what it holds, so a changed
    # archive layout is easy to diagnose.
    existing = root
    for part in Path(pattern).parent.parts:
        if not (existing / part).is_dir():
            break
        existing = existing / part
    entries = sorted(p.name for p in existing.iterdir()) if existing.is_dir() else []
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") if entries else "nothing"
    raise ArchiveLayoutError(
        f"expected files matching '{pattern}' in {root}, found none ({existing} holds: {shown}). "
        "The archive layout may have changed upstream: compare with the registry entry's reader_args, "
        "or delete the dataset's cache folder and fetch it again."
    )


def _as_list(patterns: str | Sequence[str]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _pair_files(images: list[Path], labels: list[Path], match: str) -> list[tuple[Path, Path | None]]:
    """Pair image and label files by stem, by the last number in the stem, or by stem prefix."""
    if match == "prefix":
        pairs = []
        for image in images:
            candidates = [lab for lab in labels if lab.stem.startswith(image.stem)]
            if len(candidates) > 1:
                raise ValueError(f"several label files start with '{image.stem}': "
                                 f"{', '.join(c.name for c in candidates)}")
            pairs.append((image, candidates[0] if candidates else None))
        return pairs
    key = {"stem": lambda p: p.stem, "number": lambda p: _last_number(p.stem)}[match]
    by_key = {}
    for lab in labels:
        if key(lab) in by_key:
            raise ValueError(f"label files {by_key[key(lab)].name} and {lab.name} share the {match} {key(lab)!r}")
        by_key[key(lab)] = lab
    return [(image, by_key.get(key(image))) for image in images]


def decode_labels(labels: np.ndarray, label_decode: str = "ids", foreground_above: float | None = None,
                  connected_components: bool = False) -> np.ndarray:
    """Turn a label file's array into one integer label per pixel.

    Parameters
    ----------
    labels : ndarray, shape (H, W), (H, W, C) or (Z, H, W)
    label_decode : {"ids", "first_channel", "colours"}
        ``ids``: the array already holds labels. ``first_channel``: take channel 0 of an RGB(A) mask
        (grey masks pass). ``colours``: one RGB colour per object, black background, 2D only.
    foreground_above : float, optional
        Foreground is ``labels > foreground_above`` (binary masks with anti-aliased edges).
    connected_components : bool
        Split every label into its connected components.

    Returns
    -------
    ndarray of int, same spatial shape
    """
    if label_decode == "first_channel":
        labels = labels[..., 0] if labels.ndim == 3 and labels.shape[-1] in (3, 4) else labels
    elif label_decode == "colours":
        if labels.ndim != 3:
            raise ValueError(f"label_decode 'colours' needs RGB label images, got shape {labels.shape}")
        rgb = labels[..., :3].reshape(-1, 3)
        colours, ids = np.unique(rgb, axis=0, return_inverse=True)
        # np.unique sorts colours, so black (background) comes first when present.
        ids = ids.reshape(labels.shape[:2]) + (0 if not colours[0].any() else 1)
        labels = ids
    elif label_decode != "ids":
        raise ValueError(f"unknown label_decode '{label_decode}' (ids, first_channel or colours)")
    if foreground_above is not None:
        labels = (labels > foreground_above).astype(np.uint8)
    if connected_components:
        labels = connected_components_of(labels)
    return labels


def paired_files(root: Path, images: str, labels: str | Sequence[str], match: str = "stem",
                 volume: bool = False, image_channel: int | None = None, label_decode: str = "ids",
                 foreground_above: float | None = None, connected_components: bool = False,
                 unlabelled: str = "error") -> list[Sample]:
    """One image file and one label file per sample (folders of TIFF / PNG files).

    Parameters
    ----------
    root : Path
        The dataset's cache folder; patterns are relative to it.
    images : str
        Glob pattern of the image files.
    labels : str or list of str
        Glob pattern(s) of the label files.
    match : {"stem", "number", "prefix"}
        Pair by equal file stem, by the last number in the stem (``mask0007.png`` with ``7.png``), or
        with the label whose stem starts with the image's stem.
    volume : bool
        Files are 3D stacks (Z, H, W).
    image_channel : int, optional
        Keep only this channel of colour images.
    label_decode, foreground_above, connected_components
        See :func:`decode_labels`.
    unlabelled : {"error", "skip"}
        What to do with images that have no label file.

    Returns
    -------
    list of Sample
        Named by image stem.
    """
    image_paths = [p for pattern in _as_list(images) for p in _glob(root, pattern)]
    label_paths = [p for pattern in _as_list(labels) for p in _glob(root, pattern)]
    pairs = _pair_files(image_paths, label_paths, match)
    missing = [image.name for image, lab in pairs if lab is None]
    if missing and unlabelled == "error":
        raise ArchiveLayoutError(f"{len(missing)} image(s) have no label file among {labels}: "
                                 f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")

    def loader(image_path: Path, label_path: Path):
        def load():
            image = read_array(image_path)
            if image_channel is not None and image.ndim == 3 and not volume:
                image = image[..., image_channel]
            lab = decode_labels(read_array(label_path), label_decode, foreground_above, connected_components)
            if lab.shape != image.shape[: lab.ndim]:
                raise ValueError(f"{label_path.name}: labels of shape {lab.shape} do not match "
                                 f"{image_path.name} of shape {image.shape}")
            return image, lab
        return load

    return [Sample(image.stem, loader(image, lab), volume) for image, lab in pairs if lab is not None]


def _require_h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError("reading .h5 datasets needs h5py, which cte_kit does not install by default: "
                          "pip install h5py") from error
    return h5py


def h5_volumes(root: Path, files: str, image_key: str, label_key: str) -> list[Sample]:
    """One HDF5 file per 3D sample, with the image and the labels under two keys.

    Parameters
    ----------
    root : Path
    files : str
        Glob pattern of the ``.h5`` files.
    image_key, label_key : str
        Dataset paths inside each file, e.g. ``raw`` and ``label``.
    """
    h5py = _require_h5py()

    def loader(path: Path):
        def load():
            with h5py.File(path, "r") as handle:
                for key in (image_key, label_key):
                    if key not in handle:
                        raise ArchiveLayoutError(f"{path} has no dataset '{key}' (it has: {', '.join(handle)})")
                return handle[image_key][()], handle[label_key][()]
        return load

    return [Sample(path.stem, loader(path), volume=True) for path in _glob(root, files)]


def npz_arrays(root: Path, file: str, image_key: str, label_key: str) -> list[Sample]:
    """A NumPy ``.npz`` archive holding a stack of 2D images and a stack of labels, shape (N, H, W).

    Samples are named ``<file stem>_<index>``. Both stacks are read at once (such files are small).
    """
    path = _glob(root, file)[0]
    with np.load(path) as arrays:
        for key in (image_key, label_key):
            if key not in arrays:
                raise ArchiveLayoutError(f"{path} has no array '{key}' (it has: {', '.join(arrays.files)})")
        images, labels = arrays[image_key], arrays[label_key]
    if images.shape[: labels.ndim] != labels.shape:
        raise ValueError(f"{path}: '{image_key}' of shape {images.shape} and '{label_key}' of shape "
                         f"{labels.shape} differ")
    return [Sample(f"{path.stem}_{i:04d}", lambda i=i: (images[i], labels[i])) for i in range(len(images))]


#: Reader functions by the name used in ``data_registry.yaml``.
READERS: dict[str, Callable[..., list[Sample]]] = {
    "paired_files": paired_files,
    "h5_volumes": h5_volumes,
    "npz_arrays": npz_arrays,
}


def select_samples(samples: list[Sample], root: Path, stems_file: str | None = None,
                   numbers: Sequence[int] | None = None, fraction: Sequence[float] | None = None,
                   exclude: Sequence[str] = ()) -> list[Sample]:
    """Pick a split from a reader's samples, naturally sorted by name.

    Parameters
    ----------
    samples : list of Sample
    root : Path
        The dataset's cache folder (``stems_file`` is relative to it).
    stems_file : str, optional
        Text file listing one file name per line; samples whose name is a listed stem are kept.
    numbers : (start, stop), optional
        Keep samples whose name ends in a number in ``[start, stop)`` (slice indices).
    fraction : (low, high), optional
        Keep the samples from ``round(low * n)`` to ``round(high * n)`` in sorted order.
    exclude : list of str
        Sample names to drop.
    """
    excluded = set(exclude)
    chosen = sorted((s for s in samples if s.name not in excluded), key=lambda s: natural_key(s.name))
    if stems_file is not None:
        lines = _glob(root, stems_file)[0].read_text().splitlines()
        listed = {Path(line.strip()).stem for line in lines if line.strip()}
        missing = sorted(listed - {s.name for s in chosen})
        if missing:
            raise ArchiveLayoutError(f"{len(missing)} sample(s) listed in {stems_file} were not found: "
                                     f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
        chosen = [s for s in chosen if s.name in listed]
    if numbers is not None:
        start, stop = numbers
        chosen = [s for s in chosen if start <= _last_number(s.name) < stop]
    if fraction is not None:
        low, high = fraction
        chosen = chosen[round(low * len(chosen)) : round(high * len(chosen))]
    return chosen


def _task_labels(labels: np.ndarray, task: str) -> np.ndarray:
    """Semantic: uint8 0/1. Instance: object ids as uint16, or a wider unsigned type when needed."""
    if task == "semantic":
        return (labels > 0).astype(np.uint8)
    return labels.astype(np.promote_types(np.min_scalar_type(labels.max(initial=0)), np.uint16))


def _windows(name: str, shape: tuple[int, int], tile: int | None) -> Iterator[tuple[str, tuple[slice, slice]]]:
    """Named windows of a 2D image: the whole image, or the full ``tile x tile`` patches (remainders dropped)."""
    if tile is None:
        yield name, (slice(None), slice(None))
        return
    # range(0, max(n - tile, 0) + 1, tile) keeps an image smaller than the tile as one window.
    for y in range(0, max(shape[0] - tile, 0) + 1, tile):
        for x in range(0, max(shape[1] - tile, 0) + 1, tile):
            yield f"{name}_y{y:04d}_x{x:04d}", (slice(y, y + tile), slice(x, x + tile))


def to_patches(sample: Sample, tile: int | None, task: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Load a sample and yield its non-empty 2D patches.

    Parameters
    ----------
    sample : Sample
    tile : int or None
        Patch size; ``None`` keeps 2D images (and z-slices) whole.
    task : {"semantic", "instance"}

    Yields
    ------
    name : str
        ``<sample>[_z<z>][_y<y>_x<x>]``.
    image : ndarray, shape (h, w) or (h, w, 3), the file's dtype
    labels : ndarray of uint8 (semantic, 0/1) or uint16 / uint32 (instance ids), shape (h, w)
    """
    image, labels = sample.load()
    if sample.volume:
        if image.ndim != 3 or labels.shape != image.shape:
            raise ValueError(f"{sample.name}: expected two 3D stacks of equal shape, "
                             f"got {image.shape} and {labels.shape}")
        slices = [(f"{sample.name}_z{z:03d}", image[z], labels[z]) for z in range(image.shape[0])]
    else:
        slices = [(sample.name, image, labels)]
    for name, image_2d, labels_2d in slices:
        image_2d = check_image(image_2d, name=name)
        labels_2d = _task_labels(check_labels(labels_2d, image_2d.shape, name=name), task)
        for patch_name, window in _windows(name, image_2d.shape[:2], tile):
            if labels_2d[window].any():
                # Copies, so that a kept patch does not hold on to a whole (possibly 4096x4096) slice.
                yield patch_name, np.ascontiguousarray(image_2d[window]), np.ascontiguousarray(labels_2d[window])

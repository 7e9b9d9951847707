"""The user's own data: a folder of 2D images, optionally a folder of label images with the same stems."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import measure
from tqdm.auto import tqdm

from ..types import CTEKitWarning
from .images import check_image, check_labels
from .readers import IMAGE_SUFFIXES, natural_key, read_array

__all__ = ["FolderData", "load_folder"]


@dataclass(frozen=True)
class FolderData:
    """Images (and labels) read from folders.

    Attributes
    ----------
    images : list of ndarray, shape (H, W) or (H, W, 3)
        The files' dtype; an alpha channel is dropped.
    labels : list of ndarray, shape (H, W), or None
        Integer files keep their dtype; boolean and integer-valued float files become int64.
        ``None`` when no label folder was given. A warning names label images that are masks
        exported as images (a 0/255 PNG: mAP counts each one's foreground as one object) and label
        images without any object.
    names : list of str
        File stems, naturally sorted (``img2`` before ``img10``); all lists follow this order.
    image_paths : list of Path
    label_paths : list of Path or None
    """

    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    names: list[str]
    image_paths: list[Path]
    label_paths: list[Path] | None


def _folder(path, role: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{role} folder {folder} does not exist" if not folder.exists()
                                else f"{role} path {folder} is not a folder")
    return folder


def _image_files(folder: Path, pattern: str | None) -> dict[str, Path]:
    """Supported image files of a folder by stem; two files with one stem are an error."""
    candidates = folder.glob(pattern) if pattern else folder.iterdir()
    paths = sorted((p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.stem))
    by_stem: dict[str, Path] = {}
    for path in paths:
        if path.stem in by_stem:
            raise ValueError(f"{by_stem[path.stem].name} and {path.name} in {folder} share the stem "
                             f"'{path.stem}': labels are matched by stem, keep one of them")
        by_stem[path.stem] = path
    return by_stem


def _read_labels(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    raw = read_array(path)
    checked = check_labels(raw, image_shape, name=path.name)
    return raw if np.issubdtype(raw.dtype, np.integer) else checked


def _warn_about_labels(labels: list[np.ndarray], paths: list[Path]) -> None:
    """Name the label images that are masks exported as images (one value such as 255 in several regions) and
    those without any object: both give instance metrics that mean little, without an error."""
    masks, empty = [], []
    for array, path in zip(labels, paths):
        values = np.unique(array)
        if values.size == 1 and values[0] == 0:
            empty.append(path.name)
        elif values.size == 2 and values[0] == 0 and values[1] != 1 and measure.label(array > 0).max() > 1:
            masks.append(f"{path.name} (value {int(values[1])})")
    if masks:
        warnings.warn(f"{len(masks)} label image(s) are masks, not instance labels: {', '.join(masks[:5])}"
                      f"{', ...' if len(masks) > 5 else ''}. F1 and IoU read their foreground, but mAP counts the "
                      "whole foreground of each as one object; give one id per object for mAP.", CTEKitWarning,
                      stacklevel=3)
    if empty:
        warnings.warn(f"{len(empty)} label image(s) hold no object: {', '.join(empty[:5])}"
                      f"{', ...' if len(empty) > 5 else ''}. A model that finds anything there scores F1 and mAP 0 "
                      "on them; check that these are the labels you mean.", CTEKitWarning, stacklevel=3)


def load_folder(images, labels=None, pattern: str | None = None, progress: bool = True) -> FolderData:
    """Read a folder of 2D images (.tif, .tiff, .png, .jpg) and, optionally, their label images.

    Parameters
    ----------
    images : str or Path
        Folder of images. Subfolders are not searched.
    labels : str or Path, optional
        Folder of label images (0 = background); the label of ``a.tif`` is the file with stem ``a``
        (any supported suffix). Label files without an image are ignored with a warning (unless
        ``pattern`` selects a subset of the images on purpose).
    pattern : str, optional
        Glob pattern selecting image files, e.g. ``"*_dapi.tif"`` (default: every supported file).
    progress : bool
        Show a progress bar while reading.

    Returns
    -------
    FolderData

    Raises
    ------
    FileNotFoundError
        A folder does not exist.
    ValueError
        No images; images without labels (their stems are listed); two files with one stem; an
        unreadable or corrupt file, a 3D stack, or labels whose shape differs from the image's
        (the file is named).
    """
    image_dir = _folder(images, "images")
    image_files = _image_files(image_dir, pattern)
    if not image_files:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise ValueError(f"no images ({suffixes}) in {image_dir}" + (f" matching '{pattern}'" if pattern else ""))
    names = list(image_files)

    label_files = None
    if labels is not None:
        label_dir = _folder(labels, "labels")
        available = _image_files(label_dir, None)
        missing = [stem for stem in names if stem not in available]
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise ValueError(f"labels missing for stems: {shown} (looked for files with these stems in {label_dir})")
        extra = sorted(set(available) - set(names), key=natural_key)
        if extra and pattern is None:
            warnings.warn(f"{len(extra)} label file(s) in {label_dir} have no image and are ignored: "
                          f"{', '.join(extra[:10])}.", CTEKitWarning, stacklevel=2)
        label_files = [available[stem] for stem in names]

    loaded_images, loaded_labels = [], []
    for i, stem in enumerate(tqdm(names, desc=f"reading {image_dir.name}", unit="image", disable=not progress)):
        image = check_image(read_array(image_files[stem]), name=image_files[stem].name)
        loaded_images.append(image)
        if label_files is not None:
            loaded_labels.append(_read_labels(label_files[i], image.shape))
    if label_files is not None:
        _warn_about_labels(loaded_labels, label_files)
    return FolderData(
        images=loaded_images,
        labels=loaded_labels if label_files is not None else None,
        names=names,
        image_paths=list(image_files.values()),
        label_paths=label_files,
    )

"""Images in: checking and normalisation, synthetic domains, folders, public datasets."""

from .images import check_image, check_labels, normalize_percentile, to_grey
from .folder import FolderData, load_folder
from .registry import (Dataset2D, DownloadError, HashMismatchError, export_mirror, fetch, fetch_all, list_datasets,
                       load_dataset)

__all__ = [
    "check_image",
    "check_labels",
    "normalize_percentile",
    "to_grey",
    "FolderData",
    "load_folder",
    "Dataset2D",
    "DownloadError",
    "HashMismatchError",
    "export_mirror",
    "fetch",
    "fetch_all",
    "list_datasets",
    "load_dataset",
]

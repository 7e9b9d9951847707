"""Images in: checking and normalisation, synthetic domains, folders, public datasets."""

from .images import check_image, check_labels, normalize_percentile, to_grey

__all__ = ["check_image", "check_labels", "normalize_percentile", "to_grey"]

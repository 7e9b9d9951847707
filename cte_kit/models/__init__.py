"""Model adapters: one protocol (:class:`SegmentationModel`), one class per framework."""

from .bank import BankEntry, load_bank, load_model, read_bank, write_bank
from ._common import PretrainedDownloadError
from .base import NotGreyBoxError, SegmentationModel

__all__ = [
    "BankEntry",
    "NotGreyBoxError",
    "PretrainedDownloadError",
    "SegmentationModel",
    "load_bank",
    "load_model",
    "read_bank",
    "write_bank",
]

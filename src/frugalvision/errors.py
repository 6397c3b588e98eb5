"""Exceptions raised by frugalvision.

Every error a user can cause derives from :class:`FrugalVisionError`, so the command line can print it as
one clear sentence instead of a traceback. The subclasses also derive from the matching built-in
exception (``ValueError``, ``FileNotFoundError``...) so ordinary ``except`` clauses keep working.
"""

from __future__ import annotations


class FrugalVisionError(Exception):
    """Base class of all errors caused by user input or the environment."""


class DataError(FrugalVisionError, ValueError):
    """A data set, manifest or annotation file is malformed; the message names the file and line/field."""


class ImageFileMissingError(FrugalVisionError, FileNotFoundError):
    """An image referenced by a data set does not exist."""


class CorruptImageError(FrugalVisionError, OSError):
    """An image exists but cannot be decoded (truncated, not an image, decompression bomb...)."""


class ImageTooLargeError(CorruptImageError):
    """An image refused for its size before its pixels are decoded: more pixels than allowed (a possible
    decompression bomb), an extreme aspect ratio, or a size that preprocessing would resize it to that is over the
    pixel limit (HTTP 413 in the service)."""


class UnsupportedImageError(CorruptImageError):
    """The data are not an image, or an image in a format that is not accepted (HTTP 415)."""


class ImageTooSmallError(FrugalVisionError, ValueError):
    """An image has fewer pixels per side than one feature patch; the message names the file."""


class WeightsError(FrugalVisionError, RuntimeError):
    """Pretrained weights were asked for and could not be loaded (offline, missing file, mismatch)."""


class ConfigError(FrugalVisionError, ValueError):
    """A configuration key is unknown or its value is invalid; the message names the key (and the file)."""


class StoreError(FrugalVisionError, ValueError):
    """An embedding store or index on disk is missing, inconsistent or incompatible with the request."""


class CheckpointError(FrugalVisionError, ValueError):
    """A training checkpoint cannot be read safely: truncated, corrupt, or holding objects other than tensors."""


class ExportError(FrugalVisionError, RuntimeError):
    """The model could not be exported, or the exported model disagrees with PyTorch."""


class UnsupportedModelError(FrugalVisionError, ValueError):
    """A model transformation (e.g. Token Merging) does not apply to this architecture; the message says why."""


class DataWarning(UserWarning):
    """Something in the data was skipped or looks wrong but work could go on (e.g. corrupt images skipped)."""

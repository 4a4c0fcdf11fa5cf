"""Every error structvpr raises for bad input a user can fix: one module, one base class.

Each names the file or setting at fault and what to do; :class:`StructVPRInputError` catches them all.
"""

from __future__ import annotations


class StructVPRInputError(ValueError):
    """Bad input a user can fix (a file, a folder, a checkpoint); the message names it and the fix."""


class ImageReadError(StructVPRInputError):
    """An RGB image is missing or cannot be decoded."""


class LabelMapError(StructVPRInputError):
    """A label map is missing, unreadable or holds ids outside the taxonomy."""


class DatasetLayoutError(StructVPRInputError):
    """A dataset folder does not follow the expected layout."""


class CheckpointMismatchError(StructVPRInputError):
    """A checkpoint holds another model class, architecture or normalisation than the run needs."""

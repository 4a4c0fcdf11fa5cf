"""Every error structvpr raises for bad input a user can fix: one module, one base class.

Each names the file or setting at fault and what to do; :class:`StructVPRInputError` catches them all.
"""

from __future__ import annotations

import re


class StructVPRInputError(ValueError):
    """Bad input a user can fix (a file, a folder, a checkpoint); the message names it and the fix."""


class ImageReadError(StructVPRInputError):
    """An RGB image is missing or cannot be decoded."""


class LabelMapError(StructVPRInputError):
    """A label map is missing, unreadable or holds ids outside the taxonomy."""


class MissingLabelMapError(LabelMapError, FileNotFoundError):
    """An image has no label map where the run needs one."""


class MissingFolderError(StructVPRInputError, FileNotFoundError):
    """A folder the run reads does not exist."""


class DatasetLayoutError(StructVPRInputError):
    """A dataset folder does not follow the expected layout."""


class CheckpointMismatchError(StructVPRInputError):
    """A checkpoint holds another model class, architecture or normalisation than the run needs."""


class MissingCheckpointError(StructVPRInputError, FileNotFoundError):
    """A checkpoint the command names does not exist (or ``last.ckpt`` points at nothing)."""


#: Set (to anything but ``0``) to print the traceback behind a user error (or pass ``--debug``).
DEBUG_ENV = "STRUCTVPR_DEBUG"


def user_error_message(err: BaseException) -> str:
    """The message of a user error, without the traceback a DataLoader worker wraps around it."""
    text = str(err)
    marker = "Original Traceback (most recent call last):"
    if marker in text:  # re-raised from a worker: the last line is "<Class>: <message>"
        last = [line for line in text.split(marker, 1)[1].splitlines() if line.strip()][-1]
        text = re.sub(rf"^[\w.]*{type(err).__name__}: ", "", last)
    return text

"""Typed access to what Lightning attaches to the trainer at run time."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def datamodule_of(trainer: pl.Trainer) -> Any:
    """The trainer's datamodule (None without one); Lightning's type stubs do not declare it."""
    return getattr(trainer, "datamodule", None)

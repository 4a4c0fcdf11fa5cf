"""structvpr: StructVPR visual place recognition with PyTorch Lightning."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so that loading the RGB student never imports the
# teacher, the data pipeline or the training callbacks.
_EXPORTS = {
    "ClassGrouping": "structvpr.data.labels",
    "PlaceDataModule": "structvpr.data.places",
    "PlaceEncoder": "structvpr.models.encoder",
    "PlaceDistillation": "structvpr.tasks.place_distill",
    "PlaceStudent": "structvpr.tasks.place",
    "PlaceTeacher": "structvpr.tasks.place",
    "RecallAtN": "structvpr.metrics.recall",
    "SegTeacher": "structvpr.tasks.teacher",
    "StructVPRDistillation": "structvpr.tasks.distill",
    "StructVPRStudent": "structvpr.tasks.student",
    "VPRDataModule": "structvpr.data.datamodule",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'structvpr' has no attribute {name!r}")

"""LightningModules: the seg teacher, the RGB student (baseline), distillation, place-batch training."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VPRTask": "structvpr.tasks.base",
    "SegTeacher": "structvpr.tasks.teacher",
    "StructVPRStudent": "structvpr.tasks.student",
    "StructVPRDistillation": "structvpr.tasks.distill",
    "PlaceStudent": "structvpr.tasks.place",
    "PlaceTeacher": "structvpr.tasks.place",
    "PlaceDistillation": "structvpr.tasks.place_distill",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the student does not import the teacher.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'structvpr.tasks' has no attribute {name!r}")

"""LightningModules: the seg teacher, the RGB student (baseline) and weighted distillation."""

from structvpr.tasks.base import VPRTask
from structvpr.tasks.distill import StructVPRDistillation
from structvpr.tasks.student import StructVPRStudent
from structvpr.tasks.teacher import SegTeacher

__all__ = ["SegTeacher", "StructVPRDistillation", "StructVPRStudent", "VPRTask"]

"""structvpr: StructVPR visual place recognition with PyTorch Lightning."""

from structvpr.data import ClassGrouping, VPRDataModule
from structvpr.metrics import RecallAtN
from structvpr.models import PlaceEncoder
from structvpr.tasks import SegTeacher, StructVPRDistillation, StructVPRStudent

__version__ = "0.1.0"

__all__ = [
    "ClassGrouping", "PlaceEncoder", "RecallAtN", "SegTeacher", "StructVPRDistillation",
    "StructVPRStudent", "VPRDataModule", "__version__",
]  # fmt: skip

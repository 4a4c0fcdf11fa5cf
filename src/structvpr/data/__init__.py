"""Data: the synthetic world, VG-format reading, label-map encoding, datasets and datamodule."""

from structvpr.data.datamodule import VPRDataModule
from structvpr.data.datasets import ImageDataset, ImageReadError, TripletDataset, joint_transform
from structvpr.data.labels import ClassGrouping, LabelMapError, cityscapes_grouping
from structvpr.data.vg import DatasetLayoutError, read_split

__all__ = [
    "ClassGrouping",
    "DatasetLayoutError",
    "ImageDataset",
    "ImageReadError",
    "LabelMapError",
    "TripletDataset",
    "VPRDataModule",
    "cityscapes_grouping",
    "joint_transform",
    "read_split",
]

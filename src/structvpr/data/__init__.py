"""Data: the synthetic world, VG-format reading, label-map encoding, datasets, the triplet and place-batch datamodules."""

from structvpr.data.datamodule import VPRDataModule
from structvpr.data.datasets import ImageDataset, ImageReadError, TripletDataset, joint_transform
from structvpr.data.labels import ClassGrouping, LabelMapError, cityscapes_grouping
from structvpr.data.places import PlaceBatchDataset, PlaceDataModule
from structvpr.data.vg import DatasetLayoutError, read_split

__all__ = [
    "ClassGrouping",
    "DatasetLayoutError",
    "ImageDataset",
    "ImageReadError",
    "LabelMapError",
    "PlaceBatchDataset",
    "PlaceDataModule",
    "TripletDataset",
    "VPRDataModule",
    "cityscapes_grouping",
    "joint_transform",
    "read_split",
]

"""Callbacks: hard-negative mining, sample weighting, student export, retrieval pictures."""

from structvpr.callbacks.export import ExportStudent
from structvpr.callbacks.mining import HardNegativeMining
from structvpr.callbacks.pictures import RetrievalPictures
from structvpr.callbacks.predictions import PredictionWriter
from structvpr.callbacks.weighting import SampleWeighting

__all__ = ["ExportStudent", "HardNegativeMining", "PredictionWriter", "RetrievalPictures", "SampleWeighting"]

"""Callbacks: hard-negative mining, sample weighting, PCA-whitening, NetVLAD init, student export, retrieval pictures."""

from structvpr.callbacks.export import ExportStudent
from structvpr.callbacks.mining import HardNegativeMining
from structvpr.callbacks.netvlad import InitNetVLAD
from structvpr.callbacks.pca import FitPCAWhitening
from structvpr.callbacks.pictures import RetrievalPictures
from structvpr.callbacks.predictions import PredictionWriter
from structvpr.callbacks.weighting import SampleWeighting

__all__ = [
    "ExportStudent",
    "FitPCAWhitening",
    "HardNegativeMining",
    "InitNetVLAD",
    "PredictionWriter",
    "RetrievalPictures",
    "SampleWeighting",
]

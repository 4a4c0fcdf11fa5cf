"""Callbacks: mining, sample weighting, PCA-whitening, NetVLAD init, export, pictures, sub-epoch checkpoints."""

from structvpr.callbacks.checkpoint import SubEpochCheckpoint
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
    "SubEpochCheckpoint",
]

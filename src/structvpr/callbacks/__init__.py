"""Callbacks: mining, sample weighting (tuples, place batches), PCA-whitening, NetVLAD init, export, pictures, checkpoints."""

from structvpr.callbacks.checkpoint import SubEpochCheckpoint
from structvpr.callbacks.export import ExportStudent
from structvpr.callbacks.mining import HardNegativeMining
from structvpr.callbacks.netvlad import InitNetVLAD
from structvpr.callbacks.pca import FitPCAWhitening
from structvpr.callbacks.pictures import RetrievalPictures
from structvpr.callbacks.place_weighting import PlaceWeighting
from structvpr.callbacks.predictions import PredictionWriter
from structvpr.callbacks.weighting import SampleWeighting

__all__ = [
    "ExportStudent",
    "FitPCAWhitening",
    "HardNegativeMining",
    "InitNetVLAD",
    "PlaceWeighting",
    "PredictionWriter",
    "RetrievalPictures",
    "SampleWeighting",
    "SubEpochCheckpoint",
]

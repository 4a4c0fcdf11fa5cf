"""Plain nn.Modules: trunks, aggregators, PCA-whitening and the PlaceEncoder."""

from structvpr.models.aggregators import GeM, NetVLAD
from structvpr.models.backbones import SimpleCNN, TimmTrunk, Trunk, build_trunk
from structvpr.models.encoder import PlaceEncoder
from structvpr.models.pca import PCAWhitening

__all__ = ["GeM", "NetVLAD", "PCAWhitening", "PlaceEncoder", "SimpleCNN", "TimmTrunk", "Trunk", "build_trunk"]

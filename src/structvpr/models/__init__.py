"""Plain nn.Modules: trunks, aggregators, PCA-whitening, the PlaceEncoder and the TeacherStudent pair."""

from structvpr.models.aggregators import GeM, NetVLAD
from structvpr.models.backbones import SimpleCNN, TimmTrunk, Trunk, build_trunk
from structvpr.models.boq import BoQ
from structvpr.models.encoder import PlaceEncoder
from structvpr.models.mixvpr import MixVPR
from structvpr.models.pca import PCAWhitening
from structvpr.models.salad import SALAD
from structvpr.models.teacher_student import TeacherStudent
from structvpr.models.vit import ViTTrunk

__all__ = [
    "SALAD",
    "BoQ",
    "GeM",
    "MixVPR",
    "NetVLAD",
    "PCAWhitening",
    "PlaceEncoder",
    "SimpleCNN",
    "TeacherStudent",
    "TimmTrunk",
    "Trunk",
    "ViTTrunk",
    "build_trunk",
]

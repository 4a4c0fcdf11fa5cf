"""Plain nn.Modules: trunks, aggregators, PCA-whitening, the PlaceEncoder and the TeacherStudent pair."""

from structvpr.models.aggregators import GeM, NetVLAD
from structvpr.models.backbones import SimpleCNN, TimmTrunk, Trunk, build_trunk
from structvpr.models.encoder import PlaceEncoder
from structvpr.models.pca import PCAWhitening
from structvpr.models.teacher_student import TeacherStudent

__all__ = ["GeM", "NetVLAD", "PCAWhitening", "PlaceEncoder", "SimpleCNN", "TeacherStudent", "TimmTrunk", "Trunk", "build_trunk"]

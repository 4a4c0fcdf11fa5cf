"""PlaceEncoder: trunk, aggregator, L2 normalisation and optional PCA-whitening."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from structvpr.models.aggregators import GeM, NetVLAD
from structvpr.models.backbones import build_trunk
from structvpr.models.pca import PCAWhitening

#: A callable that builds a module from a channel count: a trunk from its input channels, an
#: aggregator from the trunk's output channels (from a config: a ``class_path`` whose first
#: init argument is that count).
ModuleFactory = Callable[[int], nn.Module]


class PlaceEncoder(nn.Module):
    """Image (or one-hot label map) to an L2-normalised global descriptor.

    Args:
        in_chans: Input channels: 3 for RGB, G for a one-hot label map.
        trunk: ``simple``, a timm model name (``vgg16`` is the paper's conv5_3 trunk), or a callable
            building a trunk from ``in_chans`` (see :func:`~structvpr.models.backbones.build_trunk`).
        aggregator: ``gem``, ``netvlad``, or any callable that builds an aggregator from the trunk's
            output channels, e.g. a class ``MyPool(channels, ...)``: the module maps ``(B, C, h, w)``
            to ``(B, D)`` and has ``output_dim(channels) -> D`` (from a config:
            ``aggregator: {class_path: my_package.MyPool, init_args: {...}}``, with
            ``channels`` filled in here; :class:`~structvpr.models.MixVPR`,
            :class:`~structvpr.models.SALAD` and :class:`~structvpr.models.BoQ` are such classes).
            An aggregator with ``uses_token = True`` (SALAD) gets ``(fmap, cls_token)`` from a
            trunk that has a CLS token.
        num_clusters: K of NetVLAD.
        pretrained_path: Local weight file for a timm trunk.
        pca_dim: Output size of PCA-whitening (identity until fitted, e.g. by
            :class:`~structvpr.callbacks.FitPCAWhitening`), None for none.

    """

    def __init__(
        self,
        in_chans: int = 3,
        trunk: str | ModuleFactory = "simple",
        aggregator: str | ModuleFactory = "gem",
        num_clusters: int = 64,
        pretrained_path: str | None = None,
        pca_dim: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(aggregator, str) and aggregator not in ("gem", "netvlad"):
            raise ValueError(f"aggregator must be 'gem', 'netvlad' or a callable building a module, got {aggregator!r}")
        self.trunk = build_trunk(trunk, in_chans, pretrained_path)
        channels = getattr(self.trunk, "out_channels", None)
        assert isinstance(channels, int)
        if aggregator == "gem":
            self.aggregator: nn.Module = GeM()
        elif aggregator == "netvlad":
            self.aggregator = NetVLAD(num_clusters, channels)
        else:
            assert callable(aggregator)
            self.aggregator = aggregator(channels)
        output_dim = getattr(self.aggregator, "output_dim", None)
        if not callable(output_dim):
            raise TypeError(f"{type(self.aggregator).__name__} needs an output_dim(channels) method")
        self.pooled_dim = int(output_dim(channels))
        self.pca = PCAWhitening(self.pooled_dim, pca_dim) if pca_dim is not None else None

    @property
    def descriptor_dim(self) -> int:
        """D, the size of the descriptor :meth:`forward` returns once PCA (if any) is fitted."""
        return self.pca.out_dim if self.pca is not None else self.pooled_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, C, h, w)`` trunk feature map (also used for re-ranking)."""
        return self.trunk(x)

    @property
    def passes_token(self) -> bool:
        """Whether the aggregator gets ``(fmap, cls_token)``: it declares ``uses_token`` and the trunk
        has a CLS token (``forward_with_token``, as :class:`~structvpr.models.ViTTrunk`)."""  # noqa: D205
        return bool(getattr(self.aggregator, "uses_token", False)) and hasattr(self.trunk, "forward_with_token")

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, pooled_dim)`` L2-normalised descriptor before PCA."""
        if self.passes_token:
            with_token = cast(Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], self.trunk.forward_with_token)
            return F.normalize(self.aggregator(with_token(x)), dim=-1)
        return F.normalize(self.aggregator(self.features(x)), dim=-1)

    def describe(self, fmap: torch.Tensor) -> torch.Tensor:
        """The :meth:`forward` descriptor from an already computed feature map ``(B, C, h, w)``."""
        if self.passes_token:
            raise ValueError(
                f"{type(self.aggregator).__name__} reads the trunk's CLS token, which a feature map alone "
                "does not carry: describe images with forward()"
            )
        out = F.normalize(self.aggregator(fmap), dim=-1)
        return self.pca(out) if self.pca is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, D)`` L2-normalised descriptor."""
        out = self.pooled(x)
        return self.pca(out) if self.pca is not None else out

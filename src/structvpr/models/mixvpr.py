"""MixVPR (Ali-bey et al., WACV 2023): feature mixing over a fixed-size trunk map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _FeatureMixer(nn.Module):
    """``x + MLP(LayerNorm(x))`` over the flattened spatial positions of each channel."""

    def __init__(self, positions: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(positions * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(positions), nn.Linear(positions, hidden), nn.ReLU(), nn.Linear(hidden, positions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """MixVPR aggregation: ``(B, in_channels, in_h, in_w) -> (B, out_channels * out_rows)``, L2-normalised.

    ``mix_depth`` residual MLP mixers over the ``in_h * in_w`` positions of every channel, then a
    linear projection of the channels to ``out_channels`` and of the positions to ``out_rows``.
    The argument names are those of the reference constructor, so published configs carry over
    (the recipe: ResNet50 cut after layer3 at 320x320, ``MixVPR(1024, 20, 20, 1024, 4, 1, 4)``,
    4096-d, 2.34M parameters). The position count is fixed, so the test size must equal the
    training size; another map size fails with both sizes named. Linear weights start
    trunc-normal (std 0.02) with zero biases, as the reference.

    Args:
        in_channels: Channels of the trunk's map.
        in_h: Height of the trunk's map.
        in_w: Width of the trunk's map.
        out_channels: Channel projection size.
        mix_depth: Number of mixers.
        mlp_ratio: Hidden size of a mixer over the position count.
        out_rows: Row projection size.

    """

    def __init__(
        self,
        in_channels: int = 1024,
        in_h: int = 20,
        in_w: int = 20,
        out_channels: int = 512,
        mix_depth: int = 1,
        mlp_ratio: float = 1,
        out_rows: int = 4,
    ) -> None:
        super().__init__()
        self.in_channels, self.in_h, self.in_w = in_channels, in_h, in_w
        self.out_channels, self.out_rows = out_channels, out_rows
        positions = in_h * in_w
        self.mix = nn.Sequential(*[_FeatureMixer(positions, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(positions, out_rows)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def output_dim(self, channels: int | None = None) -> int:
        """Descriptor size ``out_channels * out_rows``."""
        return self.out_channels * self.out_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, self.in_h, self.in_w):
            raise ValueError(
                f"MixVPR was built for ({self.in_channels}, {self.in_h}, {self.in_w}) trunk maps, got "
                f"{tuple(x.shape[1:])}: test at the training image size, or build it for this one"
            )
        x = self.mix(x.flatten(2))  # (B, C, N)
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)  # (B, out_channels, N)
        return F.normalize(self.row_proj(x).flatten(1), dim=-1)

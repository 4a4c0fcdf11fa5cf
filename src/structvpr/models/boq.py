"""BoQ (Ali-bey et al., CVPR 2024): Bag-of-Queries aggregation with learned global queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BoQBlock(nn.Module):
    """One BoQ block: a transformer encoder layer refines the tokens, learned queries attend to them.

    Args:
        dim: Token size.
        num_queries: Learned queries of this block.
        heads: Attention heads.

    """

    def __init__(self, dim: int, num_queries: int, heads: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, n, d)`` tokens to the refined tokens and ``(B, num_queries, d)`` query outputs."""
        x = self.encoder(x)
        q = self.queries.expand(x.shape[0], -1, -1)
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])  # independent of the input
        out = self.cross_attn(q, x, x, need_weights=False)[0]
        return x, self.norm_out(out)


class BoQ(nn.Module):
    """BoQ aggregation: ``(B, in_channels, h, w) -> (B, proj_channels * row_dim)``, L2-normalised.

    A 3x3 convolution projects the map to ``proj_channels`` tokens (LayerNorm); ``num_layers``
    :class:`BoQBlock` s each answer ``num_queries`` learned queries; all answers are concatenated
    and their ``num_layers * num_queries`` rows projected to ``row_dim``. No position encoding,
    so any map size works. Argument names are the reference constructor's; the published
    settings ``BoQ(1024, 512, 64, 2, 32)`` on ResNet50 (16384-d, 15.30M parameters) and
    ``BoQ(768, 384, 64, 2, 32)`` on DINOv2 ViT-B (12288-d, 8.63M).

    Args:
        in_channels: Channels of the trunk's map.
        proj_channels: Token size d (heads ``d // 64``, at least 1).
        num_queries: Learned queries per block.
        num_layers: Blocks.
        row_dim: Row projection size.

    """

    def __init__(
        self, in_channels: int = 1024, proj_channels: int = 512, num_queries: int = 32, num_layers: int = 2, row_dim: int = 32
    ) -> None:
        super().__init__()
        self.proj_channels, self.row_dim = proj_channels, row_dim
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        heads = max(1, proj_channels // 64)
        self.boqs = nn.ModuleList([BoQBlock(proj_channels, num_queries, heads) for _ in range(num_layers)])
        self.fc = nn.Linear(num_layers * num_queries, row_dim)

    def output_dim(self, channels: int | None = None) -> int:
        """Descriptor size ``proj_channels * row_dim``."""
        return self.proj_channels * self.row_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_input(self.proj_c(x).flatten(2).transpose(1, 2))  # (B, n, d)
        outs = []
        for block in self.boqs:
            x, out = block(x)
            outs.append(out)
        out = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # (B, d, row_dim)
        return F.normalize(out.flatten(1), dim=-1)

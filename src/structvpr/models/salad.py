"""SALAD (Izquierdo and Civera, CVPR 2024): optimal-transport aggregation of local features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def log_optimal_transport(scores: torch.Tensor, dustbin: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Sinkhorn in log space of ``m`` cluster rows plus a dustbin row against ``n`` features.

    Rows have mass ``1/(n+m)`` each and the dustbin ``(n-m)/(n+m)``; every column ``1/(n+m)``.

    Args:
        scores: ``(B, m, n)`` feature-to-cluster scores (entropic regularisation 1).
        dustbin: Scalar score of the dustbin row.
        iters: Sinkhorn iterations.

    Returns:
        ``(B, m + 1, n)`` log assignment, scaled so that every column sums to 1 in probability.

    """
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(f"SALAD needs more local features than clusters, got {n} features for {m} clusters")
    couplings = torch.cat([scores, dustbin.expand(b, 1, n)], dim=1)
    log_norm = -torch.log(scores.new_tensor(float(n + m)))
    log_mu = torch.cat([log_norm.expand(m), torch.log(scores.new_tensor(float(n - m)))[None] + log_norm])
    log_nu = log_norm.expand(n)
    u = torch.zeros(b, m + 1, dtype=scores.dtype, device=scores.device)
    v = torch.zeros(b, n, dtype=scores.dtype, device=scores.device)
    for _ in range(iters):
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
    return couplings + u[:, :, None] + v[:, None, :] - log_norm


class SALAD(nn.Module):
    """SALAD aggregation: local features and a global token to ``num_clusters * cluster_dim + token_dim``.

    Each local feature is projected to ``cluster_dim`` and scored against ``num_clusters``
    clusters; an optimal-transport assignment with a learned dustbin (3 log-domain Sinkhorn
    iterations) weights their sum per cluster (no centroid residual). Every cluster is
    L2-normalised, the global token (a ViT's CLS, through an MLP) normalised and prepended, and
    the whole vector normalised. Argument names are the reference constructor's; with
    ``SALAD(768, 64, 128, 256)`` on DINOv2 ViT-B the descriptor has 8448 dimensions and the
    aggregator 1.41M parameters.

    Input: ``(fmap, token)`` with ``fmap (B, num_channels, h, w)`` and ``token (B, num_channels)``
    (what :class:`~structvpr.models.PlaceEncoder` passes from a trunk with a CLS token), or a
    bare map: the token is then the map's mean feature, so that SALAD also runs on CNN trunks
    (a structvpr addition; the reference needs the CLS token).

    Args:
        num_channels: Channels of the local features (and of the token).
        num_clusters: m.
        cluster_dim: Size of a cluster's aggregated feature.
        token_dim: Size of the global token's projection.
        dropout: Dropout of the two convolution heads.

    """

    #: :class:`~structvpr.models.PlaceEncoder` passes ``(fmap, cls_token)`` when the trunk has one.
    uses_token = True

    def __init__(
        self,
        num_channels: int = 1536,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.num_channels, self.num_clusters = num_channels, num_clusters
        self.cluster_dim, self.token_dim = cluster_dim, token_dim

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(num_channels, 512, 1),
                nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                nn.ReLU(),
                nn.Conv2d(512, out, 1),
            )

        self.token_features = nn.Sequential(nn.Linear(num_channels, 512), nn.ReLU(), nn.Linear(512, token_dim))
        self.cluster_features = head(cluster_dim)
        self.score = head(num_clusters)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def output_dim(self, channels: int | None = None) -> int:
        """Descriptor size ``num_clusters * cluster_dim + token_dim``."""
        return self.num_clusters * self.cluster_dim + self.token_dim

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        fmap, token = x if isinstance(x, tuple) else (x, x.mean(dim=(-2, -1)))
        features = self.cluster_features(fmap).flatten(2)  # (B, l, n)
        assignment = log_optimal_transport(self.score(fmap).flatten(2), self.dust_bin, 3).exp()[:, :-1]  # (B, m, n)
        clusters = F.normalize(torch.einsum("bln,bmn->blm", features, assignment), dim=1)  # (B, l, m)
        out = torch.cat([F.normalize(self.token_features(token), dim=-1), clusters.flatten(1)], dim=-1)
        return F.normalize(out, dim=-1)

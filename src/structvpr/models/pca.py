"""PCA-whitening of global descriptors, fitted after training and saved with the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PCAWhitening(nn.Module):
    """Project ``(B, D)`` descriptors onto ``out_dim`` whitened principal axes, then L2-normalise.

    Until :meth:`fit` is called the module is the identity (``fitted`` is False), so a
    model can train without it and be whitened afterwards.

    Args:
        in_dim: D.
        out_dim: Output size, at most D.
        eps: Added to the eigenvalues before whitening.

    """

    mean: torch.Tensor
    projection: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0 < out_dim <= in_dim:
            raise ValueError(f"need 0 < out_dim <= in_dim, got out_dim={out_dim}, in_dim={in_dim}")
        self.in_dim, self.out_dim, self.eps = in_dim, out_dim, eps
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("projection", torch.eye(in_dim)[:out_dim].clone())
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Fit on ``(N, D)`` training descriptors (needs ``N > out_dim``)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"descriptors must be (N, {self.in_dim}), got {tuple(x.shape)}")
        if x.shape[0] <= self.out_dim:
            raise ValueError(f"need more than out_dim={self.out_dim} descriptors to fit PCA, got {x.shape[0]}")
        x = x.double()
        mean = x.mean(0)
        # The SVD of the centred data avoids forming a D x D covariance for large D.
        _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
        var = s[: self.out_dim] ** 2 / (x.shape[0] - 1)
        self.projection.copy_((vh[: self.out_dim] / (var + self.eps).sqrt()[:, None]).float())
        self.mean.copy_(mean.float())
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            return x
        return F.normalize((x - self.mean) @ self.projection.T, dim=-1)

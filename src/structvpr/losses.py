"""Per-sample losses: triplet margin over M negatives, and descriptor distillation."""

from __future__ import annotations

import torch


def triplet_margin_loss(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                        margin: float = 0.1) -> torch.Tensor:  # fmt: skip
    """Triplet margin loss on L2 distances, summed over the negatives of each tuple.

    Args:
        query: ``(B, D)`` descriptors.
        positive: ``(B, D)``.
        negatives: ``(B, M, D)``.
        margin: Margin between positive and negative distances.

    Returns:
        ``(B,)`` loss per tuple: ``sum_m max(0, |q - p| - |q - n_m| + margin)``.

    """
    d_pos = (query - positive).norm(dim=-1, keepdim=True)  # (B, 1)
    d_neg = (query[:, None] - negatives).norm(dim=-1)  # (B, M)
    return (d_pos - d_neg + margin).clamp(min=0).sum(dim=1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between student and (detached) teacher descriptors.

    Args:
        student: ``(B, n, D)`` student descriptors of the n images of each tuple.
        teacher: ``(B, n, D)`` teacher descriptors of their label maps.

    Returns:
        ``(B,)`` mean over the tuple's images of ``|s_i - t_i|^2``.

    """
    return (student - teacher.detach()).pow(2).sum(-1).mean(-1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``(B,)`` per-sample losses: ``mean(w * values)`` (plain mean without weights)."""
    if weights is None:
        return values.mean()
    return (weights.to(values) * values).mean()

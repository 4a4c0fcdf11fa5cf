"""Per-sample losses: triplet margin over M negatives, and descriptor distillation."""

from __future__ import annotations

import torch

#: The triplet margin of the NetVLAD and MSLS references: sqrt(0.1) on unsquared L2 distances
#: (0.1 on squared ones). The VG benchmark uses 0.1 on unsquared distances.
REFERENCE_MARGIN = 0.1**0.5


def triplet_margin_loss(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float = REFERENCE_MARGIN
) -> torch.Tensor:
    """Triplet margin loss on L2 distances, summed over the negatives of each tuple.

    The references (NetVLAD, MSLS, VG benchmark) divide the sum by the number of negatives
    (a mean over query-negative pairs); the sum used here is ``M`` times that, which with
    Adam changes only the balance against the distillation term (``distill_weight``).

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


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, image_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Squared L2 distance between student and (detached) teacher descriptors.

    Args:
        student: ``(B, n, D)`` student descriptors of the n images of each tuple.
        teacher: ``(B, n, D)`` teacher descriptors of their label maps.
        image_weights: Optional ``(B, n)`` weight of every image's term (the per-image unit of
            :class:`~structvpr.callbacks.SampleWeighting`); all ones without it.

    Returns:
        ``(B,)`` mean over the tuple's images of ``v_i |s_i - t_i|^2``.

    """
    per_image = (student - teacher.detach()).pow(2).sum(-1)
    if image_weights is not None:
        per_image = per_image * image_weights.to(per_image)
    return per_image.mean(-1)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``(B,)`` per-sample losses: ``mean(w * values)`` (plain mean without weights).

    The weights are not renormalised per batch: :class:`~structvpr.callbacks.SampleWeighting`
    rescales each sub-epoch's weights to mean 1, so over a sub-epoch weighted and uniform
    distillation carry the same total.
    """
    if weights is None:
        return values.mean()
    return (weights.to(values) * values).mean()

"""TeacherStudent: a frozen teacher and a trainable RGB student, as one plain module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from structvpr.losses import distillation_loss
from structvpr.models.encoder import PlaceEncoder


class TeacherStudent(nn.Module):
    """The StructVPR pair without Lightning: a frozen teacher beside the student it distils into.

    The teacher (a :class:`PlaceEncoder` on one-hot label maps; an RGB one for the
    self-distillation control) is frozen here and stays in eval mode whatever ``train()`` is
    called with, so its BatchNorm statistics never move. Only the student is trained and only
    the student runs at test time (:meth:`forward`).

    Args:
        student: The RGB encoder being trained.
        teacher: The trained teacher; its descriptors must have the student's size unless a
            ``projection`` is given.
        projection: Optional trainable module mapping the student's descriptors to the
            teacher's size (e.g. ``nn.Linear(D_s, D_t, bias=False)``); the projected descriptors
            are L2-normalised before they are compared with the teacher's. Used in training
            only: the student's own descriptors are what runs at test time.

    Example:
        >>> pair = TeacherStudent(PlaceEncoder(3), PlaceEncoder(6))
        >>> rgb, maps = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 3, 6, 32, 32)
        >>> student, loss = pair.distillation(rgb, pair.teacher_tuples(maps))
        >>> student.shape, loss.shape
        (torch.Size([2, 3, 128]), torch.Size([2]))

    """

    def __init__(self, student: PlaceEncoder, teacher: PlaceEncoder, projection: nn.Module | None = None) -> None:
        super().__init__()
        if teacher.pooled_dim != student.pooled_dim and projection is None:
            raise ValueError(
                f"teacher descriptors have {teacher.pooled_dim} dimensions but the student's have "
                f"{student.pooled_dim}: give the student the teacher's trunk width and aggregator, "
                "or configure a projection (teacher_projection=true)"
            )
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.projection = projection

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, D)`` the student's descriptors (what runs at test time)."""
        return self.student(x)

    def student_tuples(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, n, 3, H, W) -> (B, n, D)`` student descriptors (before PCA) of training tuples."""
        return _tuples(self.student, images)

    @torch.no_grad()
    def teacher_tuples(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, n, C, H, W) -> (B, n, D)`` teacher descriptors of the views' label maps (no gradient)."""
        return _tuples(self.teacher, inputs)

    def distillation(
        self, images: torch.Tensor, targets: torch.Tensor, image_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's tuple descriptors and the per-tuple distillation term.

        Args:
            images: ``(B, n, 3, H, W)`` RGB tuples.
            targets: ``(B, n, D)`` teacher descriptors of exactly the label maps those views came
                from (:meth:`teacher_tuples`, or a per-sub-epoch cache of them).
            image_weights: Optional ``(B, n)`` weight of every image's term.

        Returns:
            ``(B, n, D)`` student descriptors (for the triplet loss) and ``(B,)`` mean over each tuple
            of ``v_i |s_i - t_i|^2``.

        """
        student = self.student_tuples(images)
        return student, distillation_loss(self.project(student), targets, image_weights)

    def project(self, student: torch.Tensor) -> torch.Tensor:
        """Student descriptors ``(..., D_s)`` in the teacher's space ``(..., D_t)`` (themselves without a projection)."""
        if self.projection is None:
            return student
        return F.normalize(self.projection(student), dim=-1)


def _tuples(encoder: PlaceEncoder, x: torch.Tensor) -> torch.Tensor:
    b, n = x.shape[:2]
    return encoder.pooled(x.flatten(0, 1)).view(b, n, -1)

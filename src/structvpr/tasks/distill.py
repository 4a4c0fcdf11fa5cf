"""StructVPRDistillation: the RGB student trained with weighted structural distillation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from structvpr.losses import distillation_loss, weighted_mean
from structvpr.tasks.student import StructVPRStudent
from structvpr.tasks.teacher import SegTeacher


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device or available memory of the host; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:  # MemAvailable counts reclaimable page cache, which plain "free" memory does not
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.1f} GiB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


class StructVPRDistillation(StructVPRStudent):
    """Triplet loss plus per-sample weighted distillation from a frozen SegTeacher (DESIGN 1.4).

    ``L = mean_b triplet_b + distill_weight * mean_b(w_q(b) * mean_i |s_i - t_i|^2)`` where
    ``s_i`` are the student's descriptors of the tuple's RGB images, ``t_i`` the teacher's
    descriptors of their label maps, and ``w_q`` the weight of the tuple's query, set by
    :class:`~structvpr.callbacks.SampleWeighting` through :meth:`set_sample_weights`
    (all ones without it: uniform distillation).

    The teacher is frozen, kept in eval mode and out of the optimiser. With ``cache_teacher``
    its descriptors of every training label map are computed once at fit start (from the
    un-augmented maps), so it does not run during training steps.

    Args:
        teacher_ckpt: Checkpoint of a trained :class:`SegTeacher`.
        student_ckpt: Optional checkpoint of a :class:`StructVPRStudent` (the RGB baseline)
            to start from; random initialisation otherwise.
        distill_weight: lambda.
        cache_teacher: Cache teacher descriptors of the training set instead of running it.
        trunk: Student trunk (see :class:`StructVPRStudent`); must give the teacher's
            descriptor size.
        aggregator: ``gem`` or ``netvlad``.
        num_clusters: K of NetVLAD.
        pretrained_path: Local weight file for a timm trunk.
        pca_dim: PCA-whitening size (None for none).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        margin: Triplet margin.
        recall_ns: N of the logged Recall@N.
        eval_radius: Correct-match radius in metres.
        kmeans_images: Images used to initialise NetVLAD.
        search_backend: ``torch`` or ``faiss``.

    """

    def __init__(self, teacher_ckpt: str, student_ckpt: str | None = None, distill_weight: float = 1.0,
                 cache_teacher: bool = True, trunk: str = "simple", aggregator: str = "gem",
                 num_clusters: int = 16, pretrained_path: str | None = None, pca_dim: int | None = None,
                 lr: float = 1e-3, weight_decay: float = 1e-4, margin: float = 0.1,
                 recall_ns: Sequence[int] = (1, 5, 10, 20), eval_radius: float = 25.0,
                 kmeans_images: int = 200, search_backend: str = "torch") -> None:  # fmt: skip
        super().__init__(trunk, aggregator, num_clusters, pretrained_path, pca_dim, lr, weight_decay,
                         margin, recall_ns, eval_radius, kmeans_images, search_backend)  # fmt: skip
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        for name, path in (("teacher_ckpt", teacher_ckpt), ("student_ckpt", student_ckpt)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: {path} does not exist")
        self.teacher = SegTeacher.load_from_checkpoint(teacher_ckpt, map_location="cpu").encoder
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        if self.teacher.pooled_dim != self.encoder.pooled_dim:
            raise ValueError(
                f"teacher descriptors have {self.teacher.pooled_dim} dimensions but the student's have "
                f"{self.encoder.pooled_dim}: give the student the teacher's trunk width and aggregator"
            )
        if student_ckpt is not None:
            start = StructVPRStudent.load_from_checkpoint(student_ckpt, map_location="cpu")
            self.encoder.load_state_dict(start.encoder.state_dict())
        self.register_buffer("sample_weights", torch.ones(0))
        self._teacher_cache: torch.Tensor | None = None

    def train(self, mode: bool = True) -> StructVPRDistillation:
        super().train(mode)
        self.teacher.eval()  # frozen BatchNorm statistics, whatever the trainer does
        return self

    sample_weights: torch.Tensor

    def setup(self, stage: str) -> None:
        if stage == "fit":
            n = len(self.datamodule.train_dataset)
            if self.sample_weights.numel() != n:
                self.sample_weights = torch.ones(n, device=self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["state_dict"].get("sample_weights")
        if saved is not None:
            self.sample_weights = torch.ones_like(saved, device=self.device)

    def set_sample_weights(self, weights: torch.Tensor) -> None:
        """Set ``w_q`` for every training query (``(num_training_queries,)``, in [0, 1])."""
        if weights.shape != self.sample_weights.shape:
            raise ValueError(f"weights must have shape {tuple(self.sample_weights.shape)}, got {tuple(weights.shape)}")
        self.sample_weights.copy_(weights.to(self.sample_weights))

    def teacher_training_descriptors(self) -> torch.Tensor:
        """Teacher descriptors ``(N, D)`` of every training label map (database, then queries).

        Raises:
            ValueError: when they would take more than half the free memory of the host or of
                the model's device (they are checked before hours of encoding, not after).
        """
        if self._teacher_cache is None:
            n = len(self.datamodule.train_images)
            need = n * self.teacher.pooled_dim * 4
            for device in {torch.device("cpu"), self.device}:
                free = free_memory_bytes(device)
                if free is not None and need > free / 2:
                    raise ValueError(
                        f"teacher descriptors of {n:,} training images x {self.teacher.pooled_dim} dimensions need "
                        f"{_size(need)}, more than half the free memory of {device} ({_size(free)}): "
                        "set model.init_args.cache_teacher=false and leave SampleWeighting out (its teacher ranks "
                        "need every descriptor once), or train on fewer images"
                    )
            loader = self.datamodule.train_images_dataloader()
            self._teacher_cache = self.encode_loader(loader, self.teacher, key="label").to(self.device)
        return self._teacher_cache

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hp.cache_teacher:
            self.teacher_training_descriptors()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        student = self.encode_tuples(batch["image"])
        triplet = self.triplet_loss(student)
        if self.hp.cache_teacher:
            teacher = self.teacher_training_descriptors()[batch["image_index"]]
        else:
            with torch.no_grad():
                teacher = self.teacher.pooled(batch["label"].flatten(0, 1)).view_as(student)
        distill = distillation_loss(student, teacher)
        weights = self.sample_weights[batch["index"]]
        loss = triplet.mean() + self.hp.distill_weight * weighted_mean(distill, weights)
        self.check_finite(loss, batch)
        size = len(batch["index"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/triplet", triplet.mean(), batch_size=size)
        self.log("train/distill", distill.mean(), batch_size=size)
        return loss

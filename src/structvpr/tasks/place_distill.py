"""PlaceDistillation: structure distillation on place batches (the modern recipes with a label-map teacher)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from structvpr.bank import DescriptorBank
from structvpr.data.datasets import is_geometric
from structvpr.models.teacher_student import TeacherStudent
from structvpr.tasks.distill import _check_weights, load_teacher
from structvpr.tasks.place import PlaceStudent, PlaceTeacher


class PlaceDistillation(PlaceStudent):
    """The multi-similarity recipe plus per-image weighted distillation from a frozen teacher.

    ``L = MS loss + distill_weight * mean_i w_i |s_i - t_i|^2`` over the ``P * K`` images of the
    place batch, where ``s_i`` is the student's descriptor of image ``i``, ``t_i`` the frozen
    teacher's descriptor of exactly the label map the student's view came from, and ``w_i`` the
    image's weight (all ones, or set by :class:`~structvpr.callbacks.PlaceWeighting`).

    Which teacher input is used is chosen exactly, as on the triplet path: with a geometric
    augmentation (``data.rand_augment`` with its shear, translate and rotate, or ``crop_scale``)
    the teacher runs on each batch's own transformed label maps; with photometric-only
    augmentation (``data.rand_augment_geometric=false``, colour jitter) and ``cache_teacher``, its
    descriptors of the un-augmented maps (then identical) are computed once per *window* of
    ``bank_batches`` upcoming steps, shared with the weighting, and the teacher does not run in
    training steps. Under DDP a window holds the batches of every process
    (:class:`~structvpr.data.places.PlaceBatchSampler`), encoded in shares and all-gathered.

    The teacher is a :class:`~structvpr.tasks.PlaceTeacher` (or a triplet-trained
    :class:`~structvpr.tasks.SegTeacher`) on the same trunk and aggregator. A teacher whose
    descriptor size differs from the student's is refused unless ``teacher_projection``: a linear
    map of the student's descriptors into the teacher's space, trained with the student and left
    out of the exported student. ``teacher_input='image'`` is the self-distillation control: an
    RGB teacher (a trained :class:`~structvpr.tasks.PlaceStudent`) on the same RGB views.

    Args:
        teacher_ckpt: Checkpoint of the trained teacher (read once: its weights and
            hyper-parameters are then part of this task's checkpoints).
        student_ckpt: Optional checkpoint of the RGB baseline (:class:`~structvpr.tasks.PlaceStudent`
            or :class:`~structvpr.tasks.StructVPRStudent`) to start from.
        distill_weight: lambda.
        cache_teacher: Cache the teacher's descriptors per window when that is exact (see above).
        bank_batches: Steps per window of upcoming batches: the teacher cache and the weighting's
            rank bank hold the images of ``bank_batches * world_size`` batches.
        teacher_projection: Learn a linear projection from the student's descriptor size to the
            teacher's (needed when they differ).
        teacher_hparams: Set by checkpoints of this task (the teacher's architecture), so that
            ``load_from_checkpoint`` needs neither file.
        teacher_input: ``label`` (the method) or ``image`` (self-distillation control).
        **kwargs: :class:`~structvpr.tasks.PlaceStudent` 's arguments (loss, miner, schedule, trunk,
            aggregator, lr, ...).

    """

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        student_ckpt: str | None = None,
        distill_weight: float = 1.0,
        cache_teacher: bool = True,
        bank_batches: int = 16,
        teacher_projection: bool = False,
        teacher_hparams: dict[str, Any] | None = None,
        teacher_input: Literal["label", "image"] = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        if bank_batches < 1:
            raise ValueError(f"bank_batches must be >= 1, got {bank_batches}")
        if teacher_input not in ("label", "image"):
            raise ValueError(f"teacher_input must be 'label' or 'image', got {teacher_input!r}")
        #: Batch key the teacher reads: label maps, or RGB for the self-distillation control.
        self.teacher_key = teacher_input
        teacher_cls = PlaceTeacher if teacher_input == "label" else PlaceStudent
        teacher, saved = load_teacher(teacher_cls, teacher_ckpt, teacher_hparams, teacher_input, student_ckpt)
        if saved is not None:
            self.hparams["teacher_hparams"] = saved
        self.projection: nn.Module | None = None
        if teacher_projection:
            self.projection = nn.Linear(self.encoder.pooled_dim, teacher.pooled_dim, bias=False)
        pair = TeacherStudent(self.encoder, teacher, self.projection)
        # Registered as ``encoder``, ``teacher`` and ``projection``; the pair is a plain attribute.
        object.__setattr__(self, "model", pair)
        self.teacher = pair.teacher
        if student_ckpt is not None and teacher_hparams is None:
            start = PlaceStudent.load_from_checkpoint(student_ckpt, map_location="cpu", weights_only=True)
            self.encoder.load_state_dict(start.encoder.state_dict())
        self.register_buffer("image_weights", torch.ones(0))
        #: Whether training steps read the teacher's per-window descriptors (set in ``setup``).
        self.teacher_cached = cache_teacher
        self.banks["teacher"] = DescriptorBank(self.teacher, self.teacher_key, "teacher")
        self._window = -1

    #: The plain teacher-student module (the student is this task's ``encoder``).
    model: TeacherStudent
    #: ``(N,)`` distillation weight of every training-bank image (>= 0), indexed by ``batch["image_index"]``.
    image_weights: torch.Tensor

    def train(self, mode: bool = True) -> PlaceDistillation:
        super().train(mode)
        self.teacher.eval()  # frozen BatchNorm statistics, whatever the trainer does
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*super().trainable_parameters(), *(self.projection.parameters() if self.projection is not None else [])]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        dataset = self.datamodule.train_dataset
        if self.teacher_key == "label" and not self.datamodule.hp.with_labels:
            raise ValueError("PlaceDistillation reads label maps: set data.init_args.with_labels=true")
        if self.image_weights.numel() != len(dataset.bank):
            self.image_weights = torch.ones(len(dataset.bank), device=self.device)
        geometric = is_geometric(dataset.bank.transform)
        self.teacher_cached = bool(self.hp.cache_teacher) and not geometric
        if self.hp.cache_teacher and geometric:
            rank_zero_warn(
                "cache_teacher is on but training uses geometric augmentation (RandAugment's shear, translate "
                "and rotate, or crop_scale): a cached teacher descriptor would not match the student's view, so "
                "the teacher runs on each batch's own transformed label maps (set "
                "data.init_args.rand_augment_geometric=false for a cache, or model.init_args.cache_teacher=false "
                "to silence this)"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["state_dict"].get("image_weights")
        if saved is not None:
            self.image_weights = torch.ones_like(saved, device=self.device)

    def set_image_weights(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        """Set ``w_i`` (>= 0) of the training-bank images ``ids`` (``(n,)`` each); the others keep theirs."""
        _check_weights(ids, weights, len(self.image_weights), "training-bank image ids")
        self.image_weights[ids.to(self.image_weights.device)] = weights.to(self.image_weights)

    # -- windows of upcoming batches ------------------------------------------------------
    def window_ids(self, batch_idx: int) -> tuple[int, np.ndarray]:
        """The window of step ``batch_idx`` and the sorted training-bank ids of all its images.

        Window ``c`` is steps ``c * bank_batches .. (c + 1) * bank_batches - 1`` of the epoch, i.e.
        the epoch's batches ``c * S * W .. (c + 1) * S * W - 1`` of every process (``W`` of them).
        """
        dataset = self.datamodule.train_dataset
        world = int(getattr(self.trainer, "world_size", 1) or 1)
        steps = len(dataset) // world
        window = batch_idx // self.hp.bank_batches
        first = window * self.hp.bank_batches
        last = min(steps, first + self.hp.bank_batches)
        batches = dataset.batches()[first * world : last * world]
        return window, np.unique(batches)

    def prepare_window(self, batch_idx: int) -> tuple[int, np.ndarray, bool]:
        """Move to the window of ``batch_idx``: returns it, its image ids and whether it is new.

        A new window drops the teacher descriptors of the previous one and, with a cached teacher,
        encodes every image of the new one (all processes at once). Called by the weighting
        callback too, before this task's own hook.
        """
        window, ids = self.window_ids(batch_idx)
        fresh = window != self._window
        if fresh:
            self._window = window
            self.banks["teacher"].invalidate()
            if self.teacher_cached:
                self.banks["teacher"].descriptors(ids)
        return window, ids, fresh

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._window = -1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.prepare_window(batch_idx)

    def on_train_epoch_end(self) -> None:
        self.banks["teacher"].invalidate()  # memory stays bounded by one window
        self._window = -1

    def teacher_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """``(P, K, D_t)`` teacher descriptors of the label maps of the batch's views."""
        if not self.teacher_cached:
            return self.model.teacher_tuples(batch[self.teacher_key])
        ids = batch["image_index"]
        flat = ids.flatten().cpu().numpy()
        bank = self.banks["teacher"]
        if not np.isin(flat, bank.ids).all():
            raise RuntimeError(
                f"batch {int(batch.get('batch', -1))} holds images outside the teacher's window: train with "
                "PlaceDataModule's loader (PlaceBatchSampler), which serves batches in window order"
            )
        return bank.descriptors(flat).view(*ids.shape, -1).to(self.device)

    def losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The total loss of a place batch, its metric term and its distillation term ``mean_i w_i |s_i - t_i|^2``."""
        weights = self.image_weights[batch["image_index"].to(self.image_weights.device)]
        student, distill = self.model.distillation(batch["image"], self.teacher_targets(batch), weights)
        metric = self.metric_loss(student.flatten(0, 1), batch["place"].flatten())
        distill_term = distill.mean()  # (P,) means of K images each: the mean over every image
        return metric + self.hp.distill_weight * distill_term, metric, distill_term

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        places = batch["place"]
        loss, metric, distill = self.losses(batch)
        self.check_finite_places(loss, places)
        size = places.numel()
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/metric", metric, batch_size=size)
        self.log("train/distill", distill, batch_size=size)
        return loss

"""StructVPRDistillation: the RGB student trained with weighted structural distillation."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn

from structvpr.bank import DescriptorBank
from structvpr.data.datasets import is_geometric
from structvpr.losses import weighted_mean
from structvpr.models.encoder import PlaceEncoder
from structvpr.models.teacher_student import TeacherStudent
from structvpr.tasks.base import VPRTask
from structvpr.tasks.student import StructVPRStudent
from structvpr.tasks.teacher import SegTeacher
from structvpr.utils.io import read_checkpoint


class StructVPRDistillation(StructVPRStudent):
    """Triplet loss plus per-sample weighted distillation from a frozen SegTeacher (DESIGN 1.4).

    ``L = mean_b triplet_b + distill_weight * mean_b(w_q(b) * mean_i v_i |s_i - t_i|^2)`` where
    ``s_i`` are the student's descriptors of the tuple's RGB images, ``t_i`` the teacher's
    descriptors of exactly the label maps those RGB views came from (same joint
    transform), ``w_q`` the weight of the tuple's query and ``v_i`` the weight of the image
    itself, set by :class:`~structvpr.callbacks.SampleWeighting` through
    :meth:`set_sample_weights` (``unit='query'``) or :meth:`set_image_weights`
    (``unit='image'``); all ones without it: uniform distillation (the callback rescales its
    weights to mean 1 by default, so both distil the same total at the same ``distill_weight``).

    ``teacher_input='image'`` is a control, not the method: the teacher is then a trained RGB
    :class:`StructVPRStudent` (``teacher_ckpt``, e.g. the baseline itself: self-distillation)
    reading the same RGB images, so an experiment can tell what the label maps add over
    distillation as such.

    The pair is a plain :class:`~structvpr.models.TeacherStudent` (``self.model``): the teacher is
    frozen, kept in eval mode and out of the optimiser. With
    ``cache_teacher`` and no geometric augmentation (the default), its descriptors of the
    sub-epoch's images are computed once per sub-epoch from the un-augmented label maps
    (exact: photometric jitter leaves label maps alone), shared with the sample weighting,
    and the teacher does not run in training steps. With geometric augmentation
    (``data.crop_scale``) a cache would pull each view towards another view's descriptor,
    so the teacher runs on each batch's own transformed label maps instead, with a warning.

    Args:
        teacher_ckpt: Checkpoint of a trained :class:`SegTeacher` (read once: the teacher's weights
            and hyper-parameters are then part of this task's checkpoints).
        student_ckpt: Optional checkpoint of a :class:`StructVPRStudent` (the RGB baseline)
            to start from; random initialisation otherwise.
        distill_weight: lambda.
        cache_teacher: Cache the teacher's descriptors of each sub-epoch's images instead of
            running it in every step; used only when exact (no geometric augmentation).
        teacher_hparams: Set by checkpoints of this task (the teacher's architecture), so that
            ``load_from_checkpoint`` needs neither the teacher's nor the student's file.
        teacher_input: ``label`` (the method: a SegTeacher on label maps) or ``image`` (a
            control: a StructVPRStudent teacher on the RGB images; see above).
        **kwargs: The student's arguments (:class:`StructVPRStudent`: trunk, aggregator, lr, margin,
            ...); the student must give the teacher's descriptor size.

    """

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        student_ckpt: str | None = None,
        distill_weight: float = 1.0,
        cache_teacher: bool = True,
        teacher_hparams: dict[str, Any] | None = None,
        teacher_input: Literal["label", "image"] = "label",
        **kwargs: Any,
    ) -> None:
        # A checkpoint's hyper-parameters hold the base task's in_chans too; the student is RGB (3).
        if kwargs.pop("in_chans", 3) != 3:
            raise ValueError("the distilled student reads RGB images: in_chans must be 3")
        super().__init__(**kwargs)
        if distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {distill_weight}")
        if teacher_input not in ("label", "image"):
            raise ValueError(f"teacher_input must be 'label' or 'image', got {teacher_input!r}")
        #: Batch key the teacher reads: label maps, or RGB for the self-distillation control.
        self.teacher_key = teacher_input
        teacher_cls: type[SegTeacher] | type[StructVPRStudent] = SegTeacher if teacher_input == "label" else StructVPRStudent
        teacher, saved = load_teacher(teacher_cls, teacher_ckpt, teacher_hparams, teacher_input, student_ckpt)
        if saved is not None:  # saved with this task's hyper-parameters: a checkpoint rebuilds the teacher without its file
            self.hparams["teacher_hparams"] = saved
        reloading = teacher_hparams is not None
        pair = TeacherStudent(self.encoder, teacher)
        # The pair's modules are registered as ``encoder`` and ``teacher`` (the checkpoint keys of
        # every earlier version); the pair itself is a plain attribute, so nothing is saved twice.
        object.__setattr__(self, "model", pair)
        self.teacher = pair.teacher
        if student_ckpt is not None and not reloading:
            start = StructVPRStudent.load_from_checkpoint(student_ckpt, map_location="cpu", weights_only=True)
            self.encoder.load_state_dict(start.encoder.state_dict())
        self.register_buffer("sample_weights", torch.ones(0))
        self.register_buffer("image_weights", torch.ones(0))
        #: Whether training steps read the teacher's per-sub-epoch descriptors (set in ``setup``).
        self.teacher_cached = cache_teacher
        #: The teacher's descriptors of the current sub-epoch's images (kept for one sub-epoch).
        self.banks["teacher"] = DescriptorBank(self.teacher, self.teacher_key, "teacher")

    #: The plain teacher-student module (the student is this task's ``encoder``).
    model: TeacherStudent

    def train(self, mode: bool = True) -> StructVPRDistillation:
        super().train(mode)
        self.teacher.eval()  # frozen BatchNorm statistics, whatever the trainer does
        return self

    #: ``(num_training_queries,)`` distillation weight of every training query (>= 0; mean 1 per
    #: sub-epoch with SampleWeighting's default), indexed by ``batch["index"]``.
    sample_weights: torch.Tensor
    #: ``(N,)`` distillation weight of every training-bank image (database then queries; >= 0),
    #: indexed by ``batch["image_index"]``; all ones unless ``SampleWeighting(unit='image')`` sets them.
    image_weights: torch.Tensor

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        dataset = self.datamodule.train_dataset
        n = dataset.num_training_queries
        if self.sample_weights.numel() != n:
            self.sample_weights = torch.ones(n, device=self.device)
        if self.image_weights.numel() != len(dataset.utm):
            self.image_weights = torch.ones(len(dataset.utm), device=self.device)
        geometric = is_geometric(dataset.bank.transform)
        self.teacher_cached = bool(self.hp.cache_teacher) and not geometric
        if self.hp.cache_teacher and geometric:
            rank_zero_warn(
                "cache_teacher is on but training uses geometric augmentation (data.crop_scale): a cached "
                "teacher descriptor would not match the student's view, so the teacher runs on each "
                "batch's own transformed label maps (set model.init_args.cache_teacher=false to silence)"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint["state_dict"].get("sample_weights")
        if saved is not None:
            self.sample_weights = torch.ones_like(saved, device=self.device)
        saved = checkpoint["state_dict"].get("image_weights")
        if saved is not None:
            self.image_weights = torch.ones_like(saved, device=self.device)
        else:  # a checkpoint from before per-image weights: they stay all ones
            checkpoint["state_dict"]["image_weights"] = self.image_weights

    def set_sample_weights(self, indices: torch.Tensor, weights: torch.Tensor) -> None:
        """Set ``w_q`` (>= 0) of the training queries ``indices`` (``(n,)`` each); the others keep theirs.

        The task owns the weights: they are a buffer, saved and restored with its state dict.
        """
        _check_weights(indices, weights, len(self.sample_weights), "training-query indices")
        self.sample_weights[indices.to(self.sample_weights.device)] = weights.to(self.sample_weights)

    def set_image_weights(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        """Set ``v_i`` (>= 0) of the training-bank images ``ids`` (``(n,)`` each); the others keep theirs."""
        _check_weights(ids, weights, len(self.image_weights), "training-bank image ids")
        self.image_weights[ids.to(self.image_weights.device)] = weights.to(self.image_weights)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.teacher_cached:  # every image of the sub-epoch's tuples in one pass (weighting's are reused)
            dataset = self.datamodule.train_dataset
            table = dataset.tuples.numpy()
            self.banks["teacher"].descriptors(np.union1d(table[:, 1:].ravel(), dataset.query_image_index(table[:, 0])))

    def on_train_epoch_end(self) -> None:
        # Memory stays bounded by one sub-epoch's images, whatever the size of the training set.
        self.banks["teacher"].invalidate()

    def teacher_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """``(B, n, D)`` teacher descriptors of the label maps of the batch's views."""
        if self.teacher_cached:
            ids = batch["image_index"]
            return self.banks["teacher"].descriptors(ids.flatten().cpu().numpy()).view(*ids.shape, -1).to(self.device)
        return self.model.teacher_tuples(batch[self.teacher_key])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image_weights = self.image_weights[batch["image_index"].to(self.image_weights.device)]
        student, distill = self.model.distillation(batch["image"], self.teacher_targets(batch), image_weights)
        triplet = self.triplet_loss(student)
        weights = self.sample_weights[batch["index"]]
        loss = triplet.mean() + self.hp.distill_weight * weighted_mean(distill, weights)
        self.check_finite(loss, batch)
        size = len(batch["index"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/triplet", triplet.mean(), batch_size=size)
        self.log("train/distill", distill.mean(), batch_size=size)
        return loss


def _check_weights(indices: torch.Tensor, weights: torch.Tensor, size: int, what: str) -> None:
    if indices.shape != weights.shape or indices.ndim != 1:
        raise ValueError(f"indices and weights must be two (n,) tensors, got {tuple(indices.shape)} and {tuple(weights.shape)}")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= size):
        raise ValueError(f"{what} must lie in [0, {size})")
    if bool((weights < 0).any()):
        raise ValueError("sample weights must be >= 0")


def load_teacher(
    teacher_cls: type[VPRTask],
    teacher_ckpt: str | None,
    teacher_hparams: dict[str, Any] | None,
    teacher_input: str,
    student_ckpt: str | None = None,
) -> tuple[PlaceEncoder, dict[str, Any] | None]:
    """The teacher's encoder, and the hyper-parameters to save that rebuild it (None when reloading).

    Reloading a checkpoint of a distillation task (``teacher_hparams`` given), the teacher is rebuilt
    from them and its weights come with the task's state dict, so neither file need exist any more.
    """
    if teacher_hparams is None:
        for name, path in (("teacher_ckpt", teacher_ckpt), ("student_ckpt", student_ckpt)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: {path} does not exist")
    if teacher_hparams is not None:
        return teacher_cls(**teacher_hparams).encoder, None
    if teacher_ckpt is None:
        raise ValueError("teacher_ckpt is required: the teacher checkpoint to distil from")
    _check_teacher_class(teacher_ckpt, teacher_input)
    loaded = teacher_cls.load_from_checkpoint(teacher_ckpt, map_location="cpu", weights_only=True)
    # From the file, not ``loaded.hparams``: built inside a task that LightningCLI instantiates, the
    # teacher's save_hyperparameters records the CLI's hyper-parameters (those of the distillation task).
    hparams = read_checkpoint(teacher_ckpt).get("hyper_parameters", {})
    params = inspect.signature(teacher_cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # Objects given as {class_path, init_args} (the loss and miner) train the teacher, which stays frozen
    # here; left in, LightningCLI would instantiate them when it reads the checkpoint back.
    saved = {
        k: v
        for k, v in hparams.items()
        if (k in params or takes_any) and not k.startswith("_") and not (isinstance(v, dict) and "class_path" in v)
    }
    return loaded.encoder, saved


def _check_teacher_class(path: str, teacher_input: str) -> None:
    """A label-map teacher must be a SegTeacher checkpoint, an RGB one a StructVPRStudent's (saved ``num_groups``)."""
    # Memory-mapped: only the hyper-parameters are read here, not the weights loaded right after.
    saved = read_checkpoint(path).get("hyper_parameters", {})
    is_segteacher = "num_groups" in saved
    if is_segteacher != (teacher_input == "label"):
        held, wanted = ("a SegTeacher", "StructVPRStudent") if is_segteacher else ("an RGB model", "SegTeacher")
        raise TypeError(
            f"teacher_ckpt {path} holds {held}, but teacher_input={teacher_input!r} needs a {wanted} "
            f"checkpoint (teacher_input='image' distils an RGB teacher: the self-distillation control)"
        )

"""Place-batch training (the modern recipes): the recipe, and the RGB student and label-map teacher trained with it."""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from structvpr.tasks.base import VPRTask
from structvpr.tasks.student import StructVPRStudent
from structvpr.tasks.teacher import SegTeacher

#: The loss and miner of every modern recipe (GSV-Cities, MixVPR, SALAD, BoQ).
DEFAULT_LOSS = {
    "class_path": "pytorch_metric_learning.losses.MultiSimilarityLoss",
    "init_args": {"alpha": 1.0, "beta": 50.0, "base": 0.0},
}
DEFAULT_MINER = {"class_path": "pytorch_metric_learning.miners.MultiSimilarityMiner", "init_args": {"epsilon": 0.1}}


def build_object(spec: dict[str, Any] | None, what: str) -> Any:
    """An object from ``{"class_path": "package.Class", "init_args": {...}}`` (None stays None)."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{what} must be {{class_path: package.Class, init_args: {{...}}}} or null, got {spec!r}")
    module, _, name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what}: cannot import {spec['class_path']} ({err})") from err
    return cls(**dict(spec.get("init_args") or {}))


class PlaceRecipe(VPRTask):
    """The training recipe of place batches, mixed in before a :class:`~structvpr.tasks.base.VPRTask` subclass.

    Each step encodes the batch's ``P * K`` inputs (``batch[input_key]``: RGB for a student, label
    maps for a teacher), mines pairs with ``miner`` and applies a pytorch-metric-learning ``loss``
    with the place ids as labels (default: the multi-similarity loss and miner of every modern
    recipe, ``MultiSimilarityLoss(alpha=1, beta=50, base=0)`` and
    ``MultiSimilarityMiner(epsilon=0.1)``). Under DDP both are wrapped in PML's distributed
    wrappers, so every anchor sees the negatives of every process. Train with
    :class:`~structvpr.data.PlaceDataModule`.

    The optimiser and its per-step schedule are the recipes': AdamW or SGD (``optimizer``), a
    linear warm-up over ``warmup_steps``, then either steps of ``gamma`` at ``milestones``
    (in epochs or steps, ``milestone_unit``) or a linear decay to ``linear_end_factor`` over
    ``linear_steps``.

    Args:
        loss: ``{class_path, init_args}`` of a pytorch-metric-learning loss (the default above).
        miner: ``{class_path, init_args}`` of a miner, or None for none (the default above).
        optimizer: ``adamw`` or ``sgd`` (at ``lr`` and ``weight_decay``).
        momentum: SGD momentum.
        warmup_steps: Steps of linear warm-up from 0 to ``lr``.
        milestones: Where the learning rate is multiplied by ``gamma``.
        milestone_unit: ``epoch`` or ``step``.
        gamma: Step factor.
        linear_end_factor: When set, the learning rate decays linearly from 1 to this factor of
            ``lr`` over ``linear_steps`` (SALAD: 0.2 over 4,000), instead of the milestones.
        linear_steps: Length of the linear decay.
        **kwargs: The task's own arguments (trunk, aggregator, lr, weight_decay, ...).

    """

    def __init__(
        self,
        loss: dict[str, Any] | None = None,
        miner: dict[str, Any] | None = DEFAULT_MINER,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        momentum: float = 0.9,
        warmup_steps: int = 0,
        milestones: Sequence[int] = (),
        milestone_unit: Literal["epoch", "step"] = "epoch",
        gamma: float = 0.1,
        linear_end_factor: float | None = None,
        linear_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
        if milestone_unit not in ("epoch", "step"):
            raise ValueError(f"milestone_unit must be 'epoch' or 'step', got {milestone_unit!r}")
        if warmup_steps < 0 or linear_steps < 0:
            raise ValueError("warmup_steps and linear_steps must be >= 0")
        self.loss_fn: nn.Module = build_object(loss if loss is not None else DEFAULT_LOSS, "loss")
        self.miner: nn.Module | None = build_object(miner, "miner")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.trainer.world_size > 1:
            from pytorch_metric_learning.utils import distributed

            if not isinstance(self.loss_fn, distributed.DistributedLossWrapper):
                self.loss_fn = distributed.DistributedLossWrapper(self.loss_fn)
                if self.miner is not None:
                    self.miner = distributed.DistributedMinerWrapper(self.miner)

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.datamodule, "train_dataset", None)
        if dataset is not None and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def metric_loss(self, desc: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        """The configured loss of ``(N, D)`` descriptors with ``(N,)`` place labels, pairs mined by the miner."""
        pairs = self.miner(desc, places) if self.miner is not None else None
        return self.loss_fn(desc, places, pairs)

    def per_image_losses(self, desc: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        """``(N,)`` loss of every image as an anchor (PML's ``DoNothingReducer``), this process's images only.

        For the multi-similarity loss their mean is the training loss (PML's mean reducer counts
        unmined anchors as 0 too).
        """
        from pytorch_metric_learning.reducers import DoNothingReducer

        loss = getattr(self.loss_fn, "loss", self.loss_fn)  # inside a distributed wrapper
        miner = getattr(self.miner, "miner", self.miner)
        pairs = miner(desc, places) if miner is not None else None
        saved, loss.reducer = loss.reducer, DoNothingReducer()
        try:
            out = loss(desc, places, pairs)
        finally:
            loss.reducer = saved
        [terms] = out.values()
        per = torch.zeros(len(desc), dtype=desc.dtype, device=desc.device)
        return per.index_put_((terms["indices"],), terms["losses"].flatten(), accumulate=True)

    def check_finite_places(self, loss: torch.Tensor, places: torch.Tensor) -> None:
        """Stop with the epoch, the step and the batch's places when the loss is NaN or infinite."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} (places "
                f"{places[:, 0].tolist()}): lower the learning rate or check the inputs"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        places = batch["place"]
        desc = self.encoder.pooled(batch[self.input_key].flatten(0, 1))
        loss = self.metric_loss(desc, places.flatten())
        self.check_finite_places(loss, places)
        self.log("train/loss", loss, prog_bar=True, batch_size=places.numel())
        return loss

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The learning-rate multiplier after ``step`` optimiser steps."""
        hp = self.hp
        warm = min(1.0, (step + 1) / hp.warmup_steps) if hp.warmup_steps else 1.0
        if hp.linear_end_factor is not None:
            done = min(1.0, step / hp.linear_steps) if hp.linear_steps else 1.0
            return warm * (1.0 + (hp.linear_end_factor - 1.0) * done)
        position = step if hp.milestone_unit == "step" else step // max(1, steps_per_epoch)
        return warm * hp.gamma ** sum(position >= m for m in hp.milestones)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: the encoder (a distillation task adds its projection)."""
        return list(self.encoder.parameters())

    def configure_optimizers(self) -> Any:
        hp = self.hp
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        trainer = self._trainer
        steps_per_epoch = 1
        if trainer is not None and hp.milestone_unit == "epoch" and hp.milestones:
            total, epochs = trainer.estimated_stepping_batches, trainer.max_epochs
            steps_per_epoch = max(1, math.floor(total / epochs)) if epochs and math.isfinite(total) else 1
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_factor(step, steps_per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class PlaceStudent(PlaceRecipe, StructVPRStudent):
    """The RGB student of :class:`StructVPRStudent`, trained on P x K place batches (:class:`PlaceRecipe`).

    Evaluation, export and ``load_from_checkpoint`` are the student's: an exported model is a
    plain :class:`StructVPRStudent`.

    Args:
        **kwargs: :class:`PlaceRecipe` 's arguments (loss, miner, optimizer, schedule) and
            :class:`StructVPRStudent` 's (trunk, aggregator, lr, weight_decay, ...).

    """

    def __init__(self, **kwargs: Any) -> None:
        # A checkpoint's hyper-parameters hold the base task's in_chans too; the student is RGB (3).
        if kwargs.pop("in_chans", 3) != 3:
            raise ValueError("PlaceStudent reads RGB images: in_chans must be 3")
        super().__init__(**kwargs)


class PlaceTeacher(PlaceRecipe, SegTeacher):
    """The label-map teacher of :class:`~structvpr.tasks.SegTeacher` on P x K place batches (:class:`PlaceRecipe`).

    The same trunk and aggregator as the student it will teach (MixVPR, SALAD or BoQ on ResNet50
    or DINOv2), its input the ``G`` one-hot group channels of ``batch["label"]``: the first
    convolution of a timm CNN, or the patch embedding of a ViT, takes ``G`` channels (adapted from
    RGB weights when ``pretrained_path`` is given, and kept trainable whatever is frozen). Trained
    with the student's loss, miner and schedule; train it with
    ``PlaceDataModule(with_labels=true)``.

    Args:
        **kwargs: :class:`PlaceRecipe` 's arguments and :class:`~structvpr.tasks.SegTeacher` 's
            (num_groups, trunk, aggregator, lr, ...).

    """

    def __init__(self, **kwargs: Any) -> None:
        # A checkpoint's hyper-parameters hold the base task's in_chans (= num_groups) too.
        in_chans = kwargs.pop("in_chans", None)
        if in_chans is not None and in_chans != kwargs.get("num_groups", 5):
            raise ValueError(
                f"a teacher's in_chans is its num_groups, got in_chans={in_chans}, num_groups={kwargs.get('num_groups', 5)}"
            )
        super().__init__(**kwargs)

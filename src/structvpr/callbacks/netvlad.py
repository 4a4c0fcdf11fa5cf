"""NetVLAD centroids from k-means over trunk features of training images, before anything encodes."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from structvpr.models.aggregators import NetVLAD, init_netvlad
from structvpr.protocols import TrainingData, datamodule_of


class InitNetVLAD(pl.Callback):
    """Initialise an uninitialised NetVLAD from k-means over local trunk features (NetVLAD's vladv2 form).

    Every task with a NetVLAD aggregator does the same itself at the start of a fresh fit
    (``VPRTask.setup``, with ``kmeans_images`` images); add this callback for other settings. It runs in
    ``setup``, before any other callback encodes (mining mines the first sub-epoch in
    ``on_fit_start``), and not when a fit resumes from a checkpoint (its centroids come back).
    Rank 0's centroids are broadcast, so every process starts from the same ones.

    Args:
        num_images: Training images whose trunk features are clustered.
        per_image: Local features drawn from each image's feature map.
        seed: Seed of the image and feature draws and of k-means.

    """

    def __init__(self, num_images: int = 200, per_image: int = 50, seed: int = 0) -> None:
        if num_images < 1 or per_image < 1:
            raise ValueError(f"num_images and per_image must be >= 1, got {num_images}, {per_image}")
        self.num_images, self.per_image, self.seed = num_images, per_image, seed

    @torch.no_grad()
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        encoder: Any = getattr(pl_module, "encoder", None)
        agg = getattr(encoder, "aggregator", None)
        if stage != "fit" or not isinstance(agg, NetVLAD) or bool(agg.initialised) or trainer.ckpt_path is not None:
            return
        data = datamodule_of(trainer)
        if not isinstance(data, TrainingData):
            raise TypeError("InitNetVLAD needs a datamodule satisfying structvpr.protocols.TrainingData")
        init_netvlad(trainer, encoder, data, getattr(pl_module, "input_key", "image"), self.num_images, self.per_image, self.seed)

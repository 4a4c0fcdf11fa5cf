"""Fit the encoder's PCA-whitening on training database images before each validation."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl

from structvpr.models.pca import PCAWhitening
from structvpr.protocols import DescriptorTask, TrainingData, datamodule_of


class FitPCAWhitening(pl.Callback):
    """Fit PCA-whitening (``model.init_args.pca_dim``) with the weights about to be validated.

    Training losses use the descriptors before PCA, so the whitening only changes evaluation.
    Refitting it at the start of every validation of a fit, on a fixed random sample of
    training database images (un-augmented), means ``val/R@N`` measures the whitened model
    and every checkpoint carries the whitening that matches its weights: ``structvpr test``
    and an exported student use it as saved. The NetVLAD recipe (32768 -> 4096) needs more
    sampled images than output dimensions. The fit runs on rank 0's result everywhere
    (broadcast), so all processes evaluate the same descriptors.

    Args:
        num_images: Training database images sampled for the fit (all if fewer).
        seed: Seed of the sample.

    """

    def __init__(self, num_images: int = 10000, seed: int = 0) -> None:
        if num_images < 2:
            raise ValueError(f"num_images must be >= 2, got {num_images}")
        self.num_images, self.seed = num_images, seed
        self.fits = 0
        self._pca: PCAWhitening | None = None
        self._task: DescriptorTask | None = None
        self._data: TrainingData | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pca = getattr(getattr(pl_module, "encoder", None), "pca", None)
        if not isinstance(pca, PCAWhitening):
            raise ValueError("FitPCAWhitening needs a model with PCA-whitening: set model.init_args.pca_dim")
        data = datamodule_of(trainer)
        if not isinstance(pl_module, DescriptorTask) or not isinstance(data, TrainingData):
            raise TypeError(
                "FitPCAWhitening needs a task satisfying structvpr.protocols.DescriptorTask and a "
                "datamodule satisfying structvpr.protocols.TrainingData"
            )
        self._pca, self._task, self._data = pca, pl_module, data

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._pca is None or self._task is None or self._data is None:
            raise RuntimeError("FitPCAWhitening.setup has not run")
        pca, n_db = self._pca, self._data.training_tuples.num_database
        count = min(n_db, self.num_images)
        if count <= pca.out_dim:
            raise ValueError(
                f"PCA-whitening to {pca.out_dim} dimensions needs more than {pca.out_dim} training "
                f"database images; {count} are sampled (num_images={self.num_images}, database {n_db})"
            )
        ids = np.sort(np.random.default_rng(self.seed).choice(n_db, count, replace=False))
        pca.fit(self._task.banks["student"].encode(ids).to(pca.mean.device))
        for buffer in (pca.mean, pca.projection, pca.fitted):
            buffer.copy_(trainer.strategy.broadcast(buffer, src=0))
        self.fits += 1

"""The LightningModule shared by every StructVPR task: triplet training and Recall@N evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.data import AttributeDict

from structvpr.bank import DescriptorBank
from structvpr.losses import REFERENCE_MARGIN, triplet_margin_loss
from structvpr.metrics.recall import RecallAtN
from structvpr.models.aggregators import NetVLAD, init_netvlad
from structvpr.models.encoder import ModuleFactory, PlaceEncoder
from structvpr.reports import write_test_report
from structvpr.retrieval.search import BACKENDS
from structvpr.utils.runs import run_folder


class VPRTask(pl.LightningModule):
    """A place encoder trained with the triplet loss and validated by Recall@N.

    Subclasses choose the input (``input_key``: ``image`` or ``label``) and the channels.

    Args:
        in_chans: Input channels of the encoder.
        trunk: ``simple``, a timm name (``vgg16`` is the paper's trunk), or a callable building a trunk
            from the input channels (see :class:`~structvpr.models.PlaceEncoder`).
        aggregator: ``gem``, ``netvlad``, or a callable building an aggregator from the trunk's channels
            (a config ``class_path``; see :class:`~structvpr.models.PlaceEncoder`).
        num_clusters: K of NetVLAD.
        pretrained_path: Local weight file for a timm trunk (never downloaded).
        pca_dim: PCA-whitening size, fitted after training (None for none).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        margin: Triplet margin on unsquared L2 distances of normalised descriptors; the default,
            sqrt(0.1), is the NetVLAD / MSLS margin (0.1 on squared distances; the VG benchmark uses 0.1).
        recall_ns: N of the Recall@N logged as ``val/R@N`` and ``test/R@N``.
        eval_radius: Metres within which a retrieved database image is correct.
        kmeans_images: Training images whose trunk features initialise NetVLAD by k-means.
        search_backend: Exact search for evaluation, mining and ranks: ``auto`` (faiss flat on CPU, the
            chunked matrix product on GPU; see :func:`structvpr.retrieval.search.resolve_backend`),
            ``torch`` or ``faiss``.
        trunk_frozen_below: Train only the trunk from this stage on (``conv5`` for VGG16, as the
            NetVLAD and VG-benchmark references; a module name such as ``layer4`` for other timm trunks).

    """

    input_key = "image"

    def __init__(
        self,
        in_chans: int = 3,
        trunk: str | ModuleFactory = "simple",
        aggregator: str | ModuleFactory = "gem",
        num_clusters: int = 16,
        pretrained_path: str | None = None,
        pca_dim: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        margin: float = REFERENCE_MARGIN,
        recall_ns: Sequence[int] = (1, 5, 10, 20),
        eval_radius: float = 25.0,
        kmeans_images: int = 200,
        search_backend: str = "auto",
        trunk_frozen_below: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("lr", lr), ("margin", margin), ("eval_radius", eval_radius)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if search_backend not in BACKENDS:
            raise ValueError(f"search_backend must be one of {BACKENDS}, got {search_backend!r}")
        self.save_hyperparameters()
        self.encoder = PlaceEncoder(
            in_chans=in_chans,
            trunk=trunk,
            aggregator=aggregator,
            num_clusters=num_clusters,
            pretrained_path=pretrained_path,
            pca_dim=pca_dim,
        )
        if trunk_frozen_below is not None:
            freeze = getattr(self.encoder.trunk, "freeze_below", None)
            if freeze is None:
                raise ValueError(f"trunk_frozen_below needs a timm trunk, got {type(self.encoder.trunk).__name__}")
            freeze(trunk_frozen_below)
        self.val_recall = RecallAtN(recall_ns, eval_radius, backend=search_backend)  # type: ignore[arg-type]
        self.test_recall = RecallAtN(recall_ns, eval_radius, backend=search_backend)  # type: ignore[arg-type]
        #: The descriptors of training images under the current weights, one bank per encoder
        #: (``student``; a distillation task adds ``teacher``): mining, weighting and teacher
        #: targets read them (see :class:`~structvpr.bank.DescriptorBank`).
        self.banks: dict[str, DescriptorBank] = {"student": DescriptorBank(self.encoder, self.input_key, "student")}
        self.test_results: dict[str, float] = {}

    @property
    def hp(self) -> AttributeDict:
        """The init arguments (``hparams``), typed for attribute access."""
        return cast(AttributeDict, self.hparams)

    @property
    def datamodule(self) -> Any:
        """The trainer's datamodule (None when fitting with bare dataloaders)."""
        return getattr(self.trainer, "datamodule", None)

    # -- encoding -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, D)`` L2-normalised descriptors."""
        return self.encoder(x)

    def encode_tuples(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n, C, H, W) -> (B, n, D)`` descriptors (before PCA) of training tuples."""
        b, n = x.shape[:2]
        return self.encoder.pooled(x.flatten(0, 1)).view(b, n, -1)

    def on_train_epoch_start(self) -> None:
        # Without HardNegativeMining, each sub-epoch trains on random tuples of its queries.
        dataset = getattr(self.datamodule, "train_dataset", None)
        if dataset is not None and self.current_epoch > 0 and dataset.subepoch != self.current_epoch:
            dataset.random_subepoch(self.current_epoch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.banks["student"].invalidate()  # the weights moved: descriptors of the previous weights are stale

    # -- training -----------------------------------------------------------------------
    def triplet_loss(self, desc: torch.Tensor) -> torch.Tensor:
        """``(B, 2 + M, D)`` tuple descriptors to ``(B,)`` triplet losses."""
        return triplet_margin_loss(desc[:, 0], desc[:, 1], desc[:, 2:], self.hp.margin)

    def check_finite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """Stop with the epoch and the training-query indices when the loss is NaN or infinite."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}, "
                f"training queries {batch['index'].tolist()}: lower the learning rate or check the inputs"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.triplet_loss(self.encode_tuples(batch[self.input_key])).mean()
        self.check_finite(loss, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hp.lr, weight_decay=self.hp.weight_decay)

    # -- evaluation ---------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        desc = self(batch[self.input_key])
        self.val_recall.update(desc, batch["index"], batch["is_query"], batch["utm"])
        return {"descriptor": desc}

    def on_validation_epoch_end(self) -> None:
        self._log_recall(self.val_recall, "val")

    def _apply_protocol(self, metric: RecallAtN, stage: str) -> None:
        # A named split brings its own threshold (frames for Nordland), ground truth or
        # one-hit-per-panorama rule; VG folders keep the task's eval_radius.
        protocol = getattr(self.datamodule, "protocols", {}).get(stage)
        if protocol is not None:
            metric.radius, metric.positives = protocol.radius, protocol.positives
            metric.database_groups = protocol.database_groups

    def on_validation_start(self) -> None:
        self._apply_protocol(self.val_recall, "val")

    def on_test_start(self) -> None:
        self._apply_protocol(self.test_recall, "test")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        desc = self(batch[self.input_key])
        self.test_recall.update(desc, batch["index"], batch["is_query"], batch["utm"])
        return {"descriptor": desc}

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_recall(self.test_recall, "test")
        if self.trainer.is_global_zero:
            self.write_report(self.test_results)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        if self.input_key not in batch:
            raise KeyError(f"{type(self).__name__} reads batch[{self.input_key!r}], which this dataset does not give")
        return {"descriptor": self(batch[self.input_key]).cpu(), "index": batch["index"].cpu()}

    def _log_recall(self, metric: RecallAtN, prefix: str) -> dict[str, float]:
        result = {k: float(v) for k, v in metric.compute().items()}
        metric.reset()
        for key, value in result.items():
            name = f"{prefix}/{key}"
            self.log(name, value * 100 if key.startswith("R@") else value, prog_bar=key == "R@1")
        return result

    def setup(self, stage: str) -> None:
        run_folder(self.trainer)  # every process: rank 0 picks this run's folder
        loader = getattr(self.datamodule, "train_images_dataloader", None)
        if stage != "fit" or loader is None:
            return
        for bank in self.banks.values():
            bank.bind(loader, self.trainer)
        agg = self.encoder.aggregator
        # A fresh fit starts NetVLAD from k-means centroids, before anything encodes (mining starts
        # in on_fit_start); a resumed one gets its centroids back from the checkpoint.
        if isinstance(agg, NetVLAD) and not bool(agg.initialised) and self.trainer.ckpt_path is None:
            init_netvlad(self.trainer, self.encoder, self.datamodule, self.input_key, self.hp.kmeans_images)

    def report_dir(self) -> Path:
        """The run's own folder for reports, ``<log dir>/version_N`` (see :func:`~structvpr.utils.runs.run_folder`)."""
        return run_folder(self.trainer)

    def write_report(self, result: dict[str, float]) -> None:
        """Write ``test_results.{json,md}`` into the run's folder (:mod:`structvpr.reports`) and print the table."""
        out = self.report_dir()
        name = type(self).__name__  # the class that actually ran
        protocol = getattr(self.datamodule, "protocols", {}).get("test")
        if protocol is not None:
            name = f"{name} on {protocol.name}"
        text = write_test_report(out, name, result, list(protocol.notes) if protocol is not None else [])
        print(f"\n{text}\n(written to {out}/test_results.{{json,md}})")

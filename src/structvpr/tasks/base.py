"""The LightningModule shared by every StructVPR task: triplet training and Recall@N evaluation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.data import AttributeDict

from structvpr.losses import REFERENCE_MARGIN, triplet_margin_loss
from structvpr.metrics.recall import RecallAtN
from structvpr.models.aggregators import NetVLAD
from structvpr.models.encoder import ModuleFactory, PlaceEncoder
from structvpr.reports import write_test_report
from structvpr.retrieval.search import BACKENDS
from structvpr.utils.memory import check_memory
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

    """

    input_key = "image"

    def __init__(self, in_chans: int = 3, trunk: str | ModuleFactory = "simple", aggregator: str | ModuleFactory = "gem",
                 num_clusters: int = 16, pretrained_path: str | None = None, pca_dim: int | None = None,
                 lr: float = 1e-3, weight_decay: float = 1e-4, margin: float = REFERENCE_MARGIN,
                 recall_ns: Sequence[int] = (1, 5, 10, 20), eval_radius: float = 25.0,
                 kmeans_images: int = 200, search_backend: str = "auto") -> None:  # fmt: skip
        super().__init__()
        for name, value in (("lr", lr), ("margin", margin), ("eval_radius", eval_radius)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if search_backend not in BACKENDS:
            raise ValueError(f"search_backend must be one of {BACKENDS}, got {search_backend!r}")
        self.save_hyperparameters()
        self.encoder = PlaceEncoder(in_chans=in_chans, trunk=trunk, aggregator=aggregator, num_clusters=num_clusters,
                                    pretrained_path=pretrained_path, pca_dim=pca_dim)
        self.val_recall = RecallAtN(recall_ns, eval_radius, backend=search_backend)  # type: ignore[arg-type]
        self.test_recall = RecallAtN(recall_ns, eval_radius, backend=search_backend)  # type: ignore[arg-type]
        #: Per encoder: (weights version, sorted bank ids encoded, their descriptors).
        self._descriptors: dict[str, tuple[int, np.ndarray, torch.Tensor]] = {}
        self._updates = 0
        #: Images this process has encoded in encoding passes (training-bank and loader passes).
        self.images_encoded = 0
        #: Storage type of the per-sub-epoch training descriptors (set by ``HardNegativeMining``;
        #: float16 halves them, search and losses still compute in float32).
        self.encode_dtype = torch.float32
        #: A folder for the per-sub-epoch descriptors as memory-mapped files on the host instead of
        #: arrays in memory (set by ``HardNegativeMining(descriptor_memmap_dir=...)``).
        self.encode_memmap_dir: Path | None = None
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

    @torch.no_grad()
    def encode_loader(self, loader: Any, encoder: PlaceEncoder | None = None, key: str | None = None,
                      dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Pre-PCA descriptors ``(N, D)`` of every item of a loader, in eval mode, on the model's device.

        Batches stream into one preallocated array (``dtype``: float16 halves it; ``out`` gives
        one, e.g. memory-mapped), so the peak is the output plus one batch.
        """
        encoder = encoder if encoder is not None else self.encoder
        key = key or self.input_key
        was_training = encoder.training
        encoder.eval()
        if out is None:
            out = torch.empty(len(loader.dataset), encoder.pooled_dim, dtype=dtype, device=self.device)
        row = 0
        for batch in loader:
            desc = encoder.pooled(batch[key].to(self.device))
            out[row : row + len(desc)] = desc.to(out)
            row += len(desc)
        encoder.train(was_training)
        self.images_encoded += row
        return out

    def encode_images(self, ids: np.ndarray | Sequence[int], encoder: PlaceEncoder | None = None,
                      key: str | None = None, dtype: torch.dtype = torch.float32,
                      memmap: bool = False) -> torch.Tensor:  # fmt: skip
        """Pre-PCA descriptors ``(len(ids), D)`` of training-bank images, on the model's device.

        Each process encodes its share (``1 / world_size``) of ``ids`` with the datamodule's
        workers, reading only ``key`` (``image`` or ``label``); the shares are all-gathered, so
        every process returns the same full array. With ``memmap`` (and ``encode_memmap_dir``
        set) a single process streams straight into a memory-mapped file.
        """
        ids = np.asarray(ids, dtype=np.int64)
        key = key or self.input_key
        world, rank = self.trainer.world_size, self.trainer.global_rank
        shards = np.array_split(ids, world)
        encoder = encoder if encoder is not None else self.encoder
        out = None
        if memmap and world == 1 and self.encode_memmap_dir is not None:
            out = self._memmap_array("encoded", len(ids), encoder.pooled_dim, dtype)
        local = self.encode_loader(self.datamodule.train_images_dataloader(shards[rank], key), encoder, key, dtype, out)
        if world == 1:
            return local
        size = max(len(s) for s in shards)
        padded = torch.zeros(size, local.shape[1], dtype=local.dtype, device=self.device)
        padded[: len(local)] = local
        gathered = cast(torch.Tensor, self.all_gather(padded))  # (world, size, D)
        return torch.cat([gathered[r, : len(shard)] for r, shard in enumerate(shards)])

    def training_descriptors(self, ids: np.ndarray | Sequence[int]) -> torch.Tensor:
        """Pre-PCA descriptors ``(len(ids), D)`` of training-bank images with the current weights.

        ``ids`` index the training bank (database, then queries). Images are encoded once
        per weight update and shared, so hard-negative mining and sample weighting of the
        same sub-epoch pay for one encoding pass of the images they both need.
        """
        return self._descriptor_cache("student", self._updates, ids, self.encoder, self.input_key)

    def _descriptor_cache(self, name: str, version: int, ids: np.ndarray | Sequence[int], encoder: PlaceEncoder,
                          key: str) -> torch.Tensor:  # fmt: skip
        wanted = np.asarray(ids, dtype=np.int64).ravel()
        cached = self._descriptors.get(name)
        if cached is None or cached[0] != version:
            cached = (version, np.zeros(0, dtype=np.int64), torch.zeros(0, device=self.device))
        _, known, desc = cached
        missing = np.setdiff1d(wanted, known)
        if len(missing):
            dim = encoder.pooled_dim
            if self.encode_memmap_dir is None:
                check_memory((len(known) + len(missing)) * dim * self.encode_dtype.itemsize, self.device, self.trainer,
                             f"{name} descriptors of {len(known) + len(missing):,} training images x {dim} dimensions",
                             "lower data.init_args.cache_queries (queries per sub-epoch) or "
                             "HardNegativeMining(cache_negatives), or set HardNegativeMining(descriptor_memmap_dir)")  # fmt: skip
            fresh = self.encode_images(missing, encoder, key, self.encode_dtype,
                                       memmap=self.encode_memmap_dir is not None)  # fmt: skip
            ids_all = np.concatenate([known, missing])
            order = np.argsort(ids_all, kind="stable")
            if self.encode_memmap_dir is not None and len(known):  # merge on disk: the host holds what it touches
                merged = self._memmap_array(name, len(ids_all), fresh.shape[1], fresh.dtype)
                position = np.empty_like(order)
                position[order] = np.arange(len(order))  # where each of known + missing lands
                merged[torch.from_numpy(position[: len(known)])] = desc.to(merged)
                merged[torch.from_numpy(position[len(known) :])] = fresh.to(merged)
                desc = merged
            else:
                desc = fresh if len(known) == 0 else torch.cat([desc, fresh])[torch.from_numpy(order).to(fresh.device)]
            known = ids_all[order]
        self._descriptors[name] = (version, known, desc)
        if np.array_equal(wanted, known):  # the whole cached set, in order (mining's request): no copy
            return desc
        return desc[torch.from_numpy(np.searchsorted(known, wanted)).to(desc.device)]

    def _memmap_array(self, name: str, rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
        """A ``(rows, dim)`` tensor backed by a new file in ``encode_memmap_dir`` (unlinked at once:
        the mapping keeps it until the tensor is dropped)."""  # noqa: D205
        assert self.encode_memmap_dir is not None
        folder = Path(self.encode_memmap_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{os.getpid()}-{self._updates}-{rows}.bin"
        np_dtype = np.float16 if dtype == torch.float16 else np.float32
        array = np.memmap(path, dtype=np_dtype, mode="w+", shape=(max(rows, 1), dim))[:rows]
        path.unlink()
        return torch.from_numpy(array)

    def on_train_epoch_start(self) -> None:
        # Without HardNegativeMining, each sub-epoch trains on random tuples of its queries.
        dataset = getattr(self.datamodule, "train_dataset", None)
        if dataset is not None and self.current_epoch > 0 and dataset.subepoch != self.current_epoch:
            dataset.random_subepoch(self.current_epoch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._updates += 1  # the weights moved: descriptors of the previous weights are stale

    # -- training -----------------------------------------------------------------------
    def configure_callbacks(self) -> list[pl.Callback]:
        """A NetVLAD aggregator brings :class:`~structvpr.callbacks.netvlad.InitNetVLAD` (k-means centroids)."""
        from structvpr.callbacks.netvlad import InitNetVLAD

        if isinstance(self.encoder.aggregator, NetVLAD):
            return [InitNetVLAD(num_images=self.hp.kmeans_images)]
        return []

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

